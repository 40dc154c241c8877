"""The input archive: every file a lock builds from, kept in the lab's registry.

Debian drops a `.deb` from its archive soon after a newer version replaces it, and an
index may lose a wheel; a lock that pins them then no longer builds from there. So
`imagesmith push` also stores, in the image's own repository, each `.deb` and wheel the
lock pins, as one OCI artifact manifest whose `subject` is the image (for registries
with the referrers API) and whose tag is `lock-<hash>.inputs` (for those without).

Each .deb and wheel is a blob addressed by the sha256 the lock records for it, so a later
build asks the registry for exactly `sha256:<pinned>` and needs nothing else to find it; a
second image that shares files with the first adds only the blobs that are new. What
comes back is checked against that digest as it streams. The files `[image] copy` takes
are in it too, one tar per copy, titled by the tree hash the lock pins and checked
against it (`imagesmith.inputs.copies`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, RegistryError
from imagesmith.model.lock import Lock
from imagesmith.model.reference import ImageReference
from imagesmith.progress import LineCallback
from imagesmith.registry.artifacts import MANIFEST_TYPE, artifact_manifest, push_empty_config
from imagesmith.registry.client import Pusher, RegistryClient
from imagesmith.render.containerfile import content_tag

ARTIFACT_TYPE = "application/vnd.imagesmith.inputs.v1"
DEB_TYPE = "application/vnd.debian.binary-package"
WHEEL_TYPE = "application/vnd.imagesmith.python-wheel"
TOOL_TYPE = "application/vnd.imagesmith.tool-wheel"
"""The wheel of the imagesmith that wrote the lock (its sha256 is the lock's imagesmith_wheel)."""
# The OCI 1.1 empty descriptor: an artifact manifest's config when it has none.
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
TITLE = "org.opencontainers.image.title"
LOCK_HASH = "dev.imagesmith.lock-hash"


@dataclass(frozen=True)
class InputFile:
    """One file the lock pins, as the host holds it."""

    media_type: str
    name: str
    """The file's name (`libc6_2.36-9+deb12u9_amd64.deb`), kept as the blob's title."""
    digest: str
    """sha256:... of the file, the one the lock records."""
    size: int
    path: Path


@dataclass(frozen=True)
class PushedInputs:
    digest: str
    """The artifact manifest's digest."""
    tag: str
    files: int
    new_files: int
    new_bytes: int


def collect_inputs(lock: Lock, *, on_line: LineCallback | None = None) -> list[InputFile]:
    """The files `lock` builds from, as the host's caches hold them (fetched if missing)."""
    from imagesmith.inputs.context import fetch_wheels
    from imagesmith.inputs.copies import COPY_TYPE, copy_blobs, copy_title
    from imagesmith.inputs.debs import fetch_debs

    files: list[InputFile] = []
    debs = fetch_debs(lock.apt, on_line=on_line)
    for package in lock.apt.packages:
        files.append(
            input_file(
                DEB_TYPE, debs[package.name], f"sha256:{package.sha256}", name=package.file_name
            )
        )
    python = lock.python
    if python is not None and python.packages:
        allowed = {h for p in python.packages for h in p.hashes}
        for wheel in sorted((fetch_wheels(python, on_line=on_line) / "wheels").glob("*.whl")):
            item = input_file(WHEEL_TYPE, wheel)
            if item.digest not in allowed:
                raise RegistryError(
                    f"{wheel} is not a file {lock.spec_path.stem}.lock pins; not archiving it"
                )
            files.append(item)
    tool = _tool_file(lock, on_line)
    if tool is not None:
        files.append(tool)
    for copy, path in copy_blobs(lock):
        files.append(input_file(COPY_TYPE, path, name=copy_title(copy)))
    return files


def _tool_file(lock: Lock, on_line: LineCallback | None) -> InputFile | None:
    """The wheel of the imagesmith that wrote `lock`, when that is this one (kept in the
    cache so that it is pushed from a file like every other input)."""
    from imagesmith.inputs.context import cache_dir
    from imagesmith.inputs.tool_wheel import tool_wheel, wheel_name

    if lock.imagesmith_wheel is None:
        return None
    digest, data = tool_wheel()
    if digest != lock.imagesmith_wheel:
        if on_line:
            on_line(
                f"push: {lock.spec_path.stem}.lock was written by another imagesmith "
                f"({lock.imagesmith_version}, wheel {lock.imagesmith_wheel[:19]}...); "
                "its wheel is not archived from here"
            )
        return None
    path = (
        cache_dir() / "tool" / digest.removeprefix("sha256:") / wheel_name(lock.imagesmith_version)
    )
    if not path.is_file() or file_digest(path) != digest:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tool.", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    return input_file(TOOL_TYPE, path, digest)


def inputs_tag(lock: Lock) -> str:
    """The tag the lock's input archive goes under: `lock-<hash>.inputs`."""
    return content_tag(lock) + ".inputs"


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def input_file(
    media_type: str, path: Path, digest: str | None = None, *, name: str | None = None
) -> InputFile:
    """An InputFile for `path`, hashing it unless its digest is given (already checked)."""
    return InputFile(
        media_type=media_type,
        name=name or path.name,
        digest=digest or file_digest(path),
        size=path.stat().st_size,
        path=path,
    )


def archive_manifest(
    files: Sequence[InputFile],
    *,
    subject_digest: str | None,
    subject_size: int,
    lock_hash: str,
) -> bytes:
    """The artifact manifest for `files`: the same files and image give the same bytes.
    Without a subject (the image is not built yet: `build --on kubernetes`), the archive
    is found by its tag alone."""
    layers = [
        {
            "mediaType": f.media_type,
            "digest": f.digest,
            "size": f.size,
            "annotations": {TITLE: f.name},
        }
        for f in sorted(files, key=lambda f: (f.media_type, f.name, f.digest))
    ]
    return artifact_manifest(
        artifact_type=ARTIFACT_TYPE,
        layers=layers,
        subject=(
            {"mediaType": MANIFEST_TYPE, "digest": subject_digest, "size": subject_size}
            if subject_digest is not None
            else None
        ),
        annotations={LOCK_HASH: lock_hash},
    )


def push_inputs(
    files: Sequence[InputFile],
    repository: ImageReference,
    *,
    lock: Lock,
    subject_digest: str | None,
    subject_size: int,
    on_line: LineCallback | None = None,
) -> PushedInputs:
    """Upload the files the registry lacks, then the manifest that keeps them together."""
    client = RegistryClient(repository.registry)
    pusher = Pusher(client, repository.path, on_line)
    new_files = new_bytes = 0
    for item in sorted(files, key=lambda f: f.name):
        if pusher.has_blob(item.digest):
            continue
        if on_line:
            on_line(f"push: input {item.name} ({item.size / 1e6:.1f} MB)")
        pusher.push_blob(item.digest, item.path)
        new_files += 1
        new_bytes += item.size
    push_empty_config(pusher)
    manifest = archive_manifest(
        files, subject_digest=subject_digest, subject_size=subject_size, lock_hash=lock.lock_hash
    )
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    tag = inputs_tag(lock)
    confirmed = pusher.push_manifest(digest, manifest, MANIFEST_TYPE)
    if confirmed and confirmed != digest:
        raise RegistryError(
            f"{repository.registry} stored the input archive as {confirmed}, expected {digest}"
        )
    pusher.push_manifest(tag, manifest, MANIFEST_TYPE)
    return PushedInputs(
        digest=digest, tag=tag, files=len(files), new_files=new_files, new_bytes=new_bytes
    )


def fetch_input(
    repository: ImageReference, digest: str, dest: Path, *, mode: int = 0o600
) -> str | None:
    """Download blob `digest` from the lab's registry to `dest` (checked, given `mode`,
    then renamed into place); None when done, else why not, for a 'looked in' list."""
    where = f"{repository.registry}/{repository.path}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as sink:
            found = RegistryClient(repository.registry).download_blob(repository.path, digest, sink)
            sink.flush()
            os.fsync(sink.fileno())
        if not found:
            return f"{where}: not there"
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
        return None
    except RegistryError as exc:
        return str(exc)
    finally:
        Path(tmp).unlink(missing_ok=True)


def archived_names(repository: ImageReference, lock: Lock) -> dict[str, str]:
    """digest -> file name of what the lock's input archive holds ({} when it has none)."""
    return Archive(repository, inputs_tag(lock)).names()


@dataclass
class Archive:
    """One lock's input archive in the lab's registry, as a place a build fetches from.

    Its manifest is read once per build and is the list of what to ask for: a file it
    does not list, or a registry that cannot be reached, costs no further request (a
    build's many .debs never wait on a registry that is down, one timeout each)."""

    repository: ImageReference
    tag: str
    _names: dict[str, str] | None = None
    _absent: str = ""
    """Why the archive cannot serve anything (unreachable, no such tag), once known."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_lock(cls, repository: str | None, lock: Lock) -> Archive | None:
        if not repository:
            return None
        from imagesmith.model.reference import parse_reference

        try:
            return cls(parse_reference(repository), inputs_tag(lock))
        except ValueError:
            return None

    @property
    def where(self) -> str:
        return f"{self.repository.registry}/{self.repository.path}:{self.tag}"

    def names(self) -> dict[str, str]:
        """digest -> file name of the files the archive lists ({} when there is none)."""
        with self._lock:
            if self._names is None:
                self._names = self._read_names()
            return self._names

    def _read_names(self) -> dict[str, str]:
        client = RegistryClient(self.repository.registry)
        try:
            _, _, body = client.manifest(self.repository.path, self.tag)
            layers = json.loads(body).get("layers", [])
        except RegistryError as exc:
            missing = "does not exist" in str(exc)  # the tag: no archive was pushed there
            self._absent = f"{self.where}: " + ("no input archive there" if missing else str(exc))
            return {}
        except (ValueError, AttributeError):
            self._absent = f"{self.where}: not an input archive"
            return {}
        names: dict[str, str] = {}
        for layer in layers if isinstance(layers, list) else []:
            if not isinstance(layer, dict):
                continue
            digest, title = layer.get("digest"), (layer.get("annotations") or {}).get(TITLE)
            if isinstance(digest, str) and isinstance(title, str) and _safe_name(title):
                names[digest] = title
        return names

    def digest_of(self, title: str) -> str | None:
        """The digest of the file the archive lists under `title`, if it lists one."""
        return next((d for d, name in self.names().items() if name == title), None)

    def absent(self) -> str:
        """Why a file the archive does not list cannot come from it, for a 'looked in' list."""
        return self._absent or f"{self.where}: not there"

    def fetch(self, digest: str, dest: Path, *, mode: int = 0o600) -> str | None:
        """Fetch blob `digest` to `dest`; None when done, else why not."""
        if digest not in self.names():
            return self.absent()
        return fetch_input(self.repository, digest, dest, mode=mode)


def _safe_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in {".", ".."}


# -- a base image that exists only where it was made -----------------------------------

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"


def base_tag(lock: Lock) -> str:
    """The tag a local-only base goes under in the lab's repository: `base-<image ID>`."""
    return "base-" + lock.base.digest.removeprefix("sha256:")[:32]


def push_local_base(
    engine: Engine,
    lock: Lock,
    repository: ImageReference,
    *,
    on_line: LineCallback | None = None,
) -> str | None:
    """Push the lock's base when it exists only locally (made by `imagesmith base`), so
    that another machine can build the lock; its tag, or None when the base is public.

    The config is pushed byte for byte, so an engine that pulls it gets the very image
    ID the lock pins."""
    if not lock.base.local:
        return None
    from imagesmith.image.oci import LayoutWriter, canonical_json, open_image
    from imagesmith.registry.client import push_layout

    tag = base_tag(lock)
    if RegistryClient(repository.registry).has_manifest(repository.path, tag):
        return tag  # already there: the tag names the image ID
    if on_line:
        on_line(f"push: the local base {lock.base.digest[:19]} as {repository.path}:{tag}")
    with tempfile.TemporaryDirectory(prefix="imagesmith-base-") as tmp:
        saved = Path(tmp) / "base.tar"
        engine.save(lock.base.digest, saved)
        layout = LayoutWriter(Path(tmp) / "layout")
        with open_image(saved) as image:
            config = layout.add_bytes(CONFIG_TYPE, image.config)
            layers = []
            for index in range(len(image.layer_names)):
                with (
                    layout.blob_writer() as (writer, result),
                    gzip.GzipFile(fileobj=writer, mode="wb", compresslevel=1, mtime=0) as gz,
                ):
                    shutil.copyfileobj(image.open_layer(index), gz, 1 << 20)
                layers.append({"mediaType": LAYER_TYPE, "digest": result[0], "size": writer.size})
        manifest = layout.add_bytes(
            MANIFEST_TYPE,
            canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST_TYPE,
                    "config": config.to_json(),
                    "layers": layers,
                }
            ),
        )
        layout.write_index(manifest, [])
        push_layout(Path(tmp) / "layout", repository, [tag], on_line=on_line)
    return tag


def ensure_base(engine: Engine, lock: Lock, archive: Archive | None) -> None:
    """Make sure the engine holds the lock's local-only base: pulled from the lab's
    registry when it is not in the engine's store, or an error saying where it looked."""
    if not lock.base.local or engine.image_exists(lock.base.digest):
        return
    looked = [f"{engine.name}'s image store"]
    if archive is None:  # else the engine would try Docker Hub for an image ID
        raise EngineError(
            f"the base {lock.base.reference} ({lock.base.digest[:19]}) is not in "
            f"{engine.name}'s image store: it exists only where it was made. Made by "
            f"`imagesmith base`? Make it here with `imagesmith base --suite "
            f"{lock.apt.suite or 'SUITE'} -e {engine.name}` (the same --epoch gives the same "
            "image). Or, where it exists, push the image with its inputs (`imagesmith push`, "
            "with [registry] repository set)"
        )
    from imagesmith.registry.client import CredentialHelperError, find_credentials

    pinned = f"{archive.repository.familiar_repository}:{base_tag(lock)}"
    try:
        credentials = find_credentials(archive.repository.registry)
    except CredentialHelperError as exc:  # an open registry needs none: try without, say why
        credentials = None
        looked.append(str(exc))
    auth = (
        {"username": credentials.username, "password": credentials.password}
        if credentials
        else None
    )
    try:
        pulled = engine.pull(pinned, auth=auth)
    except EngineError as exc:
        looked.append(f"{pinned} ({exc})")
    else:
        if pulled == lock.base.digest:
            return
        engine.remove_image(pinned, force=True)
        looked.append(f"{pinned} (holds {pulled[:19]}, not the pinned image)")
    raise EngineError(
        f"the base {lock.base.reference} ({lock.base.digest[:19]}) exists only on the "
        f"machine that made it; looked in: {'; '.join(looked)}. Push from there with "
        "`imagesmith push` (it stores the base with the input archive), or make it again "
        "with `imagesmith base` and the same --epoch"
    )
