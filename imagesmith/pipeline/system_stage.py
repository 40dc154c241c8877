"""The system stage shared through the lab's registry: base plus apt closure, built once.

Two locks with the same base, apt closure, user and epoch render the same system stage
(`render.system_stage_text`) and so build the same layers. When one of them is built
with the registry as a cache (`build --push`, `--substitute`), the canonical form of
its system stage is kept in imagesmith's cache, and `push` stores it in `[registry]
repository` under the tag `system-KEY` (KEY: a hash of the stage's Containerfile lines
and of the .debs it installs). A builder of another lock whose system stage has the same
KEY takes it from there (every blob checked against its digest), loads it into its
engine, and runs only the Python steps on top: no .deb is fetched and no apt step runs.
The final image is made canonical as always, so its digest is the one a build from
scratch gives (the stage's layers are canonical already, and making them canonical again
changes nothing).

On one machine, the engine's own build of a lock's system stage is noted by its image ID
(`remember_built`, under the same KEY and the engine's name), and the next build of a lock
with that KEY starts from that image while the engine holds it (`built_here`), instead of
asking the engine's cache, which after a `--no-cache` build holds look-alike chains of the
stage's steps (podman then ran apt again).

Like substitution, this trusts the registry to hold what an honest build made;
`imagesmith verify` (never substituted) is the check. Every reason not to take the stage
(no tag, an unreachable registry, bytes that do not match) is one line, and the stage is
built here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path

from imagesmith.cache.gc import touch
from imagesmith.cache.integrity import write_bytes_durably
from imagesmith.engine.base import Engine
from imagesmith.errors import ImagesmithError
from imagesmith.inputs.context import cache_dir, layout_dir
from imagesmith.model.lock import LOCK_FORMAT, Lock
from imagesmith.model.reference import ImageReference
from imagesmith.pipeline.canonical_build import Canonical, rewrite_into
from imagesmith.progress import LineCallback
from imagesmith.registry.client import push_layout
from imagesmith.render.containerfile import system_stage_text

TAG_PREFIX = "system-"


def stage_key(lock: Lock, epoch: int) -> str:
    """The hash of everything the system stage is made from: its Containerfile lines
    (base digest, .deb file names, user, epoch), the .debs' sha256 and the lock format."""
    facts = {
        "format": LOCK_FORMAT,
        "containerfile": system_stage_text(lock, epoch),
        "debs": sorted(f"{p.name}={p.sha256}" for p in lock.apt.packages),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def stage_tag(lock: Lock, epoch: int) -> str:
    return TAG_PREFIX + stage_key(lock, epoch)[:32]


def _record_path(key: str) -> Path:
    return cache_dir() / "system-stages" / f"{key}.json"


def _built_path(engine: Engine, key: str) -> Path:
    return cache_dir() / "system-stages" / f"{key}.{engine.name}-image"


_IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def remember_built(engine: Engine, lock: Lock, epoch: int, image_id: str) -> None:
    """Note `image_id` as `engine`'s latest build of `lock`'s system stage, for
    `built_here`. A shortcut only: a note that cannot be written is skipped."""
    path = _built_path(engine, stage_key(lock, epoch))
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_durably(path, image_id.encode("ascii"))


def built_here(engine: Engine, lock: Lock, epoch: int) -> str | None:
    """The image ID of `lock`'s system stage as `engine` last built it here, when the
    engine still holds it; else None.

    A build starts from it instead of asking the engine's cache for the stage's steps:
    after a `--no-cache` build, podman's cache holds two look-alike chains of the stage
    and may take the COPY of one and find no apt step under it, running apt again
    (8 s for the example's 70 packages). The ID names the image's content, so an image
    the engine holds under it is the stage, whoever made it."""
    path = _built_path(engine, stage_key(lock, epoch))
    try:
        image_id = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not _IMAGE_ID.fullmatch(image_id) or not engine.image_exists(image_id):
        return None
    return image_id


def keep_stage(
    engine: Engine, system_id: str, lock: Lock, *, epoch: int, workdir: Path
) -> Canonical:
    """Make the built system stage `system_id` canonical into imagesmith's cache and note
    it under its key, for `push_stage`. Its layers are mostly in the layer cache already
    (the build's prewarm rewrote them), so this costs little."""
    canonical = rewrite_into(engine, system_id, epoch=epoch, workdir=workdir)
    path = _record_path(stage_key(lock, epoch))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_durably(path, json.dumps({"digest": canonical.digest}).encode())
    return canonical


def kept_stage(lock: Lock, epoch: int) -> Path | None:
    """The canonical layout of `lock`'s system stage when this machine built it, else None."""
    try:
        digest = json.loads(_record_path(stage_key(lock, epoch)).read_text())["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    layout = layout_dir(str(digest))
    return layout if (layout / "index.json").exists() else None


def push_stage(
    lock: Lock, epoch: int, repository: ImageReference, *, on_line: LineCallback | None
) -> str | None:
    """Store the system stage this machine built for `lock` in `repository` under its
    `system-KEY` tag (its layers are the image's lower layers: only the config and the
    manifest are new); the tag, or None when there is no such stage here."""
    layout = kept_stage(lock, epoch)
    if layout is None:
        return None
    tag = stage_tag(lock, epoch)
    push_layout(layout, repository, [tag])
    touch(layout)
    if on_line:
        on_line(f"push: system stage {repository.familiar_repository}:{tag}")
    return tag


def shareable(lock: Lock) -> bool:
    """Whether `lock`'s system stage is worth sharing: it installs apt packages, and
    Python steps come after it (else the stage is the image, which substitution shares)."""
    return bool(lock.apt.packages) and lock.python is not None and bool(lock.python.packages)


def take_stage(
    repository: str, lock: Lock, engine: Engine, *, epoch: int, on_line: LineCallback
) -> str | None:
    """The system stage of `lock` taken from `repository` and loaded into `engine` (its
    image ID); None, with one line saying why unless the registry simply lacks it, when
    the stage has to be built here."""
    from imagesmith.pipeline.substitute import find_manifest, load_from_registry

    try:
        found = find_manifest(repository, stage_tag(lock, epoch))
        if found is None:
            return None
        on_line(f"system stage: taking {found.source} ({found.digest[:19]}) from the registry")
        return load_from_registry(found, engine)
    except ImagesmithError as exc:
        on_line(f"system stage: not taken from the registry, {exc}; building it here")
        return None
