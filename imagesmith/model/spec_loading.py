"""Loading env.toml: read it, check it (every problem, one line each, and nothing returned
until there are none) and model it as a `Spec`.

The checks run in two passes, the JSON Schema (`spec_schema`) and what a schema cannot
express (`spec_checks`). A spec that an intact env.lock written by this imagesmith was
made from passed them then: only the checks that read files run again, and the schema
checks its run-time tables once (a note in the cache says so).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imagesmith import __version__
from imagesmith.errors import SpecError
from imagesmith.model.input_files import parse_toml, read_input_text
from imagesmith.model.memo import note, noted
from imagesmith.model.spec import (
    RUNTIME_TABLES,
    Spec,
    canonical_hash,
    spec_from_valid_data,
    spec_hash,
)
from imagesmith.model.spec_checks import requirements_file_lines, semantic_problems
from imagesmith.model.spec_schema import schema_problems

_RUNTIME_CHECKED = "checked-runtime"

#: What the last reader of a lock parsed, left for the next reader of the same text, who
#: takes it. A command reads env.lock twice (load_spec, to see whether the lock vouches
#: for the spec; then the command, for its pins), and parsing and hashing a 50 kB lock
#: takes 5 ms of `render`'s 0.1 s. Taken, never shared: the taker may change what it gets.
_parsed_lock: dict[str, tuple[dict[str, Any], bool]] = {}


def parse_lock_text(text: str, label: str) -> tuple[dict[str, Any], bool]:
    """A lock's `text` parsed (SpecError if it is not TOML), and whether its lock_hash is
    the hash of the rest (an intact lock, not a hand-edited or damaged one)."""
    left = _parsed_lock.pop(text, None)
    if left is not None:
        return left
    data = parse_toml(text, label)
    body = {key: value for key, value in data.items() if key != "lock_hash"}
    return data, data.get("lock_hash") == canonical_hash(body)


def _locked_spec_hash(spec_path: Path) -> str | None:
    """The spec_hash recorded by the intact env.lock beside `spec_path`, if there is one."""
    try:
        text = read_input_text(spec_path.with_suffix(".lock"))
        data, intact = parse_lock_text(text, "")
    except (OSError, UnicodeDecodeError, SpecError):
        return None
    recorded, version = data.get("spec_hash"), data.get("imagesmith_version")
    _parsed_lock.clear()
    _parsed_lock[text] = (data, intact)  # for the command, which reads this lock next
    if not isinstance(recorded, str) or not intact:
        return None
    if version != __version__:
        return None  # another version may have checked against another schema
    return recorded


def _validated_when_locked(data: dict[str, Any], path: Path) -> bool:
    """Whether `data` is exactly the spec that an intact lock beside it, written by this
    version of imagesmith, was made from, and so passed this schema then. The lock's own
    hash rules out a hand-edited or damaged spec_hash (not a forged one)."""
    recorded = _locked_spec_hash(path)
    if recorded is None:
        return False
    try:
        return spec_hash(data, requirements_file_lines(data, path.parent)) == recorded
    except Exception:  # unvalidated data: any failure here means "check it"
        return False


def _runtime_memo(data: Mapping[str, Any]) -> str | None:
    """The key of the note saying that `data`'s run-time tables passed this version's
    schema.

    The lock vouches for the image part of a spec only, so a spec whose lock matches
    would otherwise import and run the schema (0.2-0.5 s) on every command just for its
    [resources], [job] and [registry] tables. None when the spec has none of them."""
    runtime = {key: data[key] for key in RUNTIME_TABLES if key in data}
    if not runtime:
        return None
    return canonical_hash({"imagesmith": __version__, "runtime": runtime}).removeprefix("sha256:")


def _runtime_checked(data: Mapping[str, Any]) -> bool:
    key = _runtime_memo(data)
    return key is None or noted(_RUNTIME_CHECKED, key)


def _remember_runtime_checked(data: Mapping[str, Any]) -> None:
    key = _runtime_memo(data)
    if key is not None:
        note(_RUNTIME_CHECKED, key)  # only a shortcut: without it, the tables are checked


#: Problems listed at most; the rest are found once these are fixed.
MAX_PROBLEMS = 50


def load_spec(path: Path | str) -> Spec:
    """Read and validate env.toml; raise SpecError listing every problem."""
    path = Path(path)
    label = path.name
    try:
        text = read_input_text(path)
    except FileNotFoundError:
        raise SpecError([f"{path}: no such file; `imagesmith init` writes one"]) from None
    except IsADirectoryError:
        inside = path / "env.toml"
        problem = (
            f"{path}: a folder; its spec is {inside}: name that file"
            if inside.is_file()
            else f"{path}: a folder, with no env.toml in it: name the spec file"
        )
        raise SpecError([problem]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read it: {exc}"]) from None
    data = parse_toml(text, label)
    return spec_from_data(data, path=path.resolve(), label=label)


def spec_from_data(data: dict[str, Any], *, path: Path, label: str) -> Spec:
    if (
        _validated_when_locked(data, path)
        and _runtime_checked(data)
        and not any(
            semantic_problems(data, path.parent, data_checked=True)  # files may have changed
        )
    ):
        try:
            lines = requirements_file_lines(data, path.parent)
            return spec_from_valid_data(data, path=path, file_requirements=lines)
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # not the valid spec the lock claims: check it properly
    # The first MAX_PROBLEMS only: a list of 100,000 bad names is one mistake, not a report.
    every = itertools.chain(semantic_problems(data, path.parent), schema_problems(data))
    found = set(itertools.islice(every, MAX_PROBLEMS + 1))
    if found:
        problems = sorted(found, key=_problem_order)
        lines = [f"{label}: {where}: {message}" for where, message in problems[:MAX_PROBLEMS]]
        if len(problems) > MAX_PROBLEMS:
            lines.append(f"{label}: more problems not listed; fix these and validate again")
        raise SpecError(lines)
    requirements_file = requirements_file_lines(data, path.parent)
    spec = spec_from_valid_data(data, path=path, file_requirements=requirements_file)
    _remember_runtime_checked(data)
    return spec


def _problem_order(problem: tuple[str, str]) -> tuple[str, str]:
    """Document order, with list indexes compared as numbers ([10] after [9])."""
    return re.sub(r"\d+", lambda m: m.group(0).zfill(8), problem[0]), problem[1]
