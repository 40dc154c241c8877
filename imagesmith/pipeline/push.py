"""`imagesmith push` / `pull` / `login`: publish the canonical image, fetch it back by digest.

Push sends the blobs of the canonical OCI layout `build` made through the registry API,
so the registry's digest is the one `build` printed, whichever engine built it. The push
record is written only after the registry confirmed the manifest.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path
from typing import Any

from imagesmith.cache.integrity import CorruptEntry
from imagesmith.engine.base import Engine
from imagesmith.errors import InputError, OperationError, RegistryError
from imagesmith.model.lock import Lock, write_atomically
from imagesmith.model.records import (
    BuildRecord,
    PushRecord,
    build_record_path,
    push_record_path,
    read_build_record,
    write_record,
)
from imagesmith.model.reference import ImageReference, is_digest, parse_reference
from imagesmith.model.spec import Spec
from imagesmith.pipeline.canonical_build import layout_dir
from imagesmith.progress import LineCallback
from imagesmith.registry.client import Credentials, RegistryClient, push_layout
from imagesmith.registry.docker_config import docker_config_path
from imagesmith.render.containerfile import content_tag
from imagesmith.userpath import as_typed


def push_target(spec: Spec, to: str | None) -> tuple[ImageReference, tuple[str, ...]]:
    """The repository and tags to push to: --to REF, else [registry] repository."""
    text = to or spec.registry_repository
    if not text:
        raise InputError(
            f"{spec.path.name} has no [registry] repository; add one or pass --to REGISTRY/PATH"
        )
    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise InputError(f"--to: {exc}") from None
    if ref.digest:
        raise InputError(f"--to {text}: name a repository or a tag, not a digest")
    explicit_tag = to is not None and ":" in text.rsplit("/", 1)[-1]
    return ref, (ref.tag,) if explicit_tag and ref.tag else ()


def push(
    spec: Spec,
    lock: Lock,
    *,
    to: str | None = None,
    inputs: bool = True,
    on_line: LineCallback | None = None,
    attestations: bool = True,
    signer: Any = None,
    builder_id: str | None = None,
) -> PushRecord:
    """Push the canonical image `build` made for `lock`; then, unless `inputs` is False, its
    input archive (every file the lock builds from, linked to the image); then, unless
    `attestations` is False, its SBOMs and provenance as OCI referrers (`signer`: sign the
    provenance into a DSSE envelope)."""
    ref, tags = push_target(spec, to)
    built, layout = _built_layout(spec, lock)
    tags = tags or (spec.version, content_tag(lock))
    try:
        digest = push_layout(layout, ref, tags, on_line=on_line)
    except CorruptEntry as exc:
        _remake_layout(spec, lock, built, exc, on_line=on_line or (lambda _: None))
        digest = push_layout(layout, ref, tags, on_line=on_line)
    if digest != built.digest:
        raise RegistryError(f"the registry holds {digest}, but the build made {built.digest}")
    # The registry holds the image now: record it before the extras, so a failure there
    # leaves a record that tells the truth about the image.
    record = PushRecord(
        repository=ref.familiar_repository,
        digest=digest,
        tags=tags,
        lock_hash=lock.lock_hash,
        uid=built.uid,
        gid=built.gid,
    )
    write_record(push_record_path(spec.path), record)
    _push_system_stage(lock, ref, on_line=on_line)
    if inputs:
        try:
            _push_input_archive(lock, built, ref, layout, digest, on_line=on_line)
        except OperationError as exc:  # engine, registry or download: all exit 1
            raise OperationError(
                f"pushed {record.pinned}, but storing its input archive failed: {exc} "
                "(push again, or pass --no-inputs)"
            ) from None
    if attestations:
        _attach_attestations(lock, built, ref, record, signer, builder_id, on_line)
    return record


def _built_layout(spec: Spec, lock: Lock) -> tuple[BuildRecord, Path]:
    """The build record of `lock` and the canonical layout it names; InputError when the
    lock was not built or the layout has left the cache."""
    built = read_build_record(spec.path, lock.lock_hash)
    if built is None:
        raise InputError(
            f"no image built from this {spec.lock_path.name} yet: run `imagesmith build "
            f"{as_typed(spec.path)}` (or `imagesmith build {as_typed(spec.path)} --push`)"
        )
    layout = layout_dir(built.digest)
    if not (layout / "index.json").exists():
        raise InputError(
            f"the canonical image {built.digest[:19]} is no longer in imagesmith's cache; "
            f"run `imagesmith build {as_typed(spec.path)}` again, then push"
        )
    return built, layout


def _attach_attestations(
    lock: Lock,
    built: BuildRecord,
    ref: ImageReference,
    record: PushRecord,
    signer: Any,
    builder_id: str | None,
    on_line: LineCallback | None,
) -> None:
    """The SBOMs and provenance of the pushed image, as OCI referrers beside it."""
    from imagesmith.attest.publish import attach_attestations

    try:
        attached = attach_attestations(
            lock, built, ref, signer=signer, builder_id=builder_id, on_line=on_line
        )
    except RegistryError as exc:
        raise RegistryError(
            f"pushed {record.pinned}, but attaching its SBOMs and provenance failed: {exc} "
            "(push again, or pass --no-attestations)"
        ) from None
    if on_line:
        on_line(f"push: attached {len(attached)} attestations (SPDX, CycloneDX, provenance)")


def _push_system_stage(lock: Lock, ref: ImageReference, *, on_line: LineCallback | None) -> None:
    """The system stage this machine built for `lock` (a `build --push` or `--substitute`
    keeps it), for other locks with the same base and apt closure; a cache only, so a
    failure is one line and the push goes on."""
    from imagesmith.pipeline.build import build_epoch
    from imagesmith.pipeline.system_stage import push_stage

    try:
        push_stage(lock, build_epoch(lock), ref, on_line=on_line)
    except (OperationError, CorruptEntry, OSError) as exc:
        if on_line:
            on_line(f"push: the system stage was not stored ({exc}); the image is pushed")


def _push_input_archive(
    lock: Lock,
    built: BuildRecord,
    ref: ImageReference,
    layout: Path,
    digest: str,
    *,
    on_line: LineCallback | None,
) -> None:
    """Every file `lock` builds from, and a base that exists only here, beside the image."""
    from imagesmith.inputs.archive import collect_inputs, push_inputs, push_local_base

    if lock.base.local:
        from imagesmith.engine import get_engine

        push_local_base(get_engine(built.engine), lock, ref, on_line=on_line)
    manifest = layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
    archived = push_inputs(
        collect_inputs(lock, on_line=on_line),
        ref,
        lock=lock,
        subject_digest=digest,
        subject_size=manifest.stat().st_size,
        on_line=on_line,
    )
    if on_line:
        on_line(
            f"push: input archive {ref.familiar_repository}:{archived.tag} "
            f"({archived.files} files, {archived.new_files} new, "
            f"{archived.new_bytes / 1e6:.1f} MB sent)"
        )


def _remake_layout(
    spec: Spec, lock: Lock, built: BuildRecord, corrupt: CorruptEntry, *, on_line: LineCallback
) -> None:
    """Make the canonical layout of `built` again from its source, the engine's build,
    after a blob of it was found corrupt; the same digest or an error."""
    from imagesmith.engine import get_engine
    from imagesmith.pipeline.build import build_canonical

    on_line(
        f"cache: blob {corrupt.expected} of image {built.digest[:19]} was corrupt; "
        f"rewriting the image from {built.engine}'s build"
    )
    shutil.rmtree(layout_dir(built.digest), ignore_errors=True)
    canonical = build_canonical(lock, get_engine(built.engine), on_line=on_line)
    if canonical.digest != built.digest:
        raise OperationError(
            f"rebuilding the corrupt canonical image gave {canonical.digest}, not the "
            f"{built.digest} that {build_record_path(spec.path).name} names; "
            f"run `imagesmith build {spec.path.name}`, then push"
        )


def served_reference(text: str) -> ImageReference:
    """`NAME@sha256:...` parsed, once its registry has served that very manifest: a tag is
    refused (exit 2), a registry that answers with other bytes too (exit 1)."""
    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not ref.digest or not is_digest(ref.digest):
        raise InputError(f"{text}: pull by digest (NAME@sha256:...), never by a mutable tag")
    client = RegistryClient(ref.registry)
    served, _, _ = client.manifest(ref.path, ref.digest)
    if served != ref.digest:
        raise RegistryError(
            f"{ref.registry}/{ref.path} served a manifest whose digest is {served} "
            f"when asked for {ref.digest}; not pulling it"
        )
    return ref


def pull(engine: Engine, text: str | ImageReference) -> str:
    """Pull `name@sha256:...` into the engine after checking the registry serves that digest
    (already checked when `text` comes from `served_reference`)."""
    ref = text if isinstance(text, ImageReference) else served_reference(text)
    assert ref.digest is not None
    pinned = f"{ref.familiar_repository}@{ref.digest}"
    image_id = engine.pull(pinned)
    info = engine.inspect_image(image_id)
    digests = {d.partition("@")[2] for d in info.repo_digests}
    if digests and ref.digest not in digests:
        raise RegistryError(f"{engine.name} pulled {sorted(digests)}, not {ref.digest}")
    return pinned


def login(registry: str, username: str, password: str) -> Path:
    """Check the credentials against the registry, then store them in the docker config."""
    client = RegistryClient(registry, Credentials(username, password))
    status, _, _ = client.request("GET", "/v2/", scope="registry:catalog:*")
    if status in (401, 403):
        raise RegistryError(f"unauthorized: check the credentials for {registry}")
    if status >= 400:
        raise RegistryError(f"{registry} answered {status} to a login check")
    path = docker_config_path()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read it ({exc})") from None
    pair = base64.b64encode(f"{username}:{password}".encode()).decode()
    config.setdefault("auths", {})[registry] = {"auth": pair}
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, json.dumps(config, indent=2) + "\n")
    os.chmod(path, 0o600)
    return path
