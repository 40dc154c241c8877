#!/usr/bin/env python3
"""Write docs/spec.md, the env.toml reference, from schemas/env.schema.json.

Every key, its type, what is accepted and what it means come from the schema (its
`description`, `x-error`, `enum`, bounds); each default comes from imagesmith itself, by
loading a spec that leaves the key out. A key the schema has but the code does not model
stops the script with an error, so the reference cannot drift from either.

    .venv/bin/python docs/gen_spec_reference.py           # rewrite docs/spec.md
    .venv/bin/python docs/gen_spec_reference.py --check   # exit 1 if docs/spec.md is stale

tests/unit/test_docs.py runs the check.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schemas" / "env.schema.json"
OUTPUT = ROOT / "docs" / "spec.md"

#: Where the code keeps a key whose name differs from its table's attribute.
_ATTRIBUTES = {
    ("apt", "packages"): "apt_packages",
    ("apt", "snapshot"): "apt_snapshot",
    ("apt", "mirror"): "apt_mirror",
    ("apt", "sources"): "apt_sources",
    ("registry", "repository"): "registry_repository",
    ("base", "image"): "base_image",
}


def _code_defaults() -> Any:
    """The Spec imagesmith makes from the smallest spec that has every table (empty)."""
    sys.path.insert(0, str(ROOT))
    from imagesmith.model.spec import spec_from_valid_data

    data = {"name": "x", "base": {"image": "x"}, "python": {}}
    return spec_from_valid_data(data, path=ROOT / "env.toml")


def _default(spec: Any, path: tuple[str, ...], required: bool) -> str:
    if required:
        return "required"
    if path in _ATTRIBUTES:
        value = getattr(spec, _ATTRIBUTES[path])
    elif len(path) == 1:
        value = getattr(spec, path[0])
    else:
        value = getattr(getattr(spec, path[0]), path[1])
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int):
        return f"`{value}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, tuple | list):
        return "`[]`" if not value else f"`{json.dumps(list(value))}`"
    if isinstance(value, Mapping):
        return "`{}`" if not value else f"`{json.dumps(dict(value))}`"
    raise TypeError(f"{'.'.join(path)}: cannot show default {value!r}")


def _hint(node: Mapping[str, Any]) -> str | None:
    """What the x-error message says is accepted: `is not X (Y)` gives `X (Y)`."""
    text = node.get("x-error")
    if not isinstance(text, str) or not text.startswith("is not "):
        return None
    return text.removeprefix("is not ")


def _type(node: Mapping[str, Any]) -> str:
    if "enum" in node:
        return " or ".join(f'`"{v}"`' if isinstance(v, str) else f"`{v}`" for v in node["enum"])
    if "oneOf" in node:
        kinds = [_type(choice) for choice in node["oneOf"]]
        return " or ".join(dict.fromkeys(kinds))
    kind = node.get("type")
    if kind == "array":
        items = node.get("items", {})
        inner = items.get("type")
        return {"string": "list of strings", "integer": "list of integers"}.get(
            inner, "list of tables"
        )
    if kind == "object":
        values = node.get("additionalProperties")
        if isinstance(values, dict) and values.get("type") == "string":
            return "table of strings"
        return "table"
    return {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}.get(
        str(kind), str(kind)
    )


def _accepted(node: Mapping[str, Any]) -> list[str]:
    """Short phrases for what the schema accepts beyond the type."""
    notes: list[str] = []
    hint = _hint(node)
    if hint:
        notes.append(hint)
    if ("minimum" in node or "maximum" in node) and not hint:
        low, high = node.get("minimum"), node.get("maximum")
        if low is not None and high is not None:
            notes.append(f"{low} to {high}")
        elif low is not None:
            notes.append(f"at least {low}")
        else:
            notes.append(f"at most {high}")
    if node.get("minLength") == 1:
        notes.append("not empty")
    if "maxLength" in node and not hint:
        notes.append(f"at most {node['maxLength']} characters")
    items = node.get("items")
    if isinstance(items, dict):
        item_notes = _accepted(items)
        if items.get("type") == "integer" and "minimum" in items:
            item_notes = [f"each {items['minimum']} to {items.get('maximum', '...')}"]
        notes += [f"each: {n}" if not n.startswith("each") else n for n in item_notes]
    names = node.get("propertyNames")
    if isinstance(names, dict) and _hint(names):
        notes.append(f"keys: {_hint(names)}")
    values = node.get("additionalProperties")
    if isinstance(values, dict) and values.get("type") == "string":
        refused = re.match(r"contains (.*?)(?:,|$)", str(values.get("x-error", "")))
        notes.append(f"values: any string without {refused.group(1)}" if refused else "strings")
    return notes


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "...")) else text + "."


def _row(key: str, node: Mapping[str, Any], default: str, note: str = "") -> str:
    meaning = _sentence(node.get("description", ""))
    if note:
        meaning += " " + _sentence(note)
    accepted = _accepted(node)
    if accepted:
        meaning += " Accepted: " + _sentence("; ".join(accepted))
    return f"| `{key}` | {_cell(_type(node))} | {default} | {_cell(meaning)} |"


def _manifest_declares_ports() -> bool:
    """Whether `imagesmith manifest` turns [image] ports into containerPort today."""
    from imagesmith.model.spec import spec_from_valid_data
    from imagesmith.outputs.kubernetes import render_manifest

    data = {"name": "x", "base": {"image": "x"}, "image": {"ports": [8888]}}
    spec = spec_from_valid_data(data, path=ROOT / "env.toml")
    text = render_manifest(spec, image="x@sha256:" + "0" * 64, uid=1000, gid=1000)
    return "containerPort" in text


def _notes() -> dict[tuple[str, ...], str]:
    """What a key does beyond its schema description, and what leaving it out means."""
    from imagesmith.inputs.context import DEFAULT_INDEX

    ports = (
        "The manifest declares them as containerPort"
        if _manifest_declares_ports()
        else "`imagesmith manifest` does not declare a containerPort for them today (the image "
        "EXPOSEs them; `kubectl port-forward` needs no declaration)"
    )
    return {
        ("version",): "Also the app.kubernetes.io/version label of the manifest",
        ("apt", "packages"): "The whole install closure is pinned at exact versions in env.lock",
        ("apt", "snapshot"): "Unset: the base image's own apt sources (Debian's archive)",
        ("python", "index_url"): f"Unset: {DEFAULT_INDEX}",
        ("image", "workdir"): "Unset: the base image's. In the manifest it is a writable "
        "emptyDir unless [image] copy puts files there",
        ("image", "cmd"): "Unset: the base image's",
        ("image", "entrypoint"): "Unset: the base image's. With an entrypoint, [job] command "
        "becomes the container's args",
        ("image", "ports"): ports,
        ("registry", "repository"): "Unset: `imagesmith push` needs --to",
        ("resources", "cpu"): "Unset: no cpu request or limit (and no --cpus-per-task)",
        ("resources", "memory"): "Unset: no memory request or limit (and no --mem)",
        ("resources", "shm"): "It counts against the memory limit",
        ("job", "command"): "Unset: the image's entrypoint and cmd",
        ("job", "namespace"): "Unset: the manifest names none, so kubectl's context (or -n) "
        "decides",
        ("job", "time"): "The Job's activeDeadlineSeconds (the Pod's for kind pod) and "
        "sbatch's --time. Unset: no limit",
    }


HEADER = "| key | type | default | meaning |\n| --- | --- | --- | --- |"


def _in_schema(schema: Mapping[str, Any], path: tuple[str, ...]) -> bool:
    node: Any = schema
    for part in path:
        node = node.get("properties", {}).get(part) if isinstance(node, dict) else None
        if node is None:
            return False
    return True


def _tables(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key, node in schema["properties"].items():
        if node.get("type") == "object" and "properties" in node:
            yield key, node


def render() -> str:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    spec = _code_defaults()
    notes = _notes()
    unknown = [".".join(path) for path in notes if not _in_schema(schema, path)]
    if unknown:
        raise SystemExit(f"gen_spec_reference.py has notes for keys the schema lacks: {unknown}")
    required = set(schema.get("required", []))
    out = [
        "<!-- Generated by docs/gen_spec_reference.py from schemas/env.schema.json: "
        "do not edit by hand. -->",
        "",
        "# env.toml reference",
        "",
        f"{schema['description']} This page lists every key `imagesmith validate` accepts, "
        "generated from `schemas/env.schema.json` (the JSON Schema the validator uses); "
        "defaults are what imagesmith uses when the key is left out. "
        "`recipes/lab-analysis/env.toml` shows all of them in one file "
        "(the optional ones commented out).",
        "",
        "- Only `name` and `[base] image` are required.",
        "- Unknown keys are errors (with a suggestion when one is close: "
        '`unknown key "mem" (did you mean memory?)`).',
        "- `imagesmith validate env.toml` reports every problem at once, one line each, as "
        "`env.toml: $.path: message`, and exits 2 (the first 50, when there are more). A "
        "file over 4 MiB or nested more than 32 levels deep is refused in one line.",
        "- Besides the schema, validation checks what a schema cannot: Python requirements "
        "must be PEP 508, `requirements_file` and `copy` sources must exist inside the "
        "spec's folder (no absolute paths, `..` or links out), `[image] user` must not be "
        '`"root"`, `[job] time` must not be zero, and the spec holds no credentials: index '
        "URLs with a user name or password, and `[env]` values or labels with a URL that "
        "holds a password, are refused (they would be published in env.lock and the image; "
        "see [troubleshooting.md](troubleshooting.md#private-package-indexes)).",
        "- The smallest spec:",
        "",
        "```toml",
        'name = "analysis"',
        "[base]",
        'image = "debian:bookworm"',
        "```",
        "",
        "## Top-level keys",
        "",
        HEADER,
    ]
    for key, node in schema["properties"].items():
        if node.get("type") == "object" and "properties" in node:
            out.append(f"| `[{key}]` | table | | {_cell(node.get('description', ''))} |")
        else:
            default = _default(spec, (key,), key in required)
            out.append(_row(key, node, default, notes.get((key,), "")))
    for table, node in _tables(schema):
        out += ["", f"## [{table}]", "", node.get("description", ""), ""]
        if table == "python":
            out += [
                "Without a `[python]` table the image has no virtual environment; with one "
                "(even empty) it has `/opt/venv` on `PATH`, and Debian's `python3` and "
                "`python3-venv` are added to the apt packages when the base has no Python. "
                "The environment holds the locked distributions and nothing else: no pip or "
                "setuptools unless the requirements name them (`pip` in `requirements` "
                "installs a pinned pip).",
                "",
            ]
        out.append(HEADER)
        table_required = set(node.get("required", []))
        nested: list[tuple[str, Mapping[str, Any]]] = []
        for key, child in node["properties"].items():
            default = _default(spec, (table, key), key in table_required)
            out.append(_row(key, child, default, notes.get((table, key), "")))
            items = child.get("items")
            if isinstance(items, dict) and "properties" in items:
                nested.append((key, items))
        for key, items in nested:
            out += [
                "",
                f"### [{table}] {key} entries",
                "",
                f"Each entry of `{key}` is a table with these keys:",
                "",
                HEADER,
            ]
            item_required = set(items.get("required", []))
            for name, child in items["properties"].items():
                out.append(_row(name, child, "required" if name in item_required else "unset"))
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUTPUT.exists() or OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} is out of date: run python {Path(__file__).relative_to(ROOT)}")
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
