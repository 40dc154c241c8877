"""Cache integrity: what imagesmith reads back from its cache is what it wrote there.

Every cached file is named, or accompanied, by its sha256. A reader hashes the file as it
reads it and compares before anything is loaded, pushed or built from it; a mismatch is
`CorruptEntry`, which each cache turns into "drop it, say so in one line, make it again
from its source". Writers write to a temporary name, fsync and rename, so a killed
process leaves either nothing or a whole entry under the final name.

`file_sha256` remembers, for this process only, the files it has hashed (or that were
just written with a known digest) by device, inode, size and mtime: a build that writes
a blob and reads it back a second later does not hash it twice, hard links included
(linking changes an inode's ctime, not its mtime). A write to the file changes its
mtime, so a file changed since is hashed again.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

_CHUNK = 1 << 20


class CorruptEntry(Exception):
    """A cached file whose bytes do not match its digest."""

    def __init__(self, path: Path, expected: str, found: str) -> None:
        super().__init__(f"{path}: expected {expected}, found {found}")
        self.path = path
        self.expected = expected
        self.found = found


_Signature = tuple[int, int, int, int]
_known: dict[_Signature, str] = {}
_lock = threading.Lock()


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remember(path: Path, digest: str) -> None:
    """`path` was just written with this digest (computed while writing it)."""
    try:
        sig = _signature(os.stat(path))
    except OSError:
        return
    with _lock:
        _known[sig] = digest


def file_sha256(path: Path) -> str:
    """``sha256:<hex>`` of the file, read in 1 MiB blocks (or known from this process)."""
    with open(path, "rb") as f:
        sig = _signature(os.fstat(f.fileno()))
        with _lock:
            known = _known.get(sig)
        if known is not None:
            return known
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    digest = "sha256:" + h.hexdigest()
    with _lock:
        _known[sig] = digest
    return digest


def check_file(path: Path, digest: str) -> None:
    """Raise `CorruptEntry` unless the file's sha256 is `digest` (OSError if unreadable)."""
    found = file_sha256(path)
    if found != digest:
        raise CorruptEntry(path, digest, found)


def check_bytes(data: bytes, digest: str, *, what: Path) -> None:
    """Raise `CorruptEntry` unless `data` hashes to `digest`."""
    found = "sha256:" + hashlib.sha256(data).hexdigest()
    if found != digest:
        raise CorruptEntry(what, digest, found)


class LineLog:
    """One-line reports collected from any thread, printed later by the thread that
    prints progress (the live view is not thread-safe)."""

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def flush(self, on_line: Callable[[str], None]) -> None:
        with self._lock:
            lines, self._lines = self._lines, []
        for line in lines:
            on_line(line)


_SYNC_FILE_RANGE_WRITE = 2
_WRITEBACK_STEP = 8 << 20


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, looked up on the first write that needs it (ctypes and the
    lookup cost a few ms that commands writing no cache entry need not pay)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


class WritebackSink:
    """A binary file being written, whose bytes the kernel starts writing to the disk
    every 8 MiB (Linux ``sync_file_range``, which does not wait): the fsync that ends the
    file then waits for the last few MiB instead of all of it, and the disk works while
    the writer compresses. Elsewhere a plain pass-through."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self._written = 0
        self._started = 0

    def write(self, data: bytes, /) -> int:
        count = self._file.write(data)
        self._written += len(data)
        if self._written - self._started >= _WRITEBACK_STEP and (
            start_writeback := _sync_file_range()
        ):
            self._file.flush()
            start_writeback(
                self._file.fileno(),
                self._started,
                self._written - self._started,
                _SYNC_FILE_RANGE_WRITE,
            )
            self._started = self._written
        return count

    def flush(self) -> None:
        self._file.flush()

    def sync(self) -> None:
        """Flush and fsync: the bytes are on the disk when this returns."""
        self._file.flush()
        os.fsync(self._file.fileno())


def fsync_file(path: Path) -> None:
    """Flush a file's bytes to the disk (before it is renamed into place)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file under `root` and the folders holding them."""
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.is_file() and not path.is_symlink():
                fsync_file(path)
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    """Make the names in a folder durable (after a rename into it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temporary name, fsync, rename. Raises OSError."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def link_over(src: Path, dest: Path) -> None:
    """Make `dest` the file `src` is (a hard link, or a durable copy across file systems),
    replacing whatever `dest` was in one rename. Raises OSError."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.path.samefile(src, dest):
            return
    except OSError:  # no dest yet
        pass
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_native_id()}.tmp")
    try:
        try:
            os.link(src, tmp)
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def forget() -> None:
    """Forget every digest this process knows (as a new process would); for tests that
    change a cached file in place within the same clock tick as its writing."""
    with _lock:
        _known.clear()
