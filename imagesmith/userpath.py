"""Paths in messages, written so that the command a hint names works from where the user is."""

from __future__ import annotations

from pathlib import Path


def as_typed(path: Path) -> str:
    """`path` relative to the current folder when it lies below it (`lab/env.toml`), else whole.

    Specs are resolved to absolute paths when loaded; a hint such as "run `imagesmith lock
    env.toml`" must still name `lab/env.toml` when that is what the user ran the command on.
    """
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
