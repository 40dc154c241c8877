"""After the engine builds: make the image canonical and load that form back in.

The canonical OCI layout is kept under the cache (by manifest digest) so that `push`
can send exactly those blobs and `verify` can compare against them. A map from the
engine's image ID to the canonical one makes a no-op rebuild skip the rewrite, and a
`LayerCache` keeps each rewritten layer, so that a new build only rewrites the layers
the engine made anew (a Python pin change: the venv layer, not the base or apt ones).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imagesmith.cachegc import ENV_VAR, cache_budget, prune, touch
from imagesmith.canonical import VOLATILE_PATHS, LayerCache, canonicalize
from imagesmith.context import cache_dir
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError
from imagesmith.oci import write_docker_archive

LineCallback = Callable[[str], None]


@dataclass(frozen=True)
class Canonical:
    image_id: str
    digest: str
    layout: Path
    built_id: str = ""
    """The engine's own image, before the rewrite (the top of its build cache)."""


def _images_dir() -> Path:
    return cache_dir() / "images"


def layout_dir(digest: str) -> Path:
    return _images_dir() / digest.removeprefix("sha256:")


def _memo_path(engine: Engine, built_id: str, epoch: int) -> Path:
    return (
        cache_dir() / "canonical" / engine.name / f"{built_id.removeprefix('sha256:')}-{epoch}.json"
    )


def make_canonical(
    engine: Engine,
    built_id: str,
    *,
    epoch: int,
    workdir: Path,
    on_line: LineCallback = lambda _: None,
) -> Canonical:
    memo = _memo_path(engine, built_id, epoch)
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
        layout = layout_dir(known["digest"])
        if engine.image_exists(known["image_id"]) and (layout / "index.json").exists():
            touch(layout)
            return Canonical(
                image_id=known["image_id"], digest=known["digest"], layout=layout, built_id=built_id
            )
    except (OSError, ValueError, KeyError):
        pass
    started = time.time()
    on_line("canonical: rewriting layers and config so the digest depends on the lock alone")
    archive = workdir / "built.tar"
    engine.save(built_id, archive)
    images = _images_dir()
    images.mkdir(parents=True, exist_ok=True)
    # Staged beside its final place: blobs hard-link to and from the layer cache, and the
    # layout moves in with a rename.
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=images)) / "layout"
    try:
        image = canonicalize(
            archive,
            staging,
            epoch=epoch,
            drop_paths=VOLATILE_PATHS,
            cache=LayerCache(cache_dir() / "layers"),
            write_archive=False,
        )
        archive.unlink()
        load_archive = write_docker_archive(
            staging, workdir / "canonical.tar", compressed=engine.load_compressed
        )
        loaded = engine.load(load_archive)
        if loaded != image.config_digest:
            raise EngineError(
                f"{engine.name} loaded the canonical image as {loaded}, "
                f"expected {image.config_digest}"
            )
        load_archive.unlink()
        layout = layout_dir(image.manifest_digest)
        if not (layout / "index.json").exists():
            shutil.rmtree(layout, ignore_errors=True)
            try:
                staging.rename(layout)
            except OSError:
                if not (layout / "index.json").exists():
                    raise
                # another build of the same image got there first: the same bytes
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)
    touch(layout)
    budget = cache_budget()
    removed = prune(cache_dir(), budget=budget, keep_newer_than=started - 1)
    if removed:
        on_line(
            f"cache: removed the {len(removed)} least recently used images and layers from "
            f"{cache_dir()} to stay within {ENV_VAR}={budget / 2**30:.1f}G"
        )
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(
        json.dumps({"image_id": loaded, "digest": image.manifest_digest}), encoding="utf-8"
    )
    return Canonical(
        image_id=loaded, digest=image.manifest_digest, layout=layout, built_id=built_id
    )
