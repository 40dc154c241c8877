"""`imagesmith build --push`: build a spec (or take its image from the registry) and push it.

When the registry already holds the image of the lock (its `lock-HASH` tag, an image whose
config names this lock, every layer still there), there is nothing to build and nothing
to send: the spec's version tag is moved to that image (one manifest PUT) and the push
record is written, as a push would. The image is not loaded into the engine then; with
`--substitute`, extra local tags or `--no-cache` it is loaded as `build --substitute`
loads it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from imagesmith.engine.base import Engine
from imagesmith.errors import ImagesmithError
from imagesmith.model.lock import Lock, read_lock
from imagesmith.model.records import PushRecord, push_record_path, write_record
from imagesmith.model.spec import Spec
from imagesmith.pipeline.build import BuildResult, build, build_epoch, ensure_lock
from imagesmith.pipeline.push import push
from imagesmith.pipeline.substitute import Substitute, held_image
from imagesmith.progress import LineCallback
from imagesmith.registry.client import Pusher, RegistryClient
from imagesmith.render.containerfile import content_tag


def build_and_push(
    spec: Spec,
    engine: Engine,
    *,
    extra_tags: Sequence[str] = (),
    no_cache: bool = False,
    relock: bool = False,
    platform: str = "linux/amd64",
    substitute: bool = False,
    inputs: bool = True,
    on_line: LineCallback = lambda _: None,
) -> tuple[BuildResult, PushRecord]:
    """Build `spec` and push it (see the module doc); `substitute` also loads an image the
    registry holds into `engine`. An image taken from the registry is there already, with
    the input archive and the attestations of the push that put it there: only its tags
    and the push record are written then."""
    ask_registry = True
    if spec.registry_repository and not (substitute or extra_tags or no_cache):
        started = time.monotonic()
        lock, locked = ensure_lock(spec, engine, relock=relock, platform=platform, on_line=on_line)
        relock = False  # made (or refreshed) now: the build below reads it
        try:
            held = _held(spec, lock, on_line=on_line)
        except ImagesmithError as exc:  # unreachable, unauthorized, another lock's image
            on_line(f"substitution: skipped, {exc}; building locally")
            ask_registry = False
        else:
            if held is not None:
                record = _retag(spec, lock, held, on_line=on_line)
                return _held_result(held, record, engine, started=started, locked=locked), record
    result = build(
        spec,
        engine,
        extra_tags=extra_tags,
        no_cache=no_cache,
        relock=relock,
        platform=platform,
        on_line=on_line,
        substitute=ask_registry,
    )
    taken = result.substituted_from is not None
    record = push(
        spec,
        read_lock(spec.lock_path),
        inputs=inputs and not taken,
        attestations=not taken,
        on_line=on_line,
    )
    on_line(f"pushed {record.pinned}")
    return result, record


def _held(spec: Spec, lock: Lock, *, on_line: LineCallback) -> Substitute | None:
    """The registry's image of `lock`, left there; None (one line) when it lacks it."""
    assert spec.registry_repository is not None
    if build_epoch(lock) != lock.source_date_epoch:
        on_line("substitution: skipped, SOURCE_DATE_EPOCH differs from the lock's; building")
        return None
    found = held_image(spec.registry_repository, lock)
    if found is None:
        on_line(f"substitution: {spec.registry_repository} has no {content_tag(lock)}; building")
    return found


def _retag(spec: Spec, lock: Lock, held: Substitute, *, on_line: LineCallback) -> PushRecord:
    """Point the spec's version tag at the held image and write the push record."""
    on_line(
        f"substitution: {held.source} ({held.digest[:19]}) holds this lock's image; "
        "nothing to build or send"
    )
    pusher = Pusher(RegistryClient(held.repository.registry), held.repository.path, on_line)
    pusher.push_manifest(spec.version, held.manifest, held.media_type)
    record = PushRecord(
        repository=held.repository.familiar_repository,
        digest=held.digest,
        tags=(spec.version, content_tag(lock)),
        lock_hash=lock.lock_hash,
        uid=spec.image.uid,
        gid=spec.image.group_id,
    )
    write_record(push_record_path(spec.path), record)
    return record


def _held_result(
    held: Substitute, record: PushRecord, engine: Engine, *, started: float, locked: bool
) -> BuildResult:
    """What `build` reports for an image left in the registry: its tags there, and its
    size as the registry stores it (compressed)."""
    manifest = json.loads(held.manifest)
    return BuildResult(
        image_id=manifest["config"]["digest"],
        digest=held.digest,
        tags=tuple(f"{record.repository}:{tag}" for tag in record.tags),
        engine=engine.name,
        seconds=time.monotonic() - started,
        size=sum(layer["size"] for layer in manifest["layers"]),
        lock_hash=record.lock_hash,
        locked=locked,
        substituted_from=held.source,
        loaded=False,
    )
