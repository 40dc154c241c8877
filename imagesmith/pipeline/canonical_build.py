"""After the engine builds: make the image canonical and load that form back in.

The canonical OCI layout is kept under the cache (by manifest digest) so that `push`
can send exactly those blobs and `verify` can compare against them. A map from the
engine's image ID to the canonical one makes a no-op rebuild skip the rewrite, and a
`LayerCache` keeps each rewritten layer, so that a new build only rewrites the layers
the engine made anew (a Python pin change: the venv layer, not the base or apt ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from imagesmith.cache.gc import ENV_VAR, cache_budget, prune, touch
from imagesmith.cache.integrity import fsync_dir, link_over, write_bytes_durably
from imagesmith.cache.scratch import make_scratch, release
from imagesmith.engine.base import Engine
from imagesmith.engine.events import BuildEvent, StageStarted, StepImage
from imagesmith.engine.overlay import NotReadable
from imagesmith.errors import EngineError
from imagesmith.image.canonical import CanonicalImage, canonicalize, canonicalize_local
from imagesmith.image.docker_archive import write_docker_archive
from imagesmith.image.layer_cache import LayerCache
from imagesmith.image.paths import VOLATILE_PATHS
from imagesmith.inputs.context import cache_dir
from imagesmith.inputs.context import layout_dir as layout_dir  # where callers have found it
from imagesmith.progress import LineCallback
from imagesmith.render.containerfile import APT_DROP_PATHS

#: Left out of every layer above the base: apt's run-dependent files, and the .debs the
#: system stage copies in and removes (their layer drops out, and so does the whiteout).
DROP_PATHS = (*VOLATILE_PATHS, *APT_DROP_PATHS)


@dataclass(frozen=True)
class Canonical:
    image_id: str
    digest: str
    layout: Path
    built_id: str = ""
    """The engine's own image, before the rewrite (the top of its build cache)."""


def _images_dir() -> Path:
    return cache_dir() / "images"


def _memo_path(engine: Engine, built_id: str, epoch: int) -> Path:
    return (
        cache_dir() / "canonical" / engine.name / f"{built_id.removeprefix('sha256:')}-{epoch}.json"
    )


def plain_layers_dir(engine: Engine, workdir: Path) -> Path | None:
    """Where a build keeps uncompressed copies of the layers it rewrites, for an engine
    that loads plain layers (podman): `write_docker_archive` then need not decompress."""
    return None if engine.load_compressed else workdir / "plain-layers"


def _rewrite(
    engine: Engine,
    image_id: str,
    out: Path,
    *,
    epoch: int,
    workdir: Path,
    cache: LayerCache,
) -> CanonicalImage:
    """The canonical form of the engine's `image_id` in `out`, layers through `cache`.

    Read from the engine's store when it can be (`Engine.local_image`), else saved.
    """
    local = engine.local_image(image_id)
    if local is not None:
        try:
            return canonicalize_local(
                local,
                out,
                epoch=epoch,
                drop_paths=DROP_PATHS,
                cache=cache,
                plain_dir=plain_layers_dir(engine, workdir),
            )
        except NotReadable:
            pass
    archive = workdir / "built.tar"
    engine.save(image_id, archive)
    try:
        return canonicalize(
            archive,
            out,
            epoch=epoch,
            drop_paths=DROP_PATHS,
            cache=cache,
            write_archive=False,
        )
    finally:
        archive.unlink(missing_ok=True)


def new_staging() -> Path:
    """A staging folder for a canonical layout, locked until `scratch.release` (the ones
    killed processes left are removed meanwhile: `imagesmith.cache.scratch`)."""
    # Beside the layouts' final place: blobs hard-link to and from the layer cache, and a
    # layout moves in with a rename. Dot folders are skipped by the cache's pruning.
    return make_scratch(_images_dir(), ".staging-")


class Prewarm:
    """Rewrites, in the background, the layers of images a build has finished with.

    While the engine builds the next stage, the base image and each finished stage
    (the engine announces them as the image a stage starts from, `StageStarted`) go
    through the canonical rewrite into the `LayerCache`, so that the rewrite after the
    build finds them there and only does the layers of the last stage; so does the image
    after each step of the unnamed (last) stage (`StepImage`, from Docker and podman),
    while the remaining steps run. Only images the engine's store lets us read in place
    are taken (no `save` racing the build). Failures are ignored: the rewrite after the
    build does that work again and reports them.

    On an engine that can load while it builds (`Engine.loads_beside_builds`: Docker), the
    canonical layers of each image rewritten are loaded too (by a thread of their own, in
    order, so that the next rewrite does not wait for a load), when the engine does not
    hold them yet: the load after the build then sends only the layers made after it (at 80
    apt and Python packages, loading 1.4 GB took Docker 20-30 s). Each image loaded that
    way is an untagged image the engine did not have; `drop_loaded` removes them once the
    canonical image holds their layers.
    """

    def __init__(self, engine: Engine, *, epoch: int, workdir: Path) -> None:
        # Its layouts are thrown away: hits need no hashing (the rewrite after the build
        # checks every blob it takes from the cache).
        self._cache = LayerCache(cache_dir() / "layers", check=False)
        self._engine = engine
        self._epoch = epoch
        self._plain_dir = plain_layers_dir(engine, workdir)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._seen: set[str] = set()
        self._cancelled = threading.Event()
        self._thread: threading.Thread | None = None
        self._loads: queue.Queue[tuple[CanonicalImage, Path] | None] = queue.Queue()
        self._loader: threading.Thread | None = None
        self._loaded: list[str] = []

    def add(self, image_id: str) -> None:
        if image_id in self._seen or self._cancelled.is_set():
            return
        self._seen.add(image_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="prewarm", daemon=True)
            self._thread.start()
        self._queue.put(image_id)

    def watch(self, event: BuildEvent) -> None:
        """The `on_event` of the builds whose images the result will hold."""
        if isinstance(event, StageStarted) or (isinstance(event, StepImage) and not event.stage):
            self.add(event.image_id)

    def _work(self) -> None:
        # Lowest CPU priority for this thread and the gzip threads it starts (Linux: nice
        # is per thread and inherited): the build it runs beside comes first.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while (image_id := self._queue.get()) is not None:
            if self._cancelled.is_set():
                continue
            try:
                local = self._engine.local_image(image_id)
            except Exception:  # an optimisation only: even a request that failed midway
                continue
            if local is None:
                continue
            staging = new_staging()
            handed = False
            try:
                image = canonicalize_local(
                    local,
                    staging / "layout",
                    epoch=self._epoch,
                    drop_paths=DROP_PATHS,
                    cache=self._cache,
                    plain_dir=self._plain_dir,
                )
                if self._engine.loads_beside_builds:
                    # Loaded by a thread of its own, in order: the next image's rewrite
                    # need not wait for this load (the system stage's takes seconds).
                    if self._loader is None:
                        self._loader = threading.Thread(
                            target=self._load_work, name="prewarm-load", daemon=True
                        )
                        self._loader.start()
                    self._loads.put((image, staging))
                    handed = True
            except Exception:  # an optimisation only (see the class doc)
                pass
            finally:
                if not handed:
                    release(staging)

    def _load_work(self) -> None:
        while (item := self._loads.get()) is not None:
            image, staging = item
            try:
                self._load(image, staging / "layout")
            except Exception:  # an optimisation only (see the class doc)
                pass
            finally:
                release(staging)

    def _load(self, image: CanonicalImage, layout: Path) -> None:
        """Load `image` (written to `layout`) when it has layers the engine lacks."""
        engine = self._engine
        if self._cancelled.is_set() or engine.present_layers(image.diff_ids) == len(image.diff_ids):
            return
        if engine.image_exists(image.config_digest):  # not ours to remove later
            return
        self._loaded.append(load_layout(engine, layout, image.diff_ids, layout.parent))

    def drop_loaded(self, *, keep: str | None) -> None:
        """Remove the images `_load` loaded, but `keep` (the canonical image, when one of
        them is it). Their layers stay as long as an image holds them. Called when the
        build is over, after `finish`."""
        loaded, self._loaded = self._loaded, []
        for image_id in loaded:
            if image_id != keep:
                with contextlib.suppress(Exception):  # tagged or in use meanwhile: kept
                    self._engine.remove_image(image_id)

    def finish(self, *, cancel: bool = False) -> None:
        """Wait for the work queued so far; with `cancel`, skip what has not started."""
        if cancel:
            self._cancelled.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._loader is not None:  # after the rewrites: they hand it their loads
            self._loads.put(None)
            self._loader.join()
            self._loader = None


def load_layout(engine: Engine, layout: Path, diff_ids: Sequence[str], workdir: Path) -> str:
    """Load the canonical layout (its layers' `diff_ids`, bottom first); the layers the
    engine has already stay out of the archive.

    Should one of those go meanwhile (an image removed), the load fails and is done
    again with every layer.
    """
    present = engine.present_layers(diff_ids)
    try:
        return _load_archive(engine, layout, workdir, present=present)
    except EngineError:
        if not present:
            raise
        return _load_archive(engine, layout, workdir, present=0)


def _load_archive(engine: Engine, layout: Path, workdir: Path, *, present: int) -> str:
    archive = write_docker_archive(
        layout,
        workdir / "canonical.tar",
        compressed=engine.load_compressed,
        plain_layers=plain_layers_dir(engine, workdir),
        present=present,
    )
    try:
        return engine.load(archive)
    finally:
        archive.unlink(missing_ok=True)


def install_layout(staging: Path, layout: Path) -> None:
    """Move the layout just written into its place in the cache.

    When a layout for the same digest is there already (an earlier build, or one running
    beside this one), its files are replaced one by one with the ones just written and
    checked (a rename each, so a push reading it meanwhile sees whole files): a blob of
    the old one may have been corrupt, and may share its inode with a layer cache blob
    that this build found corrupt and rewrote.
    """
    if not (layout / "index.json").exists():
        shutil.rmtree(layout, ignore_errors=True)
        try:
            staging.rename(layout)
            fsync_dir(layout.parent)
            return
        except OSError:
            if not (layout / "index.json").exists():
                raise
    for path in sorted(staging.rglob("*")):
        if path.is_file():
            link_over(path, layout / path.relative_to(staging))


def rewrite_into(engine: Engine, image_id: str, *, epoch: int, workdir: Path) -> Canonical:
    """The canonical form of the engine's `image_id` kept in the cache as an OCI layout,
    for pushing; nothing is loaded (see `make_canonical` for the image a build gives)."""
    cache = LayerCache(cache_dir() / "layers")
    staging = new_staging()
    try:
        image = _rewrite(
            engine, image_id, staging / "layout", epoch=epoch, workdir=workdir, cache=cache
        )
        layout = layout_dir(image.manifest_digest)
        install_layout(staging / "layout", layout)
    finally:
        release(staging)
    touch(layout)
    return Canonical(image_id=image.config_digest, digest=image.manifest_digest, layout=layout)


def make_canonical(
    engine: Engine,
    built_id: str,
    *,
    epoch: int,
    workdir: Path,
    on_line: LineCallback = lambda _: None,
    prewarm: Prewarm | None = None,
) -> Canonical:
    """The canonical form of `built_id`, loaded into the engine (its ID) and kept in the cache.

    A `prewarm` that has been fed during the build is waited for when a rewrite is
    needed and cancelled when not.
    """
    memo = _memo_path(engine, built_id, epoch)
    known = _remembered(engine, memo, built_id)
    if known is not None:
        if prewarm is not None:
            prewarm.finish(cancel=True)
        return known
    on_line("canonical: rewriting layers and config so the digest depends on the lock alone")
    if prewarm is not None:
        prewarm.finish()
    cache = LayerCache(cache_dir() / "layers", on_corrupt=on_line)
    staging = new_staging() / "layout"
    # Now, on the cache's own clock (a new folder's mtime): every cache entry this rewrite
    # writes or uses is modified from here on, so pruning below keeps exactly those.
    started = staging.parent.stat().st_mtime
    try:
        image = _rewrite(engine, built_id, staging, epoch=epoch, workdir=workdir, cache=cache)
        loaded = load_layout(engine, staging, image.diff_ids, workdir)
        if loaded != image.config_digest:
            raise EngineError(
                f"{engine.name} loaded the canonical image as {loaded}, "
                f"expected {image.config_digest}"
            )
        layout = layout_dir(image.manifest_digest)
        install_layout(staging, layout)
    finally:
        release(staging.parent)
    touch(layout)
    _prune_cache(keep_newer_than=started, on_line=on_line)
    with contextlib.suppress(OSError):  # a memo that cannot be kept costs a rewrite next time
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_durably(
            memo, json.dumps({"image_id": loaded, "digest": image.manifest_digest}).encode()
        )
    return Canonical(
        image_id=loaded, digest=image.manifest_digest, layout=layout, built_id=built_id
    )


def _remembered(engine: Engine, memo: Path, built_id: str) -> Canonical | None:
    """The canonical image an earlier rewrite of `built_id` made (its `memo`), when the
    engine still holds it and the cache its layout; else None."""
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
    return None


def _prune_cache(*, keep_newer_than: float, on_line: LineCallback) -> None:
    """Keep the cache within its budget; what was used since `keep_newer_than` stays."""
    budget = cache_budget()
    removed = prune(cache_dir(), budget=budget, keep_newer_than=keep_newer_than)
    if removed:
        on_line(
            f"cache: removed the {len(removed)} least recently used images and layers from "
            f"{cache_dir()} to stay within {ENV_VAR}={budget / 2**30:.1f}G"
        )
