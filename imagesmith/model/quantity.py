"""Kubernetes resource quantities ("500m", "2", "32Gi") and their exact values."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # decimal is imported where it is used: validate need not load it
    from decimal import Decimal

# Non-negative quantities only: a negative CPU or memory request is never meant.
QUANTITY_PATTERN = (
    r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
# Each as Decimal(...) takes it: what a value is printed as depends on its exponent.
_DECIMAL: dict[str, str | int] = {"n": "1e-9", "u": "1e-6", "m": "1e-3", "": 1, "k": 10**3}
_DECIMAL |= {"M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}


def is_quantity(text: str) -> bool:
    return _QUANTITY.match(text) is not None


def quantity_value(text: str) -> Decimal:
    """The exact value of a quantity: "1.5Gi" -> 1610612736, "500m" -> 0.5."""
    from decimal import Decimal, InvalidOperation

    if not is_quantity(text):
        raise ValueError(f"{text!r} is not a Kubernetes quantity")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    number = re.match(r"^[0-9.]+(?:[eE][+-]?[0-9.]+)?", text)
    assert number is not None
    head = number.group(0)
    suffix = text[len(head) :]
    try:
        return Decimal(head) * Decimal(_DECIMAL[suffix])
    except (InvalidOperation, KeyError) as exc:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from exc


def normalize_quantity(value: str | int | float) -> str:
    """A spec value (2, 0.5, "500m") as the string a manifest carries."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        from decimal import Decimal

        text = format(Decimal(repr(value)).normalize(), "f")
        return text
    return value
