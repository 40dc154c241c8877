"""Names and references the outputs write: Kubernetes names, label values and label keys
made from a spec's words, and the image named by its digest (never by a tag, which can
move). Pure functions, shared by the Kubernetes manifest and the Slurm batch script."""

from __future__ import annotations

import re

from imagesmith.errors import InputError
from imagesmith.model.reference import parse_reference

#: The longest label value (and a Kubernetes annotation value podman 4 takes).
LABEL_VALUE_MAX = 63
_DNS_LABEL_MAX = 63


def dns_label(text: str, *, fallback: str = "job") -> str:
    """`text` as a DNS-1123 label (lowercase alphanumerics and '-', at most 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")[:_DNS_LABEL_MAX].strip("-")
    return name or fallback


def label_value(text: str) -> str:
    """`text` as a label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:LABEL_VALUE_MAX]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes label key ([prefix/]name), or None when it is one."""
    prefix, slash, name = key.rpartition("/")
    if slash and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", prefix):
        return "the prefix is not a DNS subdomain (e.g. nvidia.com)"
    if not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", name):
        return "not a label key ([prefix/]name; name: letters, digits, '-', '_', '.', at most 63)"
    return None


def digest_reference(image: str) -> str:
    """`image` when it is `repository@sha256:<64 hex>`; InputError otherwise."""
    hint = (
        "pass the image by digest, repository@sha256:<64 hex digits> "
        "(imagesmith build/push record it in env.build.json / env.pushed.json)"
    )
    try:
        ref = parse_reference(image)
    except ValueError:
        raise InputError(f"{image!r} is not an image reference; {hint}") from None
    if ref.digest is None:
        raise InputError(f"{image!r} names a tag, which can move; {hint}")
    if ref.tag is not None:
        raise InputError(f"{image!r} carries a tag beside its digest; {hint}")
    return image
