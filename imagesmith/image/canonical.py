"""Make an engine-built image canonical, so that its digest depends on the build inputs only.

Docker and podman stamp every image with when, where and by what it was built:
timestamps in the config and in every tar header, host names, engine versions,
tar entry order, user and group names, gzip headers, mount-point placeholders.
`canonicalize` rewrites a saved image (docker-archive, or any OCI layout) into a
form where all of that is gone, and writes it as an OCI image layout plus a
docker-archive that either engine can load back. `diff_archives` explains, file
by file, why two images are not the same.

Policy, chosen once and documented here (DESIGN.md "Image"):

Layers
  * Entries sorted by path, component by component, so parents come before their
    children; within a directory ``.wh..wh..opq`` comes first, then the other
    whiteouts, then ordinary names (byte order, UTF-8).
  * mtime: **clamped**, ``max(0, min(mtime, epoch))`` (``mtime_policy="clamp"``,
    the SOURCE_DATE_EPOCH convention, what BuildKit's ``rewrite-timestamp`` does).
    Everything the build touched gets exactly ``epoch``; files that come from a
    package or the base image keep their older, meaningful, already reproducible
    time. ``mtime_policy="epoch"``
    sets every entry to ``epoch`` instead. Because clamping only works when
    ``epoch`` is earlier than the build, an ``epoch`` in the future is refused.
  * Timestamp-based ``.pyc`` files: the source mtime recorded in their header
    goes through the same clamp as the files' own mtimes, so a pyc that matched
    its ``.py`` still does (seen: py3compile's pycs for python3-numpy, 553 of
    1083 stale otherwise) and one compiled during the build (pip) no longer
    records the build time.
  * Owners numeric only (uname/gname empty); mode bits, symlinks, hard links,
    device nodes, FIFOs and extended attributes (``security.capability`` ...)
    kept; ``security.selinux`` and ``trusted.overlay.*`` dropped (host-specific).
  * POSIX tar (Python's PAX format), which writes a PAX header only where ustar
    cannot hold a value (long or non-ASCII names, huge sizes or ids, xattrs), and
    never atime/ctime/mtime records: engine PAX headers are not carried over.
  * Hard-link groups are re-elected after sorting: the first path of a group in
    the new order carries the data, the others link to it.
  * Whiteout markers are normalised (regular, empty, mode 0600, root, mtime =
    epoch): docker writes them 0600, podman 0000.
  * Opaque markers (``D/.wh..wh..opq``) on a directory ``D`` that no lower layer
    has are removed: they hide nothing. Docker 20.10's overlay2 writes one on
    every directory a RUN step creates, podman 4.3 does not.
  * Engine noise removed, in every layer but the first (the base image's bottom
    layer is left as its authors made it):
      - zero-size regular files at ``etc/hostname``, ``etc/hosts``,
        ``etc/resolv.conf``, ``run/.containerenv``, ``.dockerenv`` (the mount points
        the runtime bind-mounts over at run time; podman 4.3 leaves an empty
        ``etc/hosts`` in RUN layers when the base has none, docker 20.10 leaves
        nothing);
      - ``proc``, ``sys``, ``dev`` directories with nothing under them in the layer;
      - directories with nothing under them in the layer whose mode, owner and
        xattrs equal the directory already in the lower layers (only their mtime
        changed: podman's ``etc/`` and ``run/``, both engines' ``tmp/``);
      - opt-in (``drop_paths``): entries matching patterns such as
        `VOLATILE_PATHS`, the apt/dpkg/ldconfig caches and logs that differ on
        every build. Better: remove them in the RUN step itself. A whiteout of a
        path matching ``drop_paths`` goes too when no layer below holds that path
        (the first layer, or a hard-link target kept): it hides nothing. So a folder
        one step copies in and a later one removes (imagesmith's ``.debs``) leaves
        no trace.
  * A layer left empty by that cleaning is dropped, together with its diff_id and
    its history entry, so ``rootfs.diff_ids``, the manifest and the history stay
    consistent (an image keeps at least one layer).
  * gzip, level `GZIP_LEVEL` (3), mtime 0, no file name, OS byte 255, deflated in
    1 MiB blocks on every core (pigz's method, `GzipPipe`): identical bytes on any
    machine, whatever its core count, whose Python links the same zlib (Debian 12:
    1.2.13). The diff_ids do not depend on zlib at all.

Config
  * Kept: ``architecture``, ``os``, ``variant``, ``os.version``, ``os.features``,
    ``author``, and under ``config`` only ``Env``, ``Cmd``, ``Entrypoint``,
    ``WorkingDir``, ``User``, ``Labels``, ``ExposedPorts``, ``Volumes``,
    ``StopSignal``, ``Healthcheck``, ``OnBuild``, ``Shell``; empty or null values
    dropped. Dropped: ``Hostname``, ``Domainname``, ``Image``, the Attach/Tty/Stdin
    flags, ``container``, ``container_config``, ``docker_version``, and the label
    ``io.buildah.version`` that podman adds by itself.
  * ``Env`` sorted by variable name (Docker and podman order a redefined variable
    differently; names are unique, so the order means nothing).
  * ``created`` = epoch as ``YYYY-MM-DDTHH:MM:SSZ``.
  * ``history``: exactly one entry per layer, ``created`` = epoch and
    ``created_by`` normalised so both engines write the same string for the same
    instruction (``/bin/sh -c #(nop) `` and BuildKit's ``# buildkit`` dropped,
    ``RUN `` prefix for shell commands, whitespace after ``#(nop)`` collapsed, the
    engine-specific ``file:<hash>`` content hashes of ADD/COPY dropped: the
    layer's diff_id already pins the content). Metadata-only entries
    (``empty_layer``: ENV, LABEL, USER...) are dropped; their effect is in the
    config, and the engines spell them differently. ``comment`` dropped (podman
    writes the parent image ID there). When the input history does not line up
    with its layers, ``created_by`` is omitted.
  * Serialised with sorted keys, no whitespace, ASCII only.

Manifest: OCI media types (image manifest, config, ``tar+gzip`` layers). Checked
here: docker-registry 2.8 stores them (``skopeo copy oci:DIR docker://...`` keeps
the manifest bytes, so the registry digest is `CanonicalImage.manifest_digest`),
docker 20.10 and podman 4.3 both pull them by digest, and the image ID after the
pull is the config digest. Docker's schema2 types would work as well for pulls,
but they buy nothing: neither engine's own push reproduces these bytes
(``docker push`` re-compresses and rewrites the manifest as schema2; ``podman
push`` reuses the blobs but re-serialises the manifest with another key order),
so the canonical layout must be pushed as it is, blob for blob, and OCI is the
native format of an OCI layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import functools
import hashlib
import json
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Literal

from imagesmith import __version__
from imagesmith.cache.integrity import (
    CorruptEntry,
    check_file,
    link_over,
    write_bytes_durably,
)
from imagesmith.engine.base import disk_full_message
from imagesmith.engine.overlay import FileInfo, LocalImage, NotReadable, read_diff_dir
from imagesmith.errors import InputError, OperationError
from imagesmith.image.oci import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    GzipPipe,
    ImageSource,
    LayoutWriter,
    canonical_json,
    digest_hex,
    open_image,
    parse_config,
    write_docker_archive,
)

__all__ = [
    "GZIP_LEVEL",
    "VOLATILE_PATHS",
    "CanonicalImage",
    "LayerCache",
    "MtimePolicy",
    "canonicalize",
    "canonicalize_local",
    "diff_archives",
    "normalize_created_by",
    "write_docker_archive",
]

GZIP_LEVEL = 3
"""zlib level for layer blobs. Measured on the foundation example (445 MB saved): level 6
(zlib's default) 42 s and 157 MB, level 3 18 s and 166 MB, level 1 14 s and 174 MB. Level
3 buys 2.3x less time for 6% more bytes; the level is part of what fixes the digest."""

MtimePolicy = Literal["clamp", "epoch"]

#: Zero-size files the runtime bind-mounts over; removed from layers above the first.
PLACEHOLDER_FILES = frozenset(
    {"etc/hostname", "etc/hosts", "etc/resolv.conf", "run/.containerenv", ".dockerenv"}
)
#: Runtime mount-point directories; removed from layers above the first when empty there.
MOUNTPOINT_DIRS = frozenset({"proc", "sys", "dev"})
#: Files that apt, dpkg and ldconfig rewrite with run-dependent bytes on every install
#: (seen varying between two ``--no-cache`` builds of the same apt step on docker 20.10
#: and podman 4.3). For `canonicalize`'s opt-in ``drop_paths``; better removed in the
#: Containerfile's own RUN step (``rm -f`` / ``rm -rf`` of the same paths).
VOLATILE_PATHS = (
    "var/cache/apt/*.bin",
    "var/cache/ldconfig/aux-cache",
    "var/log/apt/*",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
)
#: Labels an engine adds by itself.
BUILDER_LABELS = frozenset({"io.buildah.version"})

_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_XATTR = "SCHILY.xattr."
_DROPPED_XATTRS = ("security.selinux", "trusted.overlay.")
_CONFIG_KEYS = (
    "Cmd",
    "Entrypoint",
    "Env",
    "ExposedPorts",
    "Healthcheck",
    "Labels",
    "OnBuild",
    "Shell",
    "StopSignal",
    "User",
    "Volumes",
    "WorkingDir",
)
_TOP_KEYS = ("architecture", "os", "variant", "os.version", "os.features", "author")
_MAX_EPOCH = 8**11 - 1  # the largest mtime a ustar header holds


@dataclass(frozen=True)
class CanonicalImage:
    """What `canonicalize` wrote.

    ``manifest_digest`` is the registry digest (``repo@sha256:...``) a push of the
    layout's blobs reproduces; ``config_digest`` is the image ID docker and podman
    show after loading ``archive``.
    """

    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    """sha256 of each gzip blob, bottom layer first."""
    diff_ids: tuple[str, ...]
    """sha256 of each uncompressed layer tar (the config's ``rootfs.diff_ids``)."""
    layer_sizes: tuple[int, ...]
    """Compressed size of each layer blob in bytes."""
    layout: Path
    """The OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``)."""
    archive: Path | None
    """``layout / "image.tar"``, a docker-archive for ``docker load``/``podman load``."""
    repo_tags: tuple[str, ...]
    removed: tuple[str, ...]
    """What the cleaning removed, as ``"layer N: path (reason)"`` lines."""
    dropped_layers: tuple[int, ...]
    """Indexes (in the input) of layers that were empty after cleaning."""

    @property
    def image_id(self) -> str:
        return self.config_digest


# --------------------------------------------------------------------------- paths


def _clean_path(name: str, what: str) -> str | None:
    """Archive-relative path without ``./``, leading or trailing ``/``; None for the root."""
    p = name
    while p.startswith("./"):
        p = p[2:]
    p = p.strip("/")
    if p in ("", "."):
        return None
    parts = [c for c in p.split("/") if c not in ("", ".")]
    if ".." in parts:
        raise InputError(f"{what}: unsafe path {name!r} in layer")
    return "/".join(parts) or None


def _rank(component: str) -> int:
    if component == _OPAQUE:
        return 0
    if component.startswith(_WHITEOUT):
        return 1
    return 2


def _sort_key(path: str) -> tuple[tuple[int, bytes], ...]:
    return tuple((_rank(c), c.encode("utf-8", "surrogateescape")) for c in path.split("/"))


def _is_whiteout(path: str) -> bool:
    return posixpath.basename(path).startswith(_WHITEOUT)


@functools.lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a path matches any of the fnmatch `patterns` (one compiled expression)."""
    regex = re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")
    return lambda path: regex.match(path) is not None


def _ancestors(path: str) -> Iterator[str]:
    while "/" in path:
        path = path.rsplit("/", 1)[0]
        yield path


# --------------------------------------------------------------------------- layers


def _xattrs(member: tarfile.TarInfo) -> dict[str, str]:
    out: dict[str, str] = {}
    for key in sorted(member.pax_headers):
        if not key.startswith(_XATTR):
            continue
        attr = key[len(_XATTR) :]
        if attr.startswith(_DROPPED_XATTRS):
            continue
        out[key] = member.pax_headers[key]
    return out


_DirMeta = tuple[int, int, int, tuple[tuple[str, str], ...]]


def _dir_meta(member: tarfile.TarInfo) -> _DirMeta:
    return (member.mode & 0o7777, member.uid, member.gid, tuple(_xattrs(member).items()))


class _LowerDirs:
    """Directories the layers below the current one leave in the root filesystem.

    Maps each path to its metadata, or to None for a directory that only exists
    implicitly (as the parent of an entry, with no entry of its own).
    """

    def __init__(self) -> None:
        self.dirs: dict[str, _DirMeta | None] = {}
        self.dropped_kept: set[str] = set()
        """Other entries below that match ``drop_paths`` (the first layer's, link targets)."""

    def get(self, path: str) -> _DirMeta | None:
        return self.dirs.get(path)

    def exists(self, path: str) -> bool:
        return path in self.dirs

    def holds(self, path: str) -> bool:
        """Whether a layer below leaves `path` (a `drop_paths` match) in the filesystem."""
        return path in self.dirs or path in self.dropped_kept

    def to_json(self) -> dict[str, Any]:
        dirs = {
            p: None if m is None else [m[0], m[1], m[2], list(m[3])] for p, m in self.dirs.items()
        }
        return {"dirs": dirs, "dropped_kept": sorted(self.dropped_kept)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _LowerDirs:
        lower = cls()
        for path, m in data["dirs"].items():
            lower.dirs[path] = (
                None if m is None else (m[0], m[1], m[2], tuple((k, v) for k, v in m[3]))
            )
        lower.dropped_kept = set(data["dropped_kept"])
        return lower

    def apply(self, records: Sequence[_Record], drop_paths: Sequence[str] = ()) -> None:
        gone: set[str] = set()  # path and everything under it
        emptied: set[str] = set()  # everything under it
        new_dirs: dict[str, _DirMeta | None] = {}
        for rec in records:
            base = posixpath.basename(rec.path)
            parent = posixpath.dirname(rec.path)
            for ancestor in _ancestors(rec.path):
                if ancestor in new_dirs:
                    break
                new_dirs[ancestor] = None
            if base == _OPAQUE:
                emptied.add(parent)
            elif base.startswith(_WHITEOUT):
                gone.add(posixpath.join(parent, base[len(_WHITEOUT) :]))
            elif rec.meta.isdir():
                new_dirs[rec.path] = _dir_meta(rec.meta)
            else:
                gone.add(rec.path)
        if gone or emptied:
            for path in list(self.dirs):
                if path in gone or any(a in gone or a in emptied for a in _ancestors(path)):
                    del self.dirs[path]
            for path in list(self.dropped_kept):
                if path in gone or any(a in gone or a in emptied for a in _ancestors(path)):
                    self.dropped_kept.discard(path)
        if drop_paths:
            match = _matcher(tuple(drop_paths))
            self.dropped_kept.update(
                r.path
                for r in records
                if not r.meta.isdir() and not _is_whiteout(r.path) and match(r.path)
            )
        for path, meta in new_dirs.items():
            if meta is not None or path not in self.dirs:
                self.dirs[path] = meta


@dataclass
class _Record:
    """One entry of a canonical layer."""

    path: str
    meta: tarfile.TarInfo  # metadata source
    data: tarfile.TarInfo | None  # where the content comes from (regular files)
    type: bytes
    linkname: str


def _read_members(tar: tarfile.TarFile, what: str) -> dict[str, tarfile.TarInfo]:
    entries: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        path = _clean_path(member.name, what)
        if path is None:
            continue  # the root directory: engines never put one in a layer
        if not (
            member.isreg()
            or member.isdir()
            or member.issym()
            or member.islnk()
            or member.ischr()
            or member.isblk()
            or member.isfifo()
        ):
            raise InputError(f"{what}: {path}: unsupported tar entry type {member.type!r}")
        entries.pop(path, None)  # a later entry for the same path wins, as on extraction
        entries[path] = member
    return entries


def _plan_layer(
    entries: dict[str, tarfile.TarInfo],
    *,
    index: int,
    lower: _LowerDirs,
    what: str,
    removed: list[str],
    drop_paths: Sequence[str] = (),
) -> list[_Record]:
    """Decide what the canonical layer holds; `entries` is consumed."""
    link_targets = {
        _clean_path(m.linkname, what) for m in entries.values() if m.islnk() and m.linkname
    }
    for path in [p for p in entries if posixpath.basename(p) == _OPAQUE]:
        parent = posixpath.dirname(path)
        if not lower.exists(parent):
            del entries[path]
            removed.append(
                f"layer {index}: {path} (opaque marker on a directory new in this layer)"
            )
    if drop_paths and index > 0:
        for path in [p for p in entries if not _is_whiteout(p) and p not in link_targets]:
            if any(fnmatch.fnmatchcase(path, pat) for pat in drop_paths):
                del entries[path]
                removed.append(f"layer {index}: {path} (matches drop_paths)")
        match = _matcher(tuple(drop_paths))
        for path in [p for p in entries if _is_whiteout(p) and posixpath.basename(p) != _OPAQUE]:
            hidden = posixpath.join(
                posixpath.dirname(path), posixpath.basename(path)[len(_WHITEOUT) :]
            )
            if match(hidden) and not lower.holds(hidden):
                del entries[path]
                removed.append(f"layer {index}: {path} (whiteout of a dropped path: hides nothing)")
    if index > 0:
        for path in sorted(PLACEHOLDER_FILES):
            m = entries.get(path)
            if m is not None and m.isreg() and m.size == 0 and path not in link_targets:
                del entries[path]
                removed.append(f"layer {index}: {path} (empty mount-point placeholder)")
        children: Counter[str] = Counter(posixpath.dirname(p) for p in entries)
        dirs = sorted((p for p, m in entries.items() if m.isdir()), key=_sort_key, reverse=True)
        for path in dirs:  # deepest first, so emptied parents are seen after their children
            if children[path]:
                continue
            m = entries[path]
            reason = ""
            if path in MOUNTPOINT_DIRS:
                reason = "runtime mount-point directory"
            elif lower.get(path) == _dir_meta(m):
                reason = "directory unchanged but for its mtime"
            if reason:
                del entries[path]
                children[posixpath.dirname(path)] -= 1
                removed.append(f"layer {index}: {path}/ ({reason})")

    # Hard links: group every link with the entry it finally points at.
    records: dict[str, _Record] = {}
    groups: dict[str, list[str]] = {}
    for path, m in entries.items():
        if not m.islnk():
            continue
        target = _clean_path(m.linkname, what)
        seen = {path}
        while target is not None and target in entries and entries[target].islnk():
            if target in seen:
                raise InputError(f"{what}: hard-link loop at {path}")
            seen.add(target)
            target = _clean_path(entries[target].linkname, what)
        if target is None or target not in entries or entries[target].isdir():
            # points outside this layer: keep it as the engine wrote it
            records[path] = _Record(path, m, None, tarfile.LNKTYPE, target or m.linkname)
            continue
        groups.setdefault(target, [target]).append(path)
    for root, members in groups.items():
        ordered = sorted(set(members), key=_sort_key)
        holder = ordered[0]
        src = entries[root]
        records[holder] = _Record(
            holder, src, src if src.isreg() else None, _type_of(src), src.linkname
        )
        for path in ordered[1:]:
            records[path] = _Record(path, src, None, tarfile.LNKTYPE, holder)
    for path, m in entries.items():
        if path in records or m.islnk():
            continue
        records[path] = _Record(path, m, m if m.isreg() else None, _type_of(m), m.linkname)
    return sorted(records.values(), key=lambda r: _sort_key(r.path))


def _type_of(m: tarfile.TarInfo) -> bytes:
    if m.isreg():
        return tarfile.REGTYPE
    if m.isdir():
        return tarfile.DIRTYPE
    if m.issym():
        return tarfile.SYMTYPE
    if m.islnk():
        return tarfile.LNKTYPE
    if m.ischr():
        return tarfile.CHRTYPE
    if m.isblk():
        return tarfile.BLKTYPE
    return tarfile.FIFOTYPE


def _header(rec: _Record, *, epoch: int, policy: MtimePolicy) -> tarfile.TarInfo:
    m = rec.meta
    info = tarfile.TarInfo(rec.path)
    info.uname = ""
    info.gname = ""
    if _is_whiteout(rec.path):
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
    info.pax_headers = _xattrs(m)
    return info


@dataclass(frozen=True)
class _LayerOut:
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


_Opener = Callable[[tarfile.TarInfo], "IO[bytes] | None"]
_LayerRead = tuple[dict[str, tarfile.TarInfo], _Opener]


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


def _write_layer(
    layout: LayoutWriter,
    records: Sequence[_Record],
    open_data: _Opener | None,
    *,
    epoch: int,
    policy: MtimePolicy,
    plain_dir: Path | None = None,
) -> _LayerOut:
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
    records: Sequence[_Record],
    open_data: _Opener | None,
    *,
    epoch: int,
    policy: MtimePolicy,
    plain: IO[bytes] | None,
) -> _LayerOut:
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
    return _LayerOut(result[0], raw.digest, blob.size)


@dataclass(frozen=True)
class CachedLayer:
    """What `LayerCache` remembers of one canonical layer."""

    digest: str | None  # None: the cleaning left the layer empty and it was dropped
    diff_id: str
    size: int
    removed: tuple[str, ...]
    lower: Mapping[str, Any]  # what this layer and those below leave (_LowerDirs)


_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class LayerCache:
    """Canonical layers already written, found again by the engine layers they came from.

    A layer's canonical form is a function of the engine's layer *and of every layer
    below it* (opaque markers and unchanged directories are judged against those),
    of the epoch, the mtime policy, ``drop_paths``, these rules and zlib; the key
    covers all of them (`layer_keys`). `canonicalize` takes layers from the cache
    bottom-up, only while every layer below was found too, so a base image's layers
    and an unchanged apt layer are rewritten once, not on every build.

    Entries are JSON files in ``root``, blobs hard links (copies across file systems)
    in ``root/blobs``. Anything missing or unreadable is a miss; a cache that cannot
    be written costs time, never a build. A blob is hashed before it is used: one whose
    bytes do not match its digest is dropped with its entry, reported through
    `on_corrupt` (one line), and the layer is rewritten from the engine's. With `check`
    false, hits are not hashed: for a rewrite whose output is thrown away, which only
    fills the cache (the rewrite that is kept checks what it takes).
    """

    def __init__(
        self,
        root: Path,
        *,
        on_corrupt: Callable[[str], None] | None = None,
        check: bool = True,
    ) -> None:
        self.root = Path(root)
        self.on_corrupt = on_corrupt
        self.check = check

    def blob(self, digest: str) -> Path:
        return self.root / "blobs" / digest_hex(digest)

    def get(self, key: str) -> CachedLayer | None:
        entry = self.root / f"{key}.json"
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            layer = CachedLayer(
                digest=data["digest"],
                diff_id=data["diff_id"],
                size=int(data["size"]),
                removed=tuple(str(x) for x in data["removed"]),
                lower=dict(data["lower"]),
            )
            if layer.digest is not None:
                blob = self.blob(layer.digest)
                if blob.stat().st_size != layer.size:
                    raise CorruptEntry(blob, layer.digest, f"{blob.stat().st_size} bytes")
                if self.check:
                    check_file(blob, layer.digest)
        except CorruptEntry:
            assert layer.digest is not None
            self._drop(entry, layer.digest)
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        with contextlib.suppress(OSError):
            os.utime(entry)  # used: the last to go when the cache is pruned
        return layer

    def _drop(self, entry: Path, digest: str) -> None:
        entry.unlink(missing_ok=True)
        self.blob(digest).unlink(missing_ok=True)
        if self.on_corrupt is not None:
            self.on_corrupt(f"cache: layer {digest} was corrupt; rewritten")

    def put(self, key: str, layer: CachedLayer, blob: Path | None) -> None:
        """Keep `layer`, whose `blob` was just written (so known whole): it replaces
        whatever the cache held under that digest."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if layer.digest is not None:
                assert blob is not None
                link_over(blob, self.blob(layer.digest))
            data = {
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "size": layer.size,
                "removed": list(layer.removed),
                "lower": layer.lower,
            }
            write_bytes_durably(
                self.root / f"{key}.json", json.dumps(data, separators=(",", ":")).encode()
            )
        except OSError:
            pass


def layer_keys(
    diff_ids: Sequence[str], *, epoch: int, policy: MtimePolicy, drop_paths: Sequence[str]
) -> list[str]:
    """`LayerCache` keys of an image's layers, bottom-up, from the engine's diff_ids."""
    rules = {
        "imagesmith": __version__,
        "gzip": GZIP_LEVEL,
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "epoch": epoch,
        "policy": policy,
        "drop_paths": list(drop_paths),
        # Whiteouts of dropped paths that hide nothing go too (the rules changed).
        "dropped_whiteouts": True,
    }
    chain = hashlib.sha256(canonical_json(rules))
    keys = []
    for diff_id in diff_ids:
        chain.update(diff_id.encode("ascii") + b"\n")
        keys.append(chain.hexdigest())
    return keys


def _engine_diff_ids(raw: Mapping[str, Any], count: int) -> list[str] | None:
    rootfs = raw.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != count:
        return None
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in ids):
        return None
    return ids


# --------------------------------------------------------------------------- config


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


_NOP = re.compile(r"^/bin/sh -c #\(nop\)\s*")
_CONTENT_HASH = re.compile(r"\b(file|dir|multi):[0-9a-f]{64}\b")
_BUILD_ARGS = re.compile(r"^\|(\d+) ")


def normalize_created_by(created_by: str) -> str:
    """One spelling of a history ``created_by`` for docker (classic and BuildKit) and podman.

    >>> normalize_created_by("/bin/sh -c #(nop)  CMD [\\"bash\\"]")
    'CMD ["bash"]'
    >>> normalize_created_by("/bin/sh -c apt-get update")
    'RUN apt-get update'
    """
    s = created_by.strip()
    if s.endswith("# buildkit"):
        s = s[: -len("# buildkit")].rstrip()
    m = _BUILD_ARGS.match(s)
    if m:  # docker's classic builder prefixes RUN with "|N K=V ..." for build args
        parts = s.split(" ")
        s = " ".join(parts[1 + int(m.group(1)) :])
    m2 = _NOP.match(s)
    if m2:
        s = " ".join(s[m2.end() :].split())
    elif s.startswith("/bin/sh -c "):
        s = "RUN " + s[len("/bin/sh -c ") :]
    elif s.startswith("RUN /bin/sh -c "):
        s = "RUN " + s[len("RUN /bin/sh -c ") :]
    return _CONTENT_HASH.sub(r"\1", s)


def _layer_created_by(raw: Mapping[str, Any], layer_count: int) -> list[str | None]:
    history = raw.get("history")
    if not isinstance(history, list):
        return [None] * layer_count
    non_empty = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")]
    if len(non_empty) != layer_count:
        return [None] * layer_count
    out: list[str | None] = []
    for h in non_empty:
        cb = h.get("created_by")
        out.append(normalize_created_by(cb) if isinstance(cb, str) and cb.strip() else None)
    return out


def _nonempty(value: object) -> bool:
    return value is not None and value != "" and value != [] and value != {}


def canonical_config(
    raw: Mapping[str, Any],
    *,
    diff_ids: Sequence[str],
    created_by: Sequence[str | None],
    epoch: int,
    what: str = "image",
) -> dict[str, Any]:
    """The canonical config for `raw` with new layers (see the module docstring)."""
    for key in ("architecture", "os"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise InputError(f"{what}: image config has no {key!r}")
    out: dict[str, Any] = {k: raw[k] for k in _TOP_KEYS if _nonempty(raw.get(k))}
    inner = raw.get("config") or {}
    if not isinstance(inner, dict):
        raise InputError(f"{what}: image config field 'config' is not an object")
    cfg: dict[str, Any] = {}
    for key in _CONFIG_KEYS:
        value = inner.get(key)
        if key == "Labels" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in BUILDER_LABELS}
        if key == "Env" and isinstance(value, list):
            # Names are unique once built, so order carries no meaning; the engines differ
            # in it (Docker overwrites PATH in place, podman moves it to the end).
            value = sorted(value, key=lambda item: str(item).partition("=")[0])
        if _nonempty(value):
            cfg[key] = value
    if cfg:
        out["config"] = cfg
    created = rfc3339(epoch)
    out["created"] = created
    history: list[dict[str, Any]] = []
    for cb in created_by:
        entry: dict[str, Any] = {"created": created}
        if cb:
            entry["created_by"] = cb
        history.append(entry)
    out["history"] = history
    out["rootfs"] = {"type": "layers", "diff_ids": list(diff_ids)}
    return out


# --------------------------------------------------------------------------- canonicalize


def _check_epoch(epoch: int, policy: str) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _MAX_EPOCH:
        raise InputError(f"epoch must be a whole number of seconds since 1970, got {epoch!r}")
    if policy not in ("clamp", "epoch"):
        raise InputError(f"unknown mtime policy {policy!r} (use 'clamp' or 'epoch')")
    if policy == "clamp" and epoch > time.time() + 60:
        raise InputError(
            f"epoch {epoch} ({rfc3339(epoch)}) is in the future: clamping timestamps to it "
            "would keep the build's own times (use a SOURCE_DATE_EPOCH before the build)"
        )


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`, moved to `out` when the block succeeds; removed
    whatever happens. OSError, there or in the block, becomes OperationError."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise OperationError(f"cannot create {out}: {exc}") from exc
    try:
        yield staging
        _install(staging, out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # said of the cache folder, not of a staging one
            where = next(p for p in out.parents if not p.name.startswith("."))
            raise OperationError(f"canonical: {disk_full_message(str(where))}") from None
        raise OperationError(f"cannot write canonical image to {out}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _install(staging: Path, out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out} exists and is not a directory")
    if out.is_dir():
        if any(out.iterdir()):
            if not (out / "oci-layout").is_file():
                raise InputError(
                    f"{out} is not empty and not an OCI layout; refusing to replace it"
                )
            shutil.rmtree(out)
        else:
            out.rmdir()
    staging.rename(out)


def canonicalize(
    archive: Path,
    out: Path,
    *,
    epoch: int,
    repo_tags: Sequence[str] = (),
    mtime_policy: MtimePolicy = "clamp",
    write_archive: bool = True,
    drop_paths: Sequence[str] = (),
    cache: LayerCache | None = None,
    plain_dir: Path | None = None,
) -> CanonicalImage:
    """Rewrite the image in `archive` canonically into the OCI layout directory `out`.

    `archive`: a docker-archive (``docker save``, ``podman save --format
    docker-archive``, plain or compressed), an OCI archive or an OCI layout
    directory. `epoch`: SOURCE_DATE_EPOCH of the build. `repo_tags` name the image
    in ``index.json`` and in ``out/image.tar`` (written unless `write_archive` is
    false). `drop_paths`: fnmatch patterns (``*`` crosses ``/``) of layer entries to
    leave out of every layer but the first, e.g. `VOLATILE_PATHS`; a dropped entry
    lets the lower layers' version of the path show through (the base's file, or
    nothing), and a whiteout of a matching path goes only when it hides nothing.
    `cache`: layers rewritten before (see `LayerCache`), looked up by the diff_ids in
    the input's config, which are trusted to match its layers, as engines guarantee.
    `plain_dir`: where to keep an uncompressed copy of each layer rewritten (not those
    from `cache`), as ``<diff_id hex>.tar``, for `write_docker_archive`'s
    `plain_layers`. `out` is created; an existing empty directory or OCI layout there
    is replaced. Raises InputError for
    unreadable or unsupported input and OperationError when writing fails.
    """
    _check_epoch(epoch, mtime_policy)
    archive = Path(archive)
    out = Path(out)
    with _staged(out) as staging:
        with open_image(archive) as src:
            image = _canonicalize_into(
                src.config_json(),
                len(src.layer_names),
                functools.partial(_tar_layer, src),
                staging,
                description=src.description,
                epoch=epoch,
                repo_tags=repo_tags,
                policy=mtime_policy,
                drop_paths=tuple(drop_paths),
                cache=cache,
                plain_dir=plain_dir,
            )
        if write_archive:
            write_docker_archive(staging, staging / "image.tar", repo_tags=repo_tags)
    return CanonicalImage(
        manifest_digest=image.manifest_digest,
        config_digest=image.config_digest,
        layer_digests=image.layer_digests,
        diff_ids=image.diff_ids,
        layer_sizes=image.layer_sizes,
        layout=out,
        archive=out / "image.tar" if write_archive else None,
        repo_tags=tuple(repo_tags),
        removed=image.removed,
        dropped_layers=image.dropped_layers,
    )


@contextlib.contextmanager
def _tar_layer(src: ImageSource, index: int, what: str) -> Iterator[_LayerRead]:
    stream = src.open_layer(index)
    try:
        with tarfile.open(fileobj=stream, mode="r:", encoding="utf-8") as tar:
            yield _read_members(tar, what), tar.extractfile
    except tarfile.TarError as exc:
        raise InputError(f"{what} is not a valid tar: {exc}") from exc
    finally:
        stream.close()


def _open_file(member: tarfile.TarInfo) -> IO[bytes]:
    assert isinstance(member, FileInfo)
    try:
        return open(member.source, "rb")  # closed by _write_layer
    except OSError as exc:  # the image went away, or a file we may not read
        raise NotReadable(f"{member.source}: {exc}") from exc


@contextlib.contextmanager
def _dir_layer(local: LocalImage, index: int, what: str) -> Iterator[_LayerRead]:
    try:
        entries = read_diff_dir(local.diff_dirs[index])
    except OSError as exc:
        raise NotReadable(f"{what}: {exc}") from exc
    yield entries, _open_file


def canonicalize_local(
    local: LocalImage,
    out: Path,
    *,
    epoch: int,
    mtime_policy: MtimePolicy = "clamp",
    drop_paths: Sequence[str] = (),
    cache: LayerCache | None = None,
    plain_dir: Path | None = None,
) -> CanonicalImage:
    """`canonicalize` reading the engine's overlay store instead of a saved archive.

    The same output byte for byte. Raises `NotReadable` (nothing written) when a layer
    that has to be rewritten cannot be read from the store; the caller then saves the
    image and uses `canonicalize`. `plain_dir`: where to keep an uncompressed copy of
    each layer rewritten (not those taken from `cache`), named ``<diff_id hex>.tar``.
    """
    _check_epoch(epoch, mtime_policy)
    out = Path(out)
    raw = parse_config(local.config, local.description)
    with _staged(out) as staging:
        image = _canonicalize_into(
            raw,
            len(local.diff_dirs),
            functools.partial(_dir_layer, local),
            staging,
            description=local.description,
            epoch=epoch,
            repo_tags=(),
            policy=mtime_policy,
            drop_paths=tuple(drop_paths),
            cache=cache,
            plain_dir=plain_dir,
        )
    return dataclasses.replace(image, layout=out)


def _canonicalize_into(
    raw: dict[str, Any],
    count: int,
    read_layer: Callable[[int, str], contextlib.AbstractContextManager[_LayerRead]],
    staging: Path,
    *,
    description: str,
    epoch: int,
    repo_tags: Sequence[str],
    policy: MtimePolicy,
    drop_paths: Sequence[str],
    cache: LayerCache | None = None,
    plain_dir: Path | None = None,
) -> CanonicalImage:
    created_by_in = _layer_created_by(raw, count)
    layout = LayoutWriter(staging)
    lower = _LowerDirs()
    removed: list[str] = []
    layers: list[_LayerOut] = []
    created_by: list[str | None] = []
    dropped: list[int] = []
    engine_ids = _engine_diff_ids(raw, count) if cache is not None else None
    keys = (
        layer_keys(engine_ids, epoch=epoch, policy=policy, drop_paths=drop_paths)
        if engine_ids is not None
        else []
    )
    reused: CachedLayer | None = None
    for i in range(count):
        what = f"{description} layer {i}"
        if cache is not None and keys and (i == 0 or reused is not None):
            hit = cache.get(keys[i])
            if hit is not None:
                removed.extend(hit.removed)
                if hit.digest is None:
                    dropped.append(i)
                else:
                    kept = layout.blobs / digest_hex(hit.digest)
                    if not kept.exists():  # content-addressed: one there is the same
                        link_over(cache.blob(hit.digest), kept)
                    layers.append(_LayerOut(hit.digest, hit.diff_id, hit.size))
                    created_by.append(created_by_in[i])
                reused = hit
                continue
            if reused is not None:  # the first layer to rewrite: restore what lies below
                lower = _LowerDirs.from_json(reused.lower)
                reused = None
        layer_removed = len(removed)
        with read_layer(i, what) as (entries, open_data):
            records = _plan_layer(
                entries,
                index=i,
                lower=lower,
                what=what,
                removed=removed,
                drop_paths=drop_paths,
            )
            out: _LayerOut | None = None
            if records:
                out = _write_layer(
                    layout, records, open_data, epoch=epoch, policy=policy, plain_dir=plain_dir
                )
                layers.append(out)
                created_by.append(created_by_in[i])
            else:
                dropped.append(i)
        lower.apply(records, drop_paths)
        if cache is not None and keys:
            entry = CachedLayer(
                digest=out.digest if out else None,
                diff_id=out.diff_id if out else "",
                size=out.size if out else 0,
                removed=tuple(removed[layer_removed:]),
                lower=lower.to_json(),
            )
            blob = layout.blobs / digest_hex(out.digest) if out else None
            cache.put(keys[i], entry, blob)
    if not layers:  # an image has at least one layer
        layers.append(_write_layer(layout, [], None, epoch=epoch, policy=policy))
        created_by.append(None)
    diff_ids = [layer.diff_id for layer in layers]
    config = canonical_config(
        raw, diff_ids=diff_ids, created_by=created_by, epoch=epoch, what=description
    )
    config_desc = layout.add_bytes(MEDIA_OCI_CONFIG, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [Descriptor(MEDIA_OCI_LAYER_GZIP, x.digest, x.size).to_json() for x in layers],
    }
    manifest_desc = layout.add_bytes(MEDIA_OCI_MANIFEST, canonical_json(manifest))
    layout.write_index(manifest_desc, repo_tags)
    return CanonicalImage(
        manifest_digest=manifest_desc.digest,
        config_digest=config_desc.digest,
        layer_digests=tuple(x.digest for x in layers),
        diff_ids=tuple(diff_ids),
        layer_sizes=tuple(x.size for x in layers),
        layout=staging,
        archive=None,
        repo_tags=tuple(repo_tags),
        removed=tuple(removed),
        dropped_layers=tuple(dropped),
    )


# --------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class _Facts:
    kind: str
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    sha256: str
    link: str
    device: tuple[int, int]
    xattrs: tuple[tuple[str, str], ...]


_KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.DIRTYPE: "directory",
    tarfile.SYMTYPE: "symlink",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
}


def _index_layer(src: ImageSource, i: int) -> dict[str, _Facts]:
    what = f"{src.description} layer {i}"
    facts: dict[str, _Facts] = {}
    stream = src.open_layer(i)
    try:
        with tarfile.open(fileobj=stream, mode="r:", encoding="utf-8") as tar:
            for path, m in _read_members(tar, what).items():
                digest = ""
                if m.isreg():
                    h = hashlib.sha256()
                    f = tar.extractfile(m)
                    assert f is not None
                    with f:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    digest = h.hexdigest()
                facts[path] = _Facts(
                    kind=_KINDS[_type_of(m)],
                    mode=m.mode & 0o7777,
                    uid=m.uid,
                    gid=m.gid,
                    mtime=int(m.mtime),
                    size=m.size if m.isreg() else 0,
                    sha256=digest,
                    link=m.linkname if (m.issym() or m.islnk()) else "",
                    device=(m.devmajor, m.devminor) if (m.ischr() or m.isblk()) else (0, 0),
                    xattrs=tuple(_xattrs(m).items()),
                )
    except tarfile.TarError as exc:
        raise InputError(f"{what} is not a valid tar: {exc}") from exc
    finally:
        stream.close()
    return facts


def _describe(f: _Facts) -> str:
    if f.kind == "file":
        return f"file, {f.size} bytes"
    if f.link:
        return f"{f.kind} -> {f.link}"
    return f.kind


def _facts_diff(a: _Facts, b: _Facts) -> list[str]:
    out: list[str] = []
    if a.kind != b.kind:
        out.append(f"type {_describe(a)} != {_describe(b)}")
    elif a.sha256 != b.sha256:
        out.append(f"content {a.sha256[:12]} ({a.size} bytes) != {b.sha256[:12]} ({b.size} bytes)")
    if a.mode != b.mode:
        out.append(f"mode {a.mode:04o} != {b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        out.append(f"owner {a.uid}:{a.gid} != {b.uid}:{b.gid}")
    if a.mtime != b.mtime:
        out.append(f"mtime {_iso(a.mtime)} != {_iso(b.mtime)}")
    if a.kind == b.kind and a.link != b.link:
        out.append(f"link target {a.link!r} != {b.link!r}")
    if a.device != b.device:
        out.append(f"device {a.device[0]},{a.device[1]} != {b.device[0]},{b.device[1]}")
    if a.xattrs != b.xattrs:
        out.append(f"xattrs {dict(a.xattrs)} != {dict(b.xattrs)}")
    return out


def _iso(t: int) -> str:
    try:
        return rfc3339(t)
    except (OverflowError, OSError, ValueError):
        return str(t)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not obj and prefix:
            out[prefix] = obj
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = obj
    return out


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    fa = {k: v for k, v in _flatten(a).items() if not k.startswith("rootfs.diff_ids")}
    fb = {k: v for k, v in _flatten(b).items() if not k.startswith("rootfs.diff_ids")}
    lines: list[str] = []
    for key in sorted(fa.keys() | fb.keys()):
        if key not in fb:
            lines.append(f"config: {key}: only in a ({_short(fa[key])})")
        elif key not in fa:
            lines.append(f"config: {key}: only in b ({_short(fb[key])})")
        elif fa[key] != fb[key]:
            lines.append(f"config: {key}: {_short(fa[key])} != {_short(fb[key])}")
    return lines


def _diff_ids(cfg: Mapping[str, Any]) -> list[str]:
    rootfs = cfg.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    return [str(x) for x in ids] if isinstance(ids, list) else []


def diff_archives(a: Path, b: Path, *, max_per_layer: int = 100) -> list[str]:
    """Explain how two images differ, one human-readable line per difference.

    `a` and `b` can each be anything `canonicalize` reads (docker-archive, OCI
    archive, OCI layout directory). Reports config fields (dotted paths, e.g.
    ``config.config.Env``), layer counts, and per differing layer the files
    added, removed, or changed in content, type, mode, owner, mtime, link target,
    device numbers or xattrs (at most `max_per_layer` lines per layer). An empty
    list means the images are identical in content and metadata.
    """
    with contextlib.ExitStack() as stack:
        sa = stack.enter_context(open_image(Path(a)))
        sb = stack.enter_context(open_image(Path(b)))
        if sa.manifest is not None and sa.manifest == sb.manifest:
            return []
        ca, cb = sa.config_json(), sb.config_json()
        lines = [] if sa.config == sb.config else _config_diff(ca, cb)
        na, nb = len(sa.layer_names), len(sb.layer_names)
        if na != nb:
            lines.append(f"layers: a has {na}, b has {nb}")
        ida, idb = _diff_ids(ca), _diff_ids(cb)
        for i in range(max(na, nb)):
            if i >= na or i >= nb:
                side, src = ("b", sb) if i >= na else ("a", sa)
                entries = len(_index_layer(src, i))
                lines.append(f"layer {i}: only in {side} ({entries} entries)")
                continue
            same_ids = i < len(ida) and i < len(idb) and ida[i] == idb[i]
            if same_ids:
                da, db = sa.layer_digests[i], sb.layer_digests[i]
                if da is not None and db is not None and da != db:
                    lines.append(f"layer {i}: same content, different compression ({da} != {db})")
                continue
            lines.extend(_layer_diff(i, _index_layer(sa, i), _index_layer(sb, i), max_per_layer))
    return lines


def _layer_diff(i: int, fa: dict[str, _Facts], fb: dict[str, _Facts], limit: int) -> list[str]:
    found: list[str] = []
    for path in sorted(fa.keys() | fb.keys(), key=_sort_key):
        if path not in fb:
            found.append(f"layer {i}: {path}: only in a ({_describe(fa[path])})")
        elif path not in fa:
            found.append(f"layer {i}: {path}: only in b ({_describe(fb[path])})")
        else:
            what = _facts_diff(fa[path], fb[path])
            if what:
                found.append(f"layer {i}: {path}: {'; '.join(what)}")
    if not found:
        return [f"layer {i}: same files, different tar bytes (entry order or header encoding)"]
    if len(found) > limit:
        extra = len(found) - limit
        found = [*found[:limit], f"layer {i}: ... and {extra} more differences"]
    return found
