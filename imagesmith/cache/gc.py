"""Keep imagesmith's cache within a size budget.

Every build that rewrites an image keeps its canonical OCI layout (`push` sends those
blobs, `verify` compares against them) and its rewritten layers (`LayerCache`). Left
alone, that grows by one compressed image per changed build. After each rewrite the
least recently used layouts and layer entries go, oldest first, until the blobs take
at most `IMAGESMITH_CACHE_MAX` (default 10G). Whatever the current build made or used
stays, even over budget. An evicted image is rebuilt to the same digest by the next
`build`; `push` and `verify` say so when they miss one. Wheels and .debs are not counted:
they are small next to images, cost network to fetch again, and a .deb Debian has
replaced may be fetched from nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from imagesmith.errors import InputError

ENV_VAR = "IMAGESMITH_CACHE_MAX"
DEFAULT_BUDGET = 10 * 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE)


def cache_budget() -> int:
    """The budget in bytes: `IMAGESMITH_CACHE_MAX` (``10G``, ``500M``, bytes) or 10 GiB."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_BUDGET
    match = _SIZE.fullmatch(text)
    if match is None:
        raise InputError(
            f"{ENV_VAR}={text!r} is not a size; use a number of bytes or e.g. 500M, 10G"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def touch(path: Path) -> None:
    """Mark a cache entry as used now (eviction goes by modification time)."""
    with contextlib.suppress(OSError):
        os.utime(path)


@dataclass
class _Item:
    mtime: float
    path: Path
    blobs: list[Path]


def _layouts(images: Path) -> list[_Item]:
    items = []
    for entry in images.iterdir() if images.is_dir() else []:
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # staging folders of builds in progress
        try:
            items.append(_Item(entry.stat().st_mtime, entry, []))
        except OSError:  # removed meanwhile by another build's pruning
            continue
    return items


def _layer_entries(layers: Path) -> tuple[list[_Item], dict[Path, int]]:
    items: list[_Item] = []
    refs: dict[Path, int] = {}
    for entry in layers.glob("*.json") if layers.is_dir() else []:
        try:
            digest = json.loads(entry.read_text(encoding="utf-8"))["digest"]
            st = entry.stat()
        except (OSError, ValueError, KeyError, TypeError):
            digest, st = None, None
        blobs = []
        if isinstance(digest, str) and digest.startswith("sha256:"):
            blob = layers / "blobs" / digest.removeprefix("sha256:")
            blobs.append(blob)
            refs[blob] = refs.get(blob, 0) + 1
        items.append(_Item(st.st_mtime if st else 0.0, entry, blobs))
    return items, refs


def _files(folder: Path) -> list[Path]:
    return [Path(root, name) for root, _, names in os.walk(folder) for name in names]


def _usage(*folders: Path) -> int:
    """Bytes the files under `folders` take, each hard-linked file once."""
    seen: dict[tuple[int, int], int] = {}
    for path in (path for folder in folders for path in _files(folder)):
        try:
            st = path.stat()
        except OSError:
            continue
        seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def _unlink(path: Path) -> int:
    """Remove one file; the bytes this frees (0 while other hard links remain)."""
    try:
        st = path.stat()
        path.unlink()
    except OSError:
        return 0
    return st.st_size if st.st_nlink == 1 else 0


def prune(root: Path, *, budget: int, keep_newer_than: float) -> list[Path]:
    """Evict least recently used layouts and layer entries under `root` (the imagesmith
    cache folder) until its image blobs take at most `budget` bytes; nothing modified at
    or after `keep_newer_than` goes. Returns what was removed, oldest first."""
    images, layers = root / "images", root / "layers"
    for trash in images.glob(".removing-*") if images.is_dir() else []:
        shutil.rmtree(trash, ignore_errors=True)  # left by a prune that was killed
    total = _usage(images, layers / "blobs")
    if total <= budget:
        return []
    entries, refs = _layer_entries(layers)
    candidates = sorted(
        (item for item in [*_layouts(images), *entries] if item.mtime < keep_newer_than),
        key=lambda item: (item.mtime, str(item.path)),
    )
    removed: list[Path] = []
    for item in candidates:
        if total <= budget:
            break
        if item.path.is_dir():
            # Out of sight first (a dot name, skipped by builds and pruning), so that a
            # prune killed half-way never leaves a layout with an index but no blobs.
            trash = item.path.with_name(f".removing-{item.path.name}-{os.getpid()}")
            try:
                item.path.rename(trash)
            except OSError:  # removed meanwhile by another build's pruning
                continue
            total -= sum(_unlink(path) for path in _files(trash))
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _unlink(item.path)
            for blob in item.blobs:
                refs[blob] -= 1
                if refs[blob] == 0:
                    total -= _unlink(blob)
        removed.append(item.path)
    return removed
