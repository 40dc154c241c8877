"""What a canonical layer holds: the engine's entries less its noise (opaque markers that
hide nothing, mount-point placeholders, directories only their mtime changed, `drop_paths`),
hard-link groups re-elected in sorted order, and what the layers below leave
(`LowerDirs`), against which the next layer is judged. See docs/canonical.md."""

from __future__ import annotations

import fnmatch
import posixpath
import tarfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from imagesmith.errors import InputError
from imagesmith.image.paths import (
    MOUNTPOINT_DIRS,
    OPAQUE,
    PLACEHOLDER_FILES,
    WHITEOUT,
    ancestors,
    clean_path,
    is_whiteout,
    path_matcher,
    sort_key,
)
from imagesmith.image.tar_entries import DirMeta, dir_meta, entry_type


class LowerDirs:
    """Directories the layers below the current one leave in the root filesystem.

    Maps each path to its metadata, or to None for a directory that only exists
    implicitly (as the parent of an entry, with no entry of its own).
    """

    def __init__(self) -> None:
        self.dirs: dict[str, DirMeta | None] = {}
        self.dropped_kept: set[str] = set()
        """Other entries below that match ``drop_paths`` (the first layer's, link targets)."""

    def get(self, path: str) -> DirMeta | None:
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
    def from_json(cls, data: Mapping[str, Any]) -> LowerDirs:
        lower = cls()
        for path, m in data["dirs"].items():
            lower.dirs[path] = (
                None if m is None else (m[0], m[1], m[2], tuple((k, v) for k, v in m[3]))
            )
        lower.dropped_kept = set(data["dropped_kept"])
        return lower

    def apply(self, records: Sequence[Record], drop_paths: Sequence[str] = ()) -> None:
        gone: set[str] = set()  # path and everything under it
        emptied: set[str] = set()  # everything under it
        new_dirs: dict[str, DirMeta | None] = {}
        for rec in records:
            base = posixpath.basename(rec.path)
            parent = posixpath.dirname(rec.path)
            for ancestor in ancestors(rec.path):
                if ancestor in new_dirs:
                    break
                new_dirs[ancestor] = None
            if base == OPAQUE:
                emptied.add(parent)
            elif base.startswith(WHITEOUT):
                gone.add(posixpath.join(parent, base[len(WHITEOUT) :]))
            elif rec.meta.isdir():
                new_dirs[rec.path] = dir_meta(rec.meta)
            else:
                gone.add(rec.path)
        if gone or emptied:
            for path in list(self.dirs):
                if path in gone or any(a in gone or a in emptied for a in ancestors(path)):
                    del self.dirs[path]
            for path in list(self.dropped_kept):
                if path in gone or any(a in gone or a in emptied for a in ancestors(path)):
                    self.dropped_kept.discard(path)
        if drop_paths:
            match = path_matcher(tuple(drop_paths))
            self.dropped_kept.update(
                r.path
                for r in records
                if not r.meta.isdir() and not is_whiteout(r.path) and match(r.path)
            )
        for path, meta in new_dirs.items():
            if meta is not None or path not in self.dirs:
                self.dirs[path] = meta


@dataclass
class Record:
    """One entry of a canonical layer."""

    path: str
    meta: tarfile.TarInfo  # metadata source
    data: tarfile.TarInfo | None  # where the content comes from (regular files)
    type: bytes
    linkname: str


def plan_layer(
    entries: dict[str, tarfile.TarInfo],
    *,
    index: int,
    lower: LowerDirs,
    what: str,
    removed: list[str],
    drop_paths: Sequence[str] = (),
) -> list[Record]:
    """Decide what the canonical layer holds; `entries` is consumed.

    What the cleaning leaves out is appended to `removed`, one ``"layer N: path
    (reason)"`` line each."""
    link_targets = {
        clean_path(m.linkname, what) for m in entries.values() if m.islnk() and m.linkname
    }
    removal = _Removal(entries, index, removed)
    _drop_opaque_markers_on_new_dirs(removal, lower)
    if drop_paths and index > 0:
        _drop_matching_paths(removal, drop_paths, link_targets)
        _drop_whiteouts_hiding_nothing(removal, lower, drop_paths)
    if index > 0:
        _drop_placeholders(removal, link_targets)
        _drop_unchanged_dirs(removal, lower)
    return _records(entries, what)


@dataclass
class _Removal:
    """Takes entries out of one layer, saying why in `removed`."""

    entries: dict[str, tarfile.TarInfo]
    index: int
    removed: list[str]

    def drop(self, path: str, reason: str, *, shown_as: str | None = None) -> None:
        del self.entries[path]
        self.removed.append(f"layer {self.index}: {shown_as or path} ({reason})")


def _drop_opaque_markers_on_new_dirs(removal: _Removal, lower: LowerDirs) -> None:
    """An opaque marker on a directory no lower layer has hides nothing."""
    for path in [p for p in removal.entries if posixpath.basename(p) == OPAQUE]:
        if not lower.exists(posixpath.dirname(path)):
            removal.drop(path, "opaque marker on a directory new in this layer")


def _drop_matching_paths(
    removal: _Removal, drop_paths: Sequence[str], link_targets: set[str | None]
) -> None:
    """Entries matching `drop_paths`, but not whiteouts nor hard-link targets."""
    entries = removal.entries
    for path in [p for p in entries if not is_whiteout(p) and p not in link_targets]:
        if any(fnmatch.fnmatchcase(path, pat) for pat in drop_paths):
            removal.drop(path, "matches drop_paths")


def _drop_whiteouts_hiding_nothing(
    removal: _Removal, lower: LowerDirs, drop_paths: Sequence[str]
) -> None:
    """A whiteout of a path matching `drop_paths` that no layer below leaves."""
    match = path_matcher(tuple(drop_paths))
    entries = removal.entries
    for path in [p for p in entries if is_whiteout(p) and posixpath.basename(p) != OPAQUE]:
        hidden = posixpath.join(posixpath.dirname(path), posixpath.basename(path)[len(WHITEOUT) :])
        if match(hidden) and not lower.holds(hidden):
            removal.drop(path, "whiteout of a dropped path: hides nothing")


def _drop_placeholders(removal: _Removal, link_targets: set[str | None]) -> None:
    """The empty files the runtime bind-mounts over."""
    for path in sorted(PLACEHOLDER_FILES):
        m = removal.entries.get(path)
        if m is not None and m.isreg() and m.size == 0 and path not in link_targets:
            removal.drop(path, "empty mount-point placeholder")


def _drop_unchanged_dirs(removal: _Removal, lower: LowerDirs) -> None:
    """Directories with nothing under them in the layer that are runtime mount points or
    equal the lower layers' directory but for their mtime."""
    entries = removal.entries
    children: Counter[str] = Counter(posixpath.dirname(p) for p in entries)
    dirs = sorted((p for p, m in entries.items() if m.isdir()), key=sort_key, reverse=True)
    for path in dirs:  # deepest first, so emptied parents are seen after their children
        if children[path]:
            continue
        reason = ""
        if path in MOUNTPOINT_DIRS:
            reason = "runtime mount-point directory"
        elif lower.get(path) == dir_meta(entries[path]):
            reason = "directory unchanged but for its mtime"
        if reason:
            removal.drop(path, reason, shown_as=f"{path}/")
            children[posixpath.dirname(path)] -= 1


def _records(entries: dict[str, tarfile.TarInfo], what: str) -> list[Record]:
    """The layer's records in sorted order, hard-link groups re-elected in that order."""
    records: dict[str, Record] = {}
    groups = _link_groups(entries, what, records)
    for root, members in groups.items():
        ordered = sorted(set(members), key=sort_key)
        holder = ordered[0]
        src = entries[root]
        records[holder] = Record(
            holder, src, src if src.isreg() else None, entry_type(src), src.linkname
        )
        for path in ordered[1:]:
            records[path] = Record(path, src, None, tarfile.LNKTYPE, holder)
    for path, m in entries.items():
        if path in records or m.islnk():
            continue
        records[path] = Record(path, m, m if m.isreg() else None, entry_type(m), m.linkname)
    return sorted(records.values(), key=lambda r: sort_key(r.path))


def _link_groups(
    entries: dict[str, tarfile.TarInfo], what: str, records: dict[str, Record]
) -> dict[str, list[str]]:
    """Group every hard link with the entry it finally points at (the group's first
    path); a link pointing outside this layer goes into `records` as the engine wrote it."""
    groups: dict[str, list[str]] = {}
    for path, m in entries.items():
        if not m.islnk():
            continue
        target = clean_path(m.linkname, what)
        seen = {path}
        while target is not None and target in entries and entries[target].islnk():
            if target in seen:
                raise InputError(f"{what}: hard-link loop at {path}")
            seen.add(target)
            target = clean_path(entries[target].linkname, what)
        if target is None or target not in entries or entries[target].isdir():
            # points outside this layer: keep it as the engine wrote it
            records[path] = Record(path, m, None, tarfile.LNKTYPE, target or m.linkname)
            continue
        groups.setdefault(target, [target]).append(path)
    return groups
