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
    """Decide what the canonical layer holds; `entries` is consumed."""
    link_targets = {
        clean_path(m.linkname, what) for m in entries.values() if m.islnk() and m.linkname
    }
    for path in [p for p in entries if posixpath.basename(p) == OPAQUE]:
        parent = posixpath.dirname(path)
        if not lower.exists(parent):
            del entries[path]
            removed.append(
                f"layer {index}: {path} (opaque marker on a directory new in this layer)"
            )
    if drop_paths and index > 0:
        for path in [p for p in entries if not is_whiteout(p) and p not in link_targets]:
            if any(fnmatch.fnmatchcase(path, pat) for pat in drop_paths):
                del entries[path]
                removed.append(f"layer {index}: {path} (matches drop_paths)")
        match = path_matcher(tuple(drop_paths))
        for path in [p for p in entries if is_whiteout(p) and posixpath.basename(p) != OPAQUE]:
            hidden = posixpath.join(
                posixpath.dirname(path), posixpath.basename(path)[len(WHITEOUT) :]
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
        dirs = sorted((p for p, m in entries.items() if m.isdir()), key=sort_key, reverse=True)
        for path in dirs:  # deepest first, so emptied parents are seen after their children
            if children[path]:
                continue
            m = entries[path]
            reason = ""
            if path in MOUNTPOINT_DIRS:
                reason = "runtime mount-point directory"
            elif lower.get(path) == dir_meta(m):
                reason = "directory unchanged but for its mtime"
            if reason:
                del entries[path]
                children[posixpath.dirname(path)] -= 1
                removed.append(f"layer {index}: {path}/ ({reason})")

    # Hard links: group every link with the entry it finally points at.
    records: dict[str, Record] = {}
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
