"""The files beside env.toml that a build reads, put back when a folder has only env.toml
and env.lock (a collaborator's machine, a CI job given the two files): the spec's
`requirements_file` from the lines the lock carries (locks written since 0.7.0), and the
files `[image] copy` takes from the lock's input archive (`imagesmith.inputs.copies`).

Only what is missing is written, never over a file that is there, with a line saying so.
What cannot be put back is left for loading the spec to report (`does not exist`), or,
for a copy the input archive should hold, reported with every place looked in.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imagesmith.errors import ImagesmithError
from imagesmith.inputs.copies import plain_inside, read_spec_leniently, restore_missing_copies
from imagesmith.progress import LineCallback


def restore_beside_spec(spec_path: Path, *, on_line: LineCallback) -> None:
    """Put back the requirements file and the copy sources env.lock pins and the spec's
    folder lacks (see the module doc); OperationError for a copy found nowhere."""
    _restore_requirements_file(spec_path, on_line)
    restore_missing_copies(spec_path, on_line=on_line)


def _restore_requirements_file(spec_path: Path, on_line: LineCallback) -> None:
    python = read_spec_leniently(spec_path).get("python")
    name = python.get("requirements_file") if isinstance(python, dict) else None
    lock_path = spec_path.with_suffix(".lock")
    if not isinstance(name, str) or not plain_inside(name) or not lock_path.is_file():
        return
    target = spec_path.parent / name
    if target.exists() or target.is_symlink():
        return
    from imagesmith.model.lock import read_lock

    try:
        lock = read_lock(lock_path)
    except ImagesmithError:
        return
    text = lock.python.requirements_file_text() if lock.python is not None else ""
    if not text:  # a lock from before locks kept them: loading the spec says it is missing
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError:
        return  # loading the spec reports the file as missing
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.link(tmp, target)  # never over a file that appeared meanwhile
    except OSError:
        return
    finally:
        Path(tmp).unlink(missing_ok=True)
    on_line(
        f"python: {name} was not in {spec_path.parent}; wrote it from the lines "
        f"{lock_path.name} carries"
    )
