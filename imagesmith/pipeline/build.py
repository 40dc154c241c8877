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
import time
from collections.abc import Sequence
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
    from imagesmith.pipeline.canonical_build import Canonical, Prewarm


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
    from imagesmith.locking.resolve import lock_spec  # its rooms: only when locking

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
    When the lock installs .debs, or the Python packages have to be downloaded or
    installed on the host, the engine builds the system stage (apt, user) on its own
    first, the host installing the Python packages meanwhile, and the full build then
    starts from that stage's image. Its image ID is noted: a later build of a lock with
    the same stage starts from it and does not build it (not with `no_cache`).
    `archive`: the lock's input archive in the lab's registry, where inputs are looked
    for before their original sources. `share`: the registry
    repository through which system stages are shared (`imagesmith.pipeline.system_stage`): the
    stage is taken from there when it holds it, else built here on its own and kept
    for `push`.
    """
    import tempfile

    from imagesmith.pipeline.canonical_build import Prewarm, make_canonical

    epoch = build_epoch(lock)
    cache_budget()  # a malformed IMAGESMITH_CACHE_MAX fails now, not after the build
    with scratch(Path(tempfile.gettempdir()), "imagesmith-build-") as work:
        prewarm = Prewarm(engine, epoch=epoch, workdir=work)
        run = _EngineRun(lock, engine, work, epoch, no_cache, on_line, prewarm, archive)
        canonical: Canonical | None = None
        try:
            containerfile = render(lock, epoch=epoch)
            system_id, built_stage = _system_stage(run, containerfile, share)
            built_id = _build_image(run, containerfile, system_id)
            canonical = make_canonical(
                engine, built_id, epoch=epoch, workdir=work, on_line=on_line, prewarm=prewarm
            )
            if built_stage and system_id is not None:
                _keep_for_sharing(run, system_id)
            return canonical
        finally:
            prewarm.finish(cancel=True)
            prewarm.drop_loaded(keep=canonical.image_id if canonical else None)


@dataclass(frozen=True)
class _EngineRun:
    """What the steps of one `build_canonical` share."""

    lock: Lock
    engine: Engine
    work: Path
    epoch: int
    no_cache: bool
    on_line: LineCallback
    prewarm: Prewarm
    """Fed with the engine's build events: rewrites finished images meanwhile."""
    archive: Archive | None

    def build(self, context: Path, *, target: str | None = None) -> str:
        """The engine's build of `context`, untagged: its image ID."""
        return self.engine.build(
            context=context,
            tags=(),
            build_args=build_args(self.lock),
            no_cache=self.no_cache,
            on_line=self.on_line,
            on_event=self.prewarm.watch,
            target=target,
        )


def _system_stage(
    run: _EngineRun, containerfile: str, share: str | None
) -> tuple[str | None, bool]:
    """The system stage's image the build starts from, and whether it is to be kept for
    sharing: taken from `share`, else the engine's build of it this machine noted
    (`built_here`; not with --no-cache), else built here on its own, while the host
    prepares the Python packages when it has to download or install them. None when the
    stage installs no .debs and the host has nothing to prepare: the whole file is then
    built at once."""
    from imagesmith.inputs.archive import ensure_base
    from imagesmith.inputs.context import python_tree_cached
    from imagesmith.pipeline.system_stage import built_here, remember_built, shareable, take_stage

    lock = run.lock
    sharing = share is not None and shareable(lock)
    if share is not None and sharing:  # (`share` again for the type checker)
        taken = take_stage(share, lock, run.engine, epoch=run.epoch, on_line=run.on_line)
        if taken is not None:
            return taken, False
    if not run.no_cache:
        noted = built_here(run.engine, lock, run.epoch)
        if noted is not None:
            return noted, sharing
    ensure_base(run.engine, lock, run.archive)  # a stage taken from the registry holds it
    python = lock.python
    prepare = bool(
        python and python.packages and not python_tree_cached(python, lock.source_date_epoch)
    )
    if not (lock.apt.packages or sharing or prepare):
        return None, False  # a base and a user: one build of the whole file
    system_id = _build_system(run, containerfile, run.work / "system", prepare=prepare)
    remember_built(run.engine, lock, run.epoch, system_id)
    return system_id, sharing


def _build_image(run: _EngineRun, containerfile: str, system_id: str | None) -> str:
    """The engine's image of the whole Containerfile, from the system stage's image when
    there is one (which holds the .debs already), else with the .debs in the context."""
    from imagesmith.inputs.context import assemble_context
    from imagesmith.inputs.debs import fetch_debs

    lock = run.lock
    debs: dict[str, Path] | None
    if system_id is not None:
        run.prewarm.add(system_id)
        containerfile = render(lock, system_image=system_id, epoch=run.epoch)
        debs = None
    else:
        debs = fetch_debs(lock.apt, on_line=run.on_line, archive=run.archive)
    context = assemble_context(
        lock,
        containerfile,
        run.work / "context",
        debs=debs,
        on_line=run.on_line,
        archive=run.archive,
    )
    return run.build(context)


def _keep_for_sharing(run: _EngineRun, system_id: str) -> None:
    """Keep the system stage built here for `push` to share; a failure only costs that."""
    from imagesmith.pipeline.system_stage import keep_stage

    try:
        keep_stage(run.engine, system_id, run.lock, epoch=run.epoch, workdir=run.work)
    except (ImagesmithError, OSError) as exc:  # a cache only: the image is built
        run.on_line(f"system stage: not kept for sharing ({exc})")


def _build_system(run: _EngineRun, containerfile: str, folder: Path, *, prepare: bool) -> str:
    """Build the system stage alone, its image ID; with `prepare`, the host fetches and
    installs the wheels meanwhile.

    The stage needs the .debs only, so its context is the Containerfile and those: they
    are fetched first, while the wheels already download. A failing build is reported
    before a failing download of wheels.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from imagesmith.inputs.context import python_tree, system_context
    from imagesmith.inputs.debs import fetch_debs

    lock, on_line, archive = run.lock, run.on_line, run.archive
    python = lock.python
    reports = LineLog()  # corrupt cache entries found meanwhile, printed from this thread

    def report(text: str) -> None:
        if text.startswith("cache: "):
            reports.add(text)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wheels") as pool:
        fetched: Future[Path] | None = None
        if prepare and python is not None:
            # Progress lines come from this thread only (the live view is not thread-safe).
            on_line(
                f"python: fetching and installing {len(python.packages)} packages on the "
                "host while the system stage builds"
            )
            fetched = pool.submit(
                python_tree, python, lock.source_date_epoch, on_line=report, archive=archive
            )
        debs = fetch_debs(lock.apt, on_line=on_line, archive=archive)
        system_context(lock, containerfile, folder, debs=debs)
        # The base's layers are final: rewritten while apt runs (the system stage's own
        # layer is rewritten once the stage is built, while the Python steps run).
        run.prewarm.add(lock.base.pinned)
        system_id = run.build(folder, target="system")
        if fetched is not None:
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
    canonical, source = _made_or_taken(spec, lock, engine, no_cache, substitute, on_line)
    # Cut short, this puts back the tags it moved: `name:version` names the last image again.
    engine.apply_tags(canonical.image_id, tags)
    info = engine.inspect_image(canonical.image_id)
    _record_build(spec, lock, engine, canonical, tags=tags, inputs=inputs, started_at=started_at)
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


def _made_or_taken(
    spec: Spec,
    lock: Lock,
    engine: Engine,
    no_cache: bool,
    substitute: bool,
    on_line: LineCallback,
) -> tuple[Canonical, str | None]:
    """The canonical image: taken from the registry (with `substitute`, when it holds the
    image this build would make; then also where it came from), else built here."""
    from imagesmith.inputs.archive import Archive

    taken, answered = (
        _substituted(spec, lock, engine, on_line=on_line) if substitute else (None, False)
    )
    if taken is not None:
        return taken
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
    return canonical, None


def _record_build(
    spec: Spec,
    lock: Lock,
    engine: Engine,
    canonical: Canonical,
    *,
    tags: tuple[str, ...],
    inputs: str,
    started_at: float,
) -> None:
    """Write `env.build.json`: what the build made, from what, when (`unchanged_build`)."""
    write_record(
        build_record_path(spec.path),
        BuildRecord(
            image_id=canonical.image_id,
            digest=canonical.digest,
            tags=tags,
            engine=engine.name,
            lock_hash=lock.lock_hash,
            uid=spec.image.uid,
            gid=spec.image.group_id,
            started=_rfc3339(int(started_at)),
            finished=_rfc3339(int(time.time())),
            inputs=inputs,
        ),
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
