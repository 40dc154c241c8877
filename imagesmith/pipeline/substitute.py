"""Substitution: take the image of a lock from the lab's registry instead of building it.

An image imagesmith builds depends on the lock alone, and `push` tags it `lock-HASH` in
`[registry] repository`. A builder that finds that tag there can take the image instead
of building it: the manifest, config and layers are fetched by digest (each checked as
it arrives), the config must name this very lock, and the image is loaded into the
engine from the same canonical OCI layout a local build keeps for `push`. Nothing is
tagged here: `build` tags it and writes the build record, as after a build.

This trusts the registry to hold what an honest build of the lock made; `imagesmith
verify` is the check (docs/ci.md). Substitution is an optimisation, so every reason not
to substitute (no tag, an unreachable registry, bytes that do not match) is one line on
`on_line`, and the caller builds.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.cache.gc import touch
from imagesmith.cache.scratch import release
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, ImagesmithError, OperationError, RegistryError
from imagesmith.image.oci import Descriptor, LayoutWriter, sha256_bytes
from imagesmith.inputs.context import layout_dir
from imagesmith.model.labels import LOCK_HASH
from imagesmith.model.lock import Lock
from imagesmith.model.reference import ImageReference, parse_reference
from imagesmith.pipeline.canonical_build import Canonical, install_layout, load_layout, new_staging
from imagesmith.progress import LineCallback
from imagesmith.registry.client import MANIFEST_TYPES, RegistryClient
from imagesmith.render.containerfile import content_tag

#: The manifest kinds a canonical image is pushed as (an index is never one).
IMAGE_MANIFEST_TYPES = MANIFEST_TYPES[2:]


@dataclass(frozen=True)
class Substitute:
    """The image of a lock as the registry holds it: where, and under which digest."""

    repository: ImageReference
    tag: str
    digest: str
    media_type: str
    manifest: bytes

    @property
    def source(self) -> str:
        """`REGISTRY/PATH:lock-HASH`, what the user reads."""
        return f"{self.repository.familiar_repository}:{self.tag}"


class NotSubstituted(RegistryError):
    """Why the registry's image cannot stand in for a build (said, then the build runs)."""


def find_substitute(repository: str, lock: Lock) -> Substitute | None:
    """The registry's `lock-HASH` manifest for `lock`, checked against its digest; None
    when the repository does not hold that tag. `RegistryUnreachable` when no answer comes,
    `NotSubstituted` / `RegistryError` when what is there cannot be used."""
    return find_manifest(repository, content_tag(lock))


def find_manifest(repository: str, tag: str) -> Substitute | None:
    """The image manifest `repository:tag`, checked against its digest (see
    `find_substitute`)."""
    try:
        ref = parse_reference(repository)
    except ValueError as exc:
        raise NotSubstituted(f"[registry] repository: {exc}") from None
    client = RegistryClient(ref.registry)
    status, headers, body = client.request(
        "GET",
        f"/v2/{ref.path}/manifests/{tag}",
        scope=f"repository:{ref.path}:pull",
        headers={"Accept": ", ".join(MANIFEST_TYPES)},
    )
    if status == 404:
        return None
    if status == 401:
        raise client.unauthorized()
    if status >= 400:
        raise RegistryError(f"{ref.registry} answered {status} for {ref.path}:{tag}")
    digest = sha256_bytes(body)
    lowered = {k.lower(): v for k, v in headers.items()}
    said = lowered.get("docker-content-digest")
    if said and said != digest:
        raise NotSubstituted(
            f"{ref.registry}/{ref.path}:{tag} says its digest is {said}, but its bytes hash "
            f"to {digest}"
        )
    media_type = lowered.get("content-type", "").split(";")[0]
    if media_type not in IMAGE_MANIFEST_TYPES:
        raise NotSubstituted(f"{ref.registry}/{ref.path}:{tag} is a {media_type}, not an image")
    return Substitute(ref, tag, digest, media_type, body)


def check_config(found: Substitute, config: dict[str, Any], lock: Lock) -> None:
    """The image must carry the lock it is substituted for (its label `LOCK_HASH`)."""
    labels = (config.get("config") or {}).get("Labels") or {}
    carried = labels.get(LOCK_HASH)
    if carried != lock.lock_hash:
        raise NotSubstituted(
            f"{found.source} ({found.digest[:19]}) was built from lock {carried or 'unknown'}, "
            f"not {lock.lock_hash}"
        )


def fetch_layout(found: Substitute, out: Path, *, lock: Lock | None = None) -> list[str]:
    """Write the image as an OCI layout in `out` (as a build keeps it), every blob checked
    against its digest; the layers' diff IDs, bottom first. With `lock`, the image must
    carry that lock (`check_config`), which is checked before any layer is fetched."""
    manifest = json.loads(found.manifest)
    writer = LayoutWriter(out)
    writer.add_bytes(found.media_type, found.manifest)
    client = RegistryClient(found.repository.registry)
    path = found.repository.path

    def download(digest: str) -> Path:
        target = writer.blobs / digest.removeprefix("sha256:")
        with target.open("wb") as sink:
            if not client.download_blob(path, digest, sink):
                raise NotSubstituted(f"{found.source} names blob {digest[:19]}, which it lacks")
        return target

    # The config first: an image of another lock is refused before its layers are fetched.
    config = json.loads(download(manifest["config"]["digest"]).read_bytes())
    if lock is not None:
        check_config(found, config, lock)
    for layer in manifest["layers"]:
        download(layer["digest"])
    writer.write_index(Descriptor(found.media_type, found.digest, len(found.manifest)), [])
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    return diff_ids


def held_image(repository: str, lock: Lock) -> Substitute | None:
    """The registry's image of `lock`, left there: `lock-HASH` is an image manifest
    (checked against its digest) whose config (fetched and checked) names this lock, and
    the registry still holds each of its layers. None when the tag is not there;
    `ImagesmithError` (one line) when what is there cannot be used."""
    found = find_substitute(repository, lock)
    if found is None:
        return None
    config_digest, layers = image_blobs(found)
    client = RegistryClient(found.repository.registry)
    path = found.repository.path
    config_bytes = io.BytesIO()
    if not client.download_blob(path, config_digest, config_bytes):
        raise NotSubstituted(f"{found.source} names a config it lacks")
    try:
        config = json.loads(config_bytes.getvalue())
    except ValueError:
        raise NotSubstituted(f"{found.source}: its config is not JSON") from None
    check_config(found, config if isinstance(config, dict) else {}, lock)
    for digest in layers:
        status, _, _ = client.request(
            "HEAD", f"/v2/{path}/blobs/{digest}", scope=f"repository:{path}:pull"
        )
        if status != 200:
            raise NotSubstituted(
                f"{found.source} names layer {digest[:19]}, which the registry "
                f"no longer holds ({status})"
            )
    return found


def image_blobs(found: Substitute) -> tuple[str, list[str]]:
    """The config digest and the layer digests `found`'s manifest names (each layer with
    its size); `NotSubstituted` when the manifest does not have that shape."""
    try:
        manifest = json.loads(found.manifest)
        config_digest = manifest["config"]["digest"]
        layers = [layer["digest"] for layer in manifest["layers"]]
        sizes = [layer["size"] for layer in manifest["layers"]]
    except (ValueError, KeyError, TypeError):
        raise NotSubstituted(f"{found.source} is not a well-formed image manifest") from None
    named = all(isinstance(d, str) for d in [config_digest, *layers])
    if not named or not all(isinstance(n, int) and n >= 0 for n in sizes):
        raise NotSubstituted(f"{found.source} is not a well-formed image manifest")
    return config_digest, layers


def load_from_registry(found: Substitute, engine: Engine, *, lock: Lock | None = None) -> str:
    """Fetch the image `found` names (every blob checked; with `lock`, its config must
    carry that lock), load it into `engine`, check that the engine's image ID is the
    config's digest, and keep it in the cache as the canonical layout a build keeps; the
    image ID. ImagesmithError (one line) when any of that fails."""
    layout = layout_dir(found.digest)
    staging = new_staging()
    try:
        work = Path(tempfile.mkdtemp(prefix="work-", dir=staging))
        diff_ids = fetch_layout(found, staging / "layout", lock=lock)
        image_id = load_layout(engine, staging / "layout", diff_ids, work)
        config_digest = json.loads(found.manifest)["config"]["digest"]
        if image_id != config_digest:
            raise EngineError(
                f"{engine.name} loaded {found.source} as {image_id}, expected {config_digest}"
            )
        install_layout(staging / "layout", layout)
    except OSError as exc:  # the cache's disk: full, or not writable
        raise OperationError(f"cannot keep {found.source} in {layout.parent}: {exc}") from None
    finally:
        release(staging)
    touch(layout)
    return image_id


def substitute(
    repository: str | None, lock: Lock, engine: Engine, *, on_line: LineCallback
) -> tuple[tuple[Canonical, str] | None, bool]:
    """The canonical image of `lock` taken from `repository` and loaded into `engine`, and
    where it came from; None (with one line saying why, unless the registry simply lacks
    it) when the build has to run. Second: whether the registry answered, so that the
    build asks it for more (a system stage) or not."""
    if not repository:
        on_line("substitution: skipped, no [registry] repository; building locally")
        return None, False
    try:
        found = find_substitute(repository, lock)
    except ImagesmithError as exc:  # unreachable, unauthorized, or not an image of this lock
        on_line(f"substitution: skipped, {exc}; building locally")
        return None, isinstance(exc, NotSubstituted)
    if found is None:
        on_line(f"substitution: {repository} has no {content_tag(lock)}; building")
        return None, True
    on_line(f"substitution: taking {found.source} ({found.digest[:19]}) from the registry")
    try:
        image_id = load_from_registry(found, engine, lock=lock)
    except ImagesmithError as exc:
        on_line(f"substitution: skipped, {exc}; building locally")
        return None, True
    layout = layout_dir(found.digest)
    return (Canonical(image_id=image_id, digest=found.digest, layout=layout), found.source), True
