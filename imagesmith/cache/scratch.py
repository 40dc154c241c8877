"""Scratch folders that a killed imagesmith leaves behind are removed by the next one.

A build works in scratch folders: its temporary folder (plain layers, the context), the
staging folder of a canonical layout, a Python tree or a wheel folder being made. A
process that ends normally removes them; one that is killed (SIGKILL, OOM, a node
going down) cannot, and they can hold gigabytes.

Each scratch folder holds a lock file that its process keeps locked (`flock`) for as
long as it works there; the kernel drops the lock when the process ends, however it
ends. Making a scratch folder first removes the sibling folders of the same kind whose
lock nobody holds. A folder is only ever seen under its final name with its lock held:
it is made and locked under a `.creating` name, then renamed. A folder without a lock
file (made by imagesmith before 0.8.0, or by a process killed while making it) is
removed once it is an hour old.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: The lock file inside each scratch folder.
OWNER = ".imagesmith-owner"
_CREATING = ".creating-"
#: A folder without a lock file is left alone for this long (it may be being made).
UNLOCKED_GRACE = 3600.0

_held: dict[Path, int] = {}
_held_lock = threading.Lock()


def make_scratch(parent: Path, prefix: str, *, siblings: str | None = None) -> Path:
    """A new folder `parent/PREFIX…`, locked by this process until `release`; the
    unlocked siblings (`PREFIX*`, or the pattern `siblings`) that killed processes left
    are removed first."""
    import tempfile  # with `random`: not for commands that write nothing

    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent, siblings or prefix + "*")
    for attempt in range(3):
        creating = Path(tempfile.mkdtemp(prefix=_CREATING + prefix, dir=parent))
        fd = os.open(creating / OWNER, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            folder = parent / creating.name.removeprefix(_CREATING)
            creating.rename(folder)
        except FileNotFoundError:
            # Another process's sweep took it between open and flock: make another.
            os.close(fd)
            if attempt == 2:
                raise
            continue
        except BaseException:
            os.close(fd)
            shutil.rmtree(creating, ignore_errors=True)
            raise
        with _held_lock:
            _held[folder] = fd
        return folder
    raise AssertionError("unreachable")


def release(folder: Path, *, remove: bool = True) -> None:
    """Remove `folder` (unless `remove` is false: it was moved into place) and drop its lock."""
    if remove:
        shutil.rmtree(folder, ignore_errors=True)
    with _held_lock:
        fd = _held.pop(folder, None)
    if fd is not None:
        os.close(fd)


def disown(folder: Path) -> None:
    """Take the lock file out of `folder` before it is moved into place as a cache entry
    (the lock itself stays held until `release`)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / OWNER).unlink()


@contextlib.contextmanager
def scratch(parent: Path, prefix: str, *, siblings: str | None = None) -> Iterator[Path]:
    """`make_scratch`, removed again when the block ends."""
    folder = make_scratch(parent, prefix, siblings=siblings)
    try:
        yield folder
    finally:
        release(folder)


def sweep(parent: Path, pattern: str) -> list[Path]:
    """Remove the folders `parent/pattern` whose process has ended; the ones removed."""
    removed = []
    try:
        entries = sorted(parent.glob(pattern))
    except OSError:
        return []
    creating = sorted(parent.glob(_CREATING + pattern))
    for entry in [*entries, *creating]:
        if entry in _held or not entry.is_dir() or entry.is_symlink():
            continue
        if _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _abandoned(folder: Path) -> bool:
    try:
        fd = os.open(folder / OWNER, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime > UNLOCKED_GRACE
        except OSError:
            return False
    except OSError:
        return False  # another user's, say: not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its process is alive
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True
