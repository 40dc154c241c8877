"""Canonical layers already written, kept on disk and found again by the engine layers
they came from (`LayerCache`, `layer_keys`)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith import __version__
from imagesmith.cache.integrity import CorruptEntry, check_file, link_over, write_bytes_durably
from imagesmith.image.layer_writer import GZIP_LEVEL, MtimePolicy
from imagesmith.image.oci import canonical_json, digest_hex


@dataclass(frozen=True)
class CachedLayer:
    """What `LayerCache` remembers of one canonical layer."""

    digest: str | None  # None: the cleaning left the layer empty and it was dropped
    diff_id: str
    size: int
    removed: tuple[str, ...]
    lower: Mapping[str, Any]  # what this layer and those below leave (LowerDirs)


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


def engine_diff_ids(raw: Mapping[str, Any], count: int) -> list[str] | None:
    """The engine config's diff_ids when they are `count` sha256 digests, else None."""
    rootfs = raw.get("rootfs")
    ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(ids, list) or len(ids) != count:
        return None
    if not all(isinstance(d, str) and _DIGEST.fullmatch(d) for d in ids):
        return None
    return ids
