"""Notes in imagesmith's cache that let a later command skip work whose answer this
version of imagesmith has already found: an empty file per answer, named by a hash of
everything the answer depends on. A note that is missing only costs the work again; a
note is never read for its content, so a damaged one cannot give a wrong answer."""

from __future__ import annotations

import os
from pathlib import Path


def note_path(kind: str, key: str) -> Path:
    """Where the note `key` (a hex digest) of `kind` is kept."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "imagesmith" / kind / key


def noted(kind: str, key: str) -> bool:
    return note_path(kind, key).is_file()


def note(kind: str, key: str) -> None:
    """Leave the note (quietly not, when the cache cannot be written: it is a shortcut)."""
    path = note_path(kind, key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        pass
