"""Read an image's layers straight from the engine's overlay store, without a save.

`docker save` / `podman save` make the engine tar every layer of an image again
(about 4 s for the example's 430 MB, even when imagesmith needs one layer of it). On
the machine where the engine runs, as root, each layer already lies unpacked in an
overlay "diff" directory, and the image config in a file whose sha256 is the image ID.
`LocalImage` names both; `read_diff_dir` turns one diff directory into the tar entries
the engine's own export would hold, converting overlayfs's whiteouts (0/0 character
devices) and opaque directories (the ``overlay.opaque`` xattr) to the OCI spelling
(``.wh.NAME``, ``.wh..wh..opq``) as both engines do.

Only the engines' *native* overlay diff is read that way: a store that uses
``metacopy`` or ``redirect_dir`` (a file's data or a renamed directory's content kept
in a lower layer) cannot be read layer by layer, and `read_diff_dir` raises
`NotReadable` when it meets one; callers then fall back to the engine's save. The
canonical form does not depend on which way a layer was read (tested on both engines).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileInfo", "LocalImage", "NotReadable", "local_image", "read_diff_dir"]

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
#: A store using these keeps part of a layer elsewhere: not readable from its diff alone.
_UNREADABLE_XATTRS = (
    "trusted.overlay.redirect",
    "trusted.overlay.metacopy",
    "user.overlay.redirect",
    "user.overlay.metacopy",
)


class NotReadable(Exception):
    """This image or layer cannot be read from the overlay store; use the engine's save."""


@dataclass(frozen=True)
class LocalImage:
    """An image whose config and layers this process can read from the engine's store."""

    image_id: str
    config: bytes
    """The config blob; its sha256 is `image_id` (checked)."""
    diff_dirs: tuple[Path, ...]
    """One overlay diff directory per layer, bottom layer first."""
    description: str


def local_image(
    image_id: str,
    *,
    config_file: Path,
    upper_dir: str,
    lower_dirs: str,
    layer_count: int,
    description: str,
) -> LocalImage | None:
    """A `LocalImage` from what an engine's inspect reports, or None when anything is off.

    `upper_dir` is the top layer's diff directory, `lower_dirs` the ``:``-separated
    ones below it, nearest first (overlayfs's lowerdir order, as both engines report
    them). The config file must hash to `image_id` and there must be one directory
    per layer of the config.
    """
    try:
        config = config_file.read_bytes()
    except OSError:
        return None
    if "sha256:" + hashlib.sha256(config).hexdigest() != image_id:
        return None
    dirs = [upper_dir, *(d for d in lower_dirs.split(":") if d)] if upper_dir else []
    if not dirs or len(dirs) != layer_count:
        return None
    paths = tuple(Path(d) for d in reversed(dirs))
    if not all(os.access(p, os.R_OK | os.X_OK) and p.is_dir() for p in paths):
        return None
    return LocalImage(image_id=image_id, config=config, diff_dirs=paths, description=description)


class FileInfo(tarfile.TarInfo):
    """A tar entry made from a file in a diff directory; `source` is that file."""

    __slots__ = ("source",)

    def __init__(self, name: str = "", source: str = "") -> None:
        super().__init__(name)
        self.source = source


def _whiteout(path: str) -> FileInfo:
    info = FileInfo(path)
    info.type = tarfile.REGTYPE
    info.mode = 0o600
    return info


def _xattrs(path: str) -> tuple[dict[str, str], bool]:
    """The xattrs engines export (``security.capability``, ``user.*``) and the opaque flag."""
    kept: dict[str, str] = {}
    opaque = False
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return kept, False
    for name in names:
        if name.startswith(_UNREADABLE_XATTRS):
            raise NotReadable(f"{path} has {name}: the store keeps this layer partly elsewhere")
        if name in _OPAQUE_XATTRS:
            value = os.getxattr(path, name, follow_symlinks=False)
            opaque = opaque or value == b"y"
        elif name == "security.capability" or (
            name.startswith("user.") and not name.startswith("user.overlay.")
        ):
            value = os.getxattr(path, name, follow_symlinks=False)
            kept["SCHILY.xattr." + name] = value.decode("utf-8", "surrogateescape")
    return kept, opaque


def read_diff_dir(root: Path) -> dict[str, tarfile.TarInfo]:
    """The entries of the layer whose overlay diff directory is `root`, by path.

    Paths are relative, without ``./``; regular files are `FileInfo` whose ``source``
    holds the content; a hard-link group's first member (in walk order) is the regular
    file, the others link to it, as engines export them. Sockets are left out, as
    engines do. Raises NotReadable for a store this cannot read, OSError when a file
    cannot be read.
    """
    entries: dict[str, tarfile.TarInfo] = {}
    inodes: dict[tuple[int, int], str] = {}
    _walk(os.fspath(root), "", entries, inodes)
    return entries


def _walk(
    abs_dir: str,
    rel_dir: str,
    entries: dict[str, tarfile.TarInfo],
    inodes: dict[tuple[int, int], str],
) -> None:
    # Depth first in name order, as the engines walk a layer (Go's filepath.Walk): the
    # first path of a hard-link group is then the one they would have exported as a file.
    with os.scandir(abs_dir) as listing:
        found = sorted(listing, key=lambda d: d.name)
    for entry in found:
        path = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISCHR(mode) and st.st_rdev == 0:
            name = f"{rel_dir}/.wh.{entry.name}" if rel_dir else f".wh.{entry.name}"
            entries[name] = _whiteout(name)
            continue
        if stat.S_ISSOCK(mode):
            continue
        xattrs, opaque = _xattrs(entry.path)
        info = FileInfo(path, entry.path)
        info.mode = mode & 0o7777
        info.uid = st.st_uid
        info.gid = st.st_gid
        info.mtime = int(st.st_mtime)
        info.pax_headers = xattrs
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(mode) and st.st_nlink > 1 and key in inodes:
            info.type = tarfile.LNKTYPE
            info.linkname = inodes[key]
            entries[path] = info
            continue
        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
            entries[path] = info
            if opaque:
                marker = f"{path}/.wh..wh..opq"
                entries[marker] = _whiteout(marker)
            _walk(entry.path, path, entries, inodes)
            continue
        if stat.S_ISREG(mode):
            info.type = tarfile.REGTYPE
            info.size = st.st_size
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(entry.path)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor = os.major(st.st_rdev)
            info.devminor = os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            raise NotReadable(f"{entry.path}: unsupported file type {oct(mode)}")
        if st.st_nlink > 1:
            inodes[key] = path
        entries[path] = info
