"""`imagesmith build`: lock (if needed), render, assemble the context, build, make canonical, tag.

Tags go on only after everything succeeded, so a failed or interrupted build leaves no
tag and no record behind; the temporary context is always removed. A build with nothing
to do (the inputs `env.build.json` recorded, the image still in the engine) is answered
from that record, with one inspect call and no engine build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imagesmith import __version__
from imagesmith.cache.gc import cache_budget, touch
from imagesmith.cache.integrity import LineLog
from imagesmith.cache.scratch import scratch
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, ImagesmithError, InputError, StaleLockError
from imagesmith.model.lock import (
    DEFAULT_PLATFORM,
    Lock,
    check_format,
    environment_epoch,
    format_problem,
    pins_to_keep,
    platform_problem,
    read_lock,
    stale_reason,
    write_lock,
)
from imagesmith.model.records import BuildRecord, build_record_path, read_build_record, write_record
from imagesmith.model.spec import Spec
from imagesmith.progress import LineCallback
from imagesmith.render.containerfile import build_args, content_tag, render
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.inputs.archive import Archive
    from imagesmith.pipeline.canonical_build import Canonical


@dataclass(frozen=True)
class BuildResult:
    image_id: str
    digest: str
    tags: tuple[str, ...]
    engine: str
    seconds: float
    size: int
    lock_hash: str
    locked: bool
    """Whether this build had to (re)make env.lock first."""
    substituted_from: str | None = None
    """`REGISTRY/PATH:lock-HASH` when the image was taken from there instead of built."""
    loaded: bool = True
    """False when `build --push` left the registry's image there (`pipeline/publish.py`):
    `tags` are then the registry's and `size` is what it stores (compressed)."""

    def as_json(self) -> dict[str, object]:
        extra: dict[str, object] = {}
        if self.substituted_from is not None:
            extra["substituted_from"] = self.substituted_from
        if not self.loaded:
            extra["loaded"] = False
        return {
            **extra,
            "image_id": self.image_id,
            "digest": self.digest,
            "tags": list(self.tags),
            "engine": self.engine,
            "seconds": round(self.seconds, 3),
            "size": self.size,
            "lock_hash": self.lock_hash,
        }


def build_epoch(lock: Lock) -> int:
    """SOURCE_DATE_EPOCH for this build: the environment's when set, else the lock's."""
    from_environment = environment_epoch()
    return lock.source_date_epoch if from_environment is None else from_environment


def image_tags(lock: Lock, extra: Sequence[str]) -> tuple[str, ...]:
    spec = lock.spec
    tags = [f"{spec.name}:{spec.version}", f"{spec.name}:{content_tag(lock)}", *extra]
    return tuple(dict.fromkeys(tags))


def ensure_lock(
    spec: Spec,
    engine: Engine,
    *,
    relock: bool,
    platform: str,
    on_line: LineCallback,
) -> tuple[Lock, bool]:
    """The spec's lock: made when missing, refreshed only with `relock`; stale otherwise refused."""
    from imagesmith.locking.resolve import lock_spec

    path = spec.lock_path
    previous = read_lock(path) if path.exists() else None
    if previous is not None:
        if not relock:
            check_format(previous, spec)
        reason = (
            format_problem(previous, subject=path.name)
            or stale_reason(spec, previous)
            or platform_problem(previous, platform, subject=path.name)
        )
        if reason is None:
            return previous, False
        if not relock:
            raise StaleLockError(
                f"{reason}; run `imagesmith lock {as_typed(spec.path)}"
                f"{'' if platform == DEFAULT_PLATFORM else f' --platform {platform}'}` "
                "or build with --relock"
            )
    on_line(f"lock: {'re-locking' if previous else 'locking'} {spec.path.name}")
    lock = lock_spec(
        spec,
        engine=lambda: engine,
        platform=platform,
        previous=pins_to_keep(previous, platform),
        on_line=on_line,
    )
    write_lock(lock, path)
    return lock, True


def build_canonical(
    lock: Lock,
    engine: Engine,
    *,
    no_cache: bool = False,
    on_line: LineCallback = lambda _: None,
    archive: Archive | None = None,
    share: str | None = None,
) -> Canonical:
    """Build `lock` with the engine and make the result canonical; nothing is tagged.

    The .debs the lock pins are fetched and checked on the host first (`fetch_debs`).
    When the Python packages have to be downloaded or installed on the host, the engine
    builds the system stage (apt) meanwhile, and the full build then starts from that
    stage's image. `archive`: the lock's input archive in the lab's registry, where
    inputs are looked for before their original sources. `share`: the registry
    repository through which system stages are shared (`imagesmith.pipeline.system_stage`): the
    stage is taken from there when it holds it, else built here on its own and kept
    for `push`.
    """
    from imagesmith.inputs.archive import ensure_base
    from imagesmith.inputs.context import assemble_context, python_tree_cached
    from imagesmith.inputs.debs import fetch_debs
    from imagesmith.pipeline.canonical_build import Prewarm, StageWatcher, make_canonical
    from imagesmith.pipeline.system_stage import keep_stage, shareable, take_stage

    epoch = build_epoch(lock)
    cache_budget()  # a malformed IMAGESMITH_CACHE_MAX fails now, not after the build
    args = build_args(lock)
    with scratch(Path(tempfile.gettempdir()), "imagesmith-build-") as work:
        prewarm = Prewarm(engine, epoch=epoch, workdir=work)
        stages = StageWatcher(prewarm.add)

        def line(text: str) -> None:
            on_line(text)
            stages.feed(text)

        try:
            containerfile = render(lock, epoch=epoch)
            python = lock.python
            debs: dict[str, Path] | None
            sharing = share is not None and shareable(lock)
            system_id = None
            if share is not None and sharing:  # (`share` again for the type checker)
                system_id = take_stage(share, lock, engine, epoch=epoch, on_line=on_line)
            built_stage = False
            if system_id is None:
                ensure_base(engine, lock, archive)  # a stage taken from the registry holds it
                if (
                    python
                    and python.packages
                    and (sharing or not python_tree_cached(python, lock.source_date_epoch))
                ):
                    system_id = _system_while_fetching(
                        lock,
                        engine,
                        containerfile,
                        work / "system",
                        args=args,
                        no_cache=no_cache,
                        on_line=on_line,
                        on_build_line=line,
                        archive=archive,
                    )
                    built_stage = sharing
            if system_id is not None:
                prewarm.add(system_id)
                containerfile = render(lock, system_image=system_id, epoch=epoch)
                debs = None  # the stage, built here or taken, holds the .debs already
            else:
                debs = fetch_debs(lock.apt, on_line=on_line, archive=archive)
            context = assemble_context(
                lock, containerfile, work / "context", debs=debs, on_line=on_line, archive=archive
            )
            built_id = engine.build(
                context=context, tags=(), build_args=args, no_cache=no_cache, on_line=line
            )
            canonical = make_canonical(
                engine, built_id, epoch=epoch, workdir=work, on_line=on_line, prewarm=prewarm
            )
            if built_stage and system_id is not None:
                try:
                    keep_stage(engine, system_id, lock, epoch=epoch, workdir=work)
                except (ImagesmithError, OSError) as exc:  # a cache only: the image is built
                    on_line(f"system stage: not kept for sharing ({exc})")
            return canonical
        finally:
            prewarm.finish(cancel=True)


def _system_while_fetching(
    lock: Lock,
    engine: Engine,
    containerfile: str,
    folder: Path,
    *,
    args: dict[str, str],
    no_cache: bool,
    on_line: LineCallback,
    on_build_line: LineCallback,
    archive: Archive | None,
) -> str:
    """Build the system stage while the host fetches and installs the wheels; its image ID.

    The stage needs the .debs only, so its context is the Containerfile and those: they
    are fetched first, while the wheels already download. A failing build is reported
    before a failing download of wheels.
    """
    from imagesmith.inputs.context import python_tree, system_context
    from imagesmith.inputs.debs import fetch_debs

    assert lock.python is not None
    # Progress lines come from this thread only (the live view is not thread-safe).
    on_line(
        f"python: fetching and installing {len(lock.python.packages)} packages on the host "
        "while the system stage builds"
    )
    reports = LineLog()  # corrupt cache entries found meanwhile, printed from this thread

    def report(text: str) -> None:
        if text.startswith("cache: "):
            reports.add(text)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wheels") as pool:
        fetched = pool.submit(
            python_tree, lock.python, lock.source_date_epoch, on_line=report, archive=archive
        )
        debs = fetch_debs(lock.apt, on_line=on_line, archive=archive)
        system_context(lock, containerfile, folder, debs=debs)
        system_id = engine.build(
            context=folder,
            tags=(),
            build_args=args,
            no_cache=no_cache,
            on_line=on_build_line,
            target="system",
        )
        try:
            fetched.result()
        finally:
            reports.flush(on_line)
    return system_id


def build_inputs(lock: Lock, engine: Engine) -> str:
    """One hash of everything that decides the image a build of `lock` makes: the lock
    (its hash covers the spec, the pins and the hashes of the copied files, which
    `ensure_lock` has just compared with the files on disk), the epoch, the Containerfile
    this imagesmith renders from them (whatever the context holds comes from the lock
    and is named by it), imagesmith's version and the engine."""
    epoch = build_epoch(lock)
    facts = {
        "imagesmith": __version__,
        "lock": lock.lock_hash,
        "epoch": epoch,
        "containerfile": hashlib.sha256(render(lock, epoch=epoch).encode()).hexdigest(),
        "engine": engine.name,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _has_tag(repo_tags: Sequence[str], tag: str) -> bool:
    # podman names short tags localhost/NAME:TAG; docker drops docker.io/library/.
    return any(t in repo_tags for t in (tag, f"localhost/{tag}", f"docker.io/library/{tag}"))


def unchanged_build(
    spec: Spec, lock: Lock, engine: Engine, *, tags: Sequence[str], inputs: str
) -> BuildResult | None:
    """The last build's result, when it is still what a build would make and still there:
    the record names the same inputs and tags, the canonical layout `push` sends is in
    the cache, and the engine holds the image with its tags (one inspect call). None
    otherwise: then build."""
    from imagesmith.inputs.context import layout_dir

    started = time.monotonic()
    try:
        record = read_build_record(spec.path, lock.lock_hash)
    except InputError:
        return None  # damaged: the build writes it again
    if (
        record is None
        or record.inputs != inputs
        or record.engine != engine.name
        or record.tags != tuple(tags)
    ):
        return None
    layout = layout_dir(record.digest)
    if not (layout / "index.json").exists():
        return None
    try:
        info = engine.inspect_image(record.image_id)
    except EngineError:
        return None
    if not all(_has_tag(info.repo_tags, tag) for tag in tags):
        return None
    touch(layout)
    return BuildResult(
        image_id=record.image_id,
        digest=record.digest,
        tags=record.tags,
        engine=engine.name,
        seconds=time.monotonic() - started,
        size=info.size,
        lock_hash=lock.lock_hash,
        locked=False,
    )


def build(
    spec: Spec,
    engine: Engine,
    *,
    extra_tags: Sequence[str] = (),
    no_cache: bool = False,
    relock: bool = False,
    platform: str = "linux/amd64",
    on_line: LineCallback = lambda _: None,
    substitute: bool = False,
) -> BuildResult:
    """Build `spec` (see the module doc). Without `no_cache`, a build whose inputs are
    those the last build recorded, and whose image the engine still holds, is answered
    from the record without running the engine (`unchanged_build`). With `substitute`,
    an image of the lock that `[registry] repository` holds is taken from there instead
    of building it (imagesmith/pipeline/substitute.py)."""
    started = time.monotonic()
    started_at = time.time()
    lock, locked = ensure_lock(spec, engine, relock=relock, platform=platform, on_line=on_line)
    tags = image_tags(lock, extra_tags)
    inputs = build_inputs(lock, engine)
    if not no_cache:
        done = unchanged_build(spec, lock, engine, tags=tags, inputs=inputs)
        if done is not None:
            return dataclasses.replace(done, seconds=time.monotonic() - started, locked=locked)
    from imagesmith.inputs.archive import Archive

    taken, answered = (
        _substituted(spec, lock, engine, on_line=on_line) if substitute else (None, False)
    )
    if taken is not None:
        canonical, source = taken
    else:
        archive = Archive.for_lock(spec.registry_repository, lock)
        canonical = build_canonical(
            lock,
            engine,
            no_cache=no_cache,
            on_line=on_line,
            archive=archive,
            # A registry that did not answer for the image is not asked for its stage.
            share=spec.registry_repository if answered else None,
        )
        source = None
    # Cut short, this puts back the tags it moved: `name:version` names the last image again.
    engine.apply_tags(canonical.image_id, tags)
    info = engine.inspect_image(canonical.image_id)
    uid, gid = spec.image.uid, spec.image.group_id
    write_record(
        build_record_path(spec.path),
        BuildRecord(
            image_id=canonical.image_id,
            digest=canonical.digest,
            tags=tags,
            engine=engine.name,
            lock_hash=lock.lock_hash,
            uid=uid,
            gid=gid,
            started=_rfc3339(int(started_at)),
            finished=_rfc3339(int(time.time())),
            inputs=inputs,
        ),
    )
    return BuildResult(
        image_id=canonical.image_id,
        digest=canonical.digest,
        tags=tags,
        engine=engine.name,
        seconds=time.monotonic() - started,
        size=info.size,
        lock_hash=lock.lock_hash,
        locked=locked,
        substituted_from=source,
    )


def _substituted(
    spec: Spec, lock: Lock, engine: Engine, *, on_line: LineCallback
) -> tuple[tuple[Canonical, str] | None, bool]:
    """The image from the registry (`substitute`), when it is the one this build would
    make; and whether the registry may be asked for the system stage."""
    from imagesmith.pipeline.substitute import substitute

    if build_epoch(lock) != lock.source_date_epoch:
        on_line(
            "substitution: skipped, SOURCE_DATE_EPOCH differs from the lock's; building locally"
        )
        return None, bool(spec.registry_repository)
    return substitute(spec.registry_repository, lock, engine, on_line=on_line)


def _rfc3339(epoch: int) -> str:
    from imagesmith.image.config import rfc3339  # the rewrite's rooms: only after a real build

    return rfc3339(epoch)
