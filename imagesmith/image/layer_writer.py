"""Writing one canonical layer: tar headers (numeric owners, clamped mtimes, normalised
whiteouts), timestamp ``.pyc`` headers clamped alike, gzip at `GZIP_LEVEL` into an OCI
layout's blob, and optionally an uncompressed copy. See docs/canonical.md."""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from imagesmith.image.layer_plan import Record
from imagesmith.image.oci import LayoutWriter, digest_hex
from imagesmith.image.paths import is_whiteout
from imagesmith.image.streams import GzipPipe
from imagesmith.image.tar_entries import kept_xattrs

GZIP_LEVEL = 3
"""zlib level for layer blobs: 2.3x faster than zlib's default for 6% more bytes (measured:
bench/README.md, "Measurements behind the code"); the level is part of what fixes the
digest."""

MtimePolicy = Literal["clamp", "epoch"]


def _header(rec: Record, *, epoch: int, policy: MtimePolicy) -> tarfile.TarInfo:
    m = rec.meta
    info = tarfile.TarInfo(rec.path)
    info.uname = ""
    info.gname = ""
    if is_whiteout(rec.path):
        info.type = tarfile.REGTYPE
        info.mode = 0o600
        info.mtime = epoch
        return info
    info.type = rec.type
    info.mode = m.mode & 0o7777
    info.uid = m.uid
    info.gid = m.gid
    info.mtime = _mtime(m.mtime, epoch, policy)
    if rec.type == tarfile.REGTYPE:
        info.size = m.size
    if rec.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = rec.linkname
    if rec.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor = m.devmajor
        info.devminor = m.devminor
    info.pax_headers = kept_xattrs(m)
    return info


@dataclass(frozen=True)
class LayerOut:
    """A canonical layer written: its blob's digest, its diff_id, the blob's size."""

    digest: str
    diff_id: str
    size: int


_PYC_HEADER = 16


def _mtime(value: float, epoch: int, policy: MtimePolicy) -> int:
    return epoch if policy == "epoch" else max(0, min(int(value), epoch))


def _clamp_pyc_header(head: bytes, epoch: int, policy: MtimePolicy) -> bytes:
    """Apply the mtime policy to the source mtime a timestamp-based ``.pyc`` records.

    CPython's pyc header: magic (2 bytes + ``\\r\\n``), flags (0 = timestamp-based),
    source mtime (uint32), source size. Clamping the ``.py`` file's mtime without
    clamping the recorded one would make every such pyc stale (recompiled on each
    import), and pycs compiled during the build would record the build time. The
    same function applied to both keeps a valid pyc valid and makes it reproducible.
    Hash-based pycs (flags 1 or 3, what py_compile writes when SOURCE_DATE_EPOCH is
    set) hold no time and are left alone.
    """
    if len(head) < _PYC_HEADER or head[2:4] != b"\r\n" or head[4:8] != b"\0\0\0\0":
        return head
    recorded = int.from_bytes(head[8:12], "little")
    clamped = _mtime(recorded, epoch, policy) & 0xFFFFFFFF
    return head[:8] + clamped.to_bytes(4, "little") + head[12:]


class _Prefixed:
    """A reader that yields `head`, then the rest of `stream`."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._stream.read(size)
        head = self._head[:size] if size >= 0 else self._head
        self._head = self._head[len(head) :]
        rest = -1 if size < 0 else size - len(head)
        return head + (self._stream.read(rest) if rest else b"")


Opener = Callable[[tarfile.TarInfo], "IO[bytes] | None"]
"""Opens the content of a regular file entry of the layer being read."""


class _Tee:
    """Writes to `first` and `second`; tells `first`'s position."""

    def __init__(self, first: GzipPipe, second: IO[bytes]) -> None:
        self._first = first
        self._second = second

    def write(self, data: bytes, /) -> int:
        self._second.write(data)
        return self._first.write(data)

    def tell(self) -> int:
        return self._first.tell()


def write_layer(
    layout: LayoutWriter,
    records: Sequence[Record],
    open_data: Opener | None,
    *,
    epoch: int,
    policy: MtimePolicy,
    plain_dir: Path | None = None,
) -> LayerOut:
    """Write one canonical layer blob; with `plain_dir`, also its uncompressed tar there,
    as ``<diff_id hex>.tar`` (for engines that load plain layers faster)."""
    if plain_dir is None:
        return _write_layer_blob(layout, records, open_data, epoch=epoch, policy=policy, plain=None)
    plain_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=plain_dir, suffix=".part")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as plain:
            out = _write_layer_blob(
                layout, records, open_data, epoch=epoch, policy=policy, plain=plain
            )
        tmp.replace(plain_dir / f"{digest_hex(out.diff_id)}.tar")
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_layer_blob(
    layout: LayoutWriter,
    records: Sequence[Record],
    open_data: Opener | None,
    *,
    epoch: int,
    policy: MtimePolicy,
    plain: IO[bytes] | None,
) -> LayerOut:
    with layout.blob_writer() as (blob, result):
        raw = GzipPipe(blob, level=GZIP_LEVEL)
        sink: Any = raw if plain is None else _Tee(raw, plain)
        with (
            contextlib.closing(raw),
            tarfile.TarFile(
                fileobj=sink,
                mode="w",
                format=tarfile.PAX_FORMAT,
                encoding="utf-8",
                copybufsize=1 << 20,
            ) as out,
        ):
            for rec in records:
                info = _header(rec, epoch=epoch, policy=policy)
                if rec.data is not None and info.size:
                    assert open_data is not None
                    data = open_data(rec.data)
                    assert data is not None
                    with data:
                        if rec.path.endswith(".pyc") and info.size >= _PYC_HEADER:
                            head = _clamp_pyc_header(data.read(_PYC_HEADER), epoch, policy)
                            out.addfile(info, _Prefixed(head, data))
                        else:
                            out.addfile(info, data)
                else:
                    out.addfile(info)
    return LayerOut(result[0], raw.digest, blob.size)
