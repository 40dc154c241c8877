"""Reading the files imagesmith takes as input (specs, locks, requirements files, batch
scripts): refused past a size no such file reaches, read as UTF-8 text with universal
newlines, and parsed as TOML no deeper than any spec or lock goes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from imagesmith.errors import SpecError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: The most imagesmith reads of a spec, lock, requirements file or batch script: far more
#: than any needs (Slurm's own default limit on a batch script is 4 MB), and little enough
#: that a file that is not one is refused at once instead of parsed for a minute.
MAX_INPUT_BYTES = 4 * 1024 * 1024


class InputTooLargeError(OSError):
    """A file larger than MAX_INPUT_BYTES (read as an OSError: it cannot be read as input)."""

    def __str__(self) -> str:
        return (
            f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB, which no spec, lock or script is"
        )


def read_input_text(path: Path) -> str:
    """The UTF-8 text of an input file, as `Path.read_text` gives it; InputTooLargeError
    past MAX_INPUT_BYTES."""
    with path.open("rb") as f:
        data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise InputTooLargeError()
    # Universal newlines, as Path.read_text reads: the same text, so the same spec_hash.
    return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")


#: Deeper than any spec or lock goes (4 levels); far below what would exhaust the stack
#: of the parser, the schema check or the hash (each of them recursive).
MAX_NESTING = 32


def parse_toml(text: str, label: str) -> dict[str, Any]:
    if text.startswith("\ufeff"):  # Windows editors write one; TOML has no place for it
        raise SpecError(
            [
                f"{label}: starts with a byte order mark (BOM), which TOML does not allow: "
                "save it as UTF-8 without BOM"
            ]
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"{label}: not valid TOML: {exc}"]) from None
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise SpecError(
            [
                f"{label}: values nested more than {MAX_NESTING} levels deep "
                "(a spec or lock needs 5 at most)"
            ]
        )
    return data


def nesting_depth(value: Any) -> int:
    """How many lists and tables deep `value` goes (without recursion: any depth is safe)."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_NESTING:
            break
        todo.extend((child, depth) for child in children)
    return deepest
