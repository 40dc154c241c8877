"""A layer tar's entries as the canonical rewrite reads them: one entry per path (the last
wins, as on extraction), their type, and their extended attributes less the host-specific
ones."""

from __future__ import annotations

import tarfile

from imagesmith.errors import InputError
from imagesmith.image.paths import clean_path

_XATTR = "SCHILY.xattr."
_DROPPED_XATTRS = ("security.selinux", "trusted.overlay.")


def kept_xattrs(member: tarfile.TarInfo) -> dict[str, str]:
    """The entry's extended attributes as PAX headers, sorted, less the host-specific ones."""
    out: dict[str, str] = {}
    for key in sorted(member.pax_headers):
        if not key.startswith(_XATTR):
            continue
        attr = key[len(_XATTR) :]
        if attr.startswith(_DROPPED_XATTRS):
            continue
        out[key] = member.pax_headers[key]
    return out


DirMeta = tuple[int, int, int, tuple[tuple[str, str], ...]]
"""A directory's mode bits, uid, gid and kept xattrs: what must match for it to be unchanged."""


def dir_meta(member: tarfile.TarInfo) -> DirMeta:
    return (member.mode & 0o7777, member.uid, member.gid, tuple(kept_xattrs(member).items()))


def read_entries(tar: tarfile.TarFile, what: str) -> dict[str, tarfile.TarInfo]:
    """The layer's entries by cleaned path, in tar order; InputError for an unsafe path or
    an entry type a layer cannot hold."""
    entries: dict[str, tarfile.TarInfo] = {}
    for member in tar:
        path = clean_path(member.name, what)
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


def entry_type(m: tarfile.TarInfo) -> bytes:
    """The tar type byte of `m`, GNU and other variants folded into the POSIX ones."""
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
