"""Byte streams for image blobs: a write-only stream that hashes what passes through it,
one that gzips it on every core with fixed output (`GzipPipe`), and compressed inputs
recognised by their first bytes and made readable twice. Standard library only."""

from __future__ import annotations

import bz2
import collections
import concurrent.futures
import gzip
import hashlib
import lzma
import os
import shutil
import struct
import tempfile
import zlib
from typing import IO, Any, Literal, Protocol

from imagesmith.errors import InputError

CHUNK = 1 << 20

Compression = Literal["none", "gzip", "bzip2", "xz", "zstd"]


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class _WriteOnly:
    """What a write-only stream tells readers: its position (``tarfile`` and ``gzip`` ask),
    the size and sha256 of what was written, and seeking only to where it already is."""

    _size: int
    _hash: hashlib._Hash

    def tell(self) -> int:
        return self._size

    def read(self, size: int = -1, /) -> bytes:
        raise OSError(f"{type(self).__name__} is write-only")

    def seek(self, pos: int, whence: int = 0, /) -> int:
        if (whence == 0 and pos == self._size) or (whence in (1, 2) and pos == 0):
            return self._size
        raise OSError(f"{type(self).__name__} cannot seek")

    @property
    def digest(self) -> str:
        """sha256 of everything written (uncompressed)."""
        return "sha256:" + self._hash.hexdigest()

    @property
    def size(self) -> int:
        return self._size


class HashingWriter(_WriteOnly):
    """A write-only file object that counts and sha256-hashes what passes through it.

    It forwards every write to ``sink`` (if any). ``tarfile`` and ``gzip`` both
    accept it as their ``fileobj``.
    """

    def __init__(self, sink: _Sink | None = None) -> None:
        self._sink = sink
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes, /) -> int:
        self._hash.update(data)
        self._size += len(data)
        if self._sink is not None:
            self._sink.write(data)
        return len(data)

    def flush(self) -> None:
        if self._sink is not None:
            self._sink.flush()

    def close(self) -> None:
        """Does not close the sink: whoever opened it closes it."""


class GzipPipe(_WriteOnly):
    """A write-only file object: sha256-hashes what it is given (the uncompressed
    stream) and gzips it into `sink`, compressing blocks in parallel.

    The method is pigz's: the input is cut into `BLOCK`-byte blocks, each deflated on
    its own (zlib releases the GIL, so blocks compress on every core beside the
    caller's own work) with the previous block's last 32 KiB as its dictionary, and
    ended with a sync flush; an empty final block ends the stream. The bytes depend on
    the input, `level`, `BLOCK` and zlib, never on the number of cores or on how the
    input was split into writes; any gzip reader reads them. The header is fixed: no
    file name, mtime 0, OS byte 255. Call `close` to finish the stream; it re-raises
    anything a worker hit.
    """

    BLOCK = 1 << 20
    _WINDOW = 1 << 15
    _HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    _FINAL = b"\x03\x00"  # a last, empty block with fixed codes

    def __init__(self, sink: _Sink, *, level: int) -> None:
        self._sink = sink
        self._level = level
        self._hash = hashlib.sha256()
        self._crc = 0
        self._size = 0
        self._buf = bytearray()
        self._window = b""
        self._closed = False
        workers = max(1, min(4, os.cpu_count() or 1))
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, "imagesmith-gzip")
        self._pending: collections.deque[concurrent.futures.Future[bytes]] = collections.deque()
        self._limit = 2 * workers
        sink.write(self._HEADER)

    @staticmethod
    def _deflate(block: bytes, window: bytes, level: int) -> bytes:
        if window:
            z = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, window)
        else:
            z = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
        return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)

    def _submit(self, block: bytes) -> None:
        self._hash.update(block)
        self._crc = zlib.crc32(block, self._crc)
        self._pending.append(self._pool.submit(self._deflate, block, self._window, self._level))
        self._window = block[-self._WINDOW :]
        while len(self._pending) >= self._limit:
            self._sink.write(self._pending.popleft().result())

    def write(self, data: bytes, /) -> int:
        if self._closed:
            raise ValueError("write to a closed GzipPipe")
        self._buf += data
        self._size += len(data)
        while len(self._buf) >= self.BLOCK:
            block = bytes(self._buf[: self.BLOCK])
            del self._buf[: self.BLOCK]
            self._submit(block)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: data reaches the sink as blocks finish and on close."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf.clear()
            while self._pending:
                self._sink.write(self._pending.popleft().result())
            self._sink.write(self._FINAL)
            self._sink.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)


def detect_compression(head: bytes) -> Compression:
    """Recognise a stream by its first bytes (at least 6 of them)."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def _peek(stream: IO[bytes], n: int = 6) -> bytes:
    pos = stream.tell()
    head = stream.read(n)
    stream.seek(pos)
    return head


def seekable_uncompressed(stream: IO[bytes], *, what: str) -> IO[bytes]:
    """Return ``stream`` itself if it is an uncompressed, seekable tar; otherwise
    decompress it into an anonymous temporary file (deleted on close) and return that.

    ``stream`` must be seekable (every source here is).
    """
    kind = detect_compression(_peek(stream))
    if kind == "none":
        return stream
    if kind == "zstd":
        raise InputError(
            f"{what} is zstd-compressed; imagesmith reads gzip, bzip2, xz or plain tars "
            "(save the image again with gzip or without compression)"
        )
    opener: dict[str, Any] = {"gzip": gzip.GzipFile, "bzip2": bz2.BZ2File, "xz": lzma.LZMAFile}
    spool = tempfile.TemporaryFile(prefix="imagesmith-layer-")  # noqa: SIM115  (returned)
    try:
        with opener[kind](fileobj=stream, mode="rb") as dec:
            shutil.copyfileobj(dec, spool, CHUNK)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        spool.close()
        raise InputError(f"{what}: corrupt {kind} data: {exc}") from exc
    spool.seek(0)
    return spool
