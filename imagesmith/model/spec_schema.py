"""The first pass over env.toml: its JSON Schema (structure, types, names), and every
violation worded for a user as (json path, message). Also the helpers every problem line
uses: `json_path` and `show_value`."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from imagesmith.package_data import data_path

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@lru_cache(maxsize=1)
def env_schema() -> dict[str, Any]:
    with data_path("schemas", "env.schema.json").open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def json_path(parts: Sequence[str | int]) -> str:
    text = "$"
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _IDENTIFIER.match(part):
            text += f".{part}"
        else:
            text += f"[{json.dumps(part, ensure_ascii=False)}]"
    return text


def show_value(value: Any, limit: int = 200) -> str:
    """`value` as JSON, cut short when long: a problem stays one readable line."""
    text = json.dumps(value, ensure_ascii=False, default=str)  # str: TOML's dates and times
    return text if len(text) <= limit else f"{text[: limit - 5]} ...{text[-1]}"


_TYPE_NAMES = {
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "array": "a list",
    "object": "a table",
    "boolean": "true or false",
}


def _type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def draft_validator(schema: Mapping[str, Any]) -> Any:
    """A Draft 2020-12 validator for `schema`, importing jsonschema only when one is needed.

    jsonschema imports rfc3987_syntax when it is installed (for a `format` none of our
    schemas uses), and that builds a grammar for seconds at import: it is kept out."""
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import jsonschema

    return jsonschema.Draft202012Validator(schema)


def schema_problems(data: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(json path, message) for every schema violation, worded for a user."""
    validator = draft_validator(env_schema())
    for error in validator.iter_errors(data):
        yield from _explain(error)


def _explain(error: ValidationError) -> Iterator[tuple[str, str]]:
    path = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    hint = schema.get("x-error")
    kind = error.validator
    expected: Any = error.validator_value
    if kind == "additionalProperties":
        known = sorted(schema.get("properties", {}))
        allowed = set(known)
        instance: Any = error.instance
        import difflib  # here: only a spec with a problem needs it

        for key in sorted(k for k in instance if k not in allowed):
            close = difflib.get_close_matches(key, known, n=1)
            suggestion = f" (did you mean {close[0]}?)" if close else ""
            where = f"; known keys: {', '.join(known)}" if not close else ""
            yield json_path([*path, key]), f"unknown key {show_value(key)}{suggestion}{where}"
        return
    if kind == "required":
        missing = error.message.split("'")[1] if "'" in error.message else str(error.message)
        yield json_path(path), f"missing required key {show_value(missing)}"
        return
    if kind == "propertyNames":
        sub_hint = schema.get("propertyNames", {}).get("x-error", "is not allowed as a key")
        yield json_path(path), f"key {show_value(error.instance)} {sub_hint}"
        return
    if kind == "enum":
        choices = ", ".join(show_value(c) for c in expected)
        yield json_path(path), f"{show_value(error.instance)} is not one of {choices}"
        return
    numeric_hint = hint and _type_of(error.instance) == "number" and expected == "integer"
    if kind == "type" and not numeric_hint:
        names = [expected] if isinstance(expected, str) else list(expected)
        want = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        yield json_path(path), f"expected {want}, got {show_value(error.instance)}"
        return
    if kind == "oneOf" and hint and _type_of(error.instance) not in {"string", "number", "integer"}:
        yield json_path(path), f"expected a string or a number, got {show_value(error.instance)}"
        return
    if hint:
        yield json_path(path), f"{show_value(error.instance)} {hint}"
        return
    if kind == "minLength":
        yield json_path(path), "must not be empty"
        return
    yield json_path(path), error.message
