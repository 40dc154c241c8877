"""Container image archives on disk: read docker-archive / OCI inputs, write OCI layouts.

Nothing here decides what a *canonical* image is (that is `imagesmith.image.canonical`);
this module only knows the file formats (`docker_archive` writes docker-archives,
`streams` holds the hashing and gzip streams):

- docker-archive: what ``docker save`` and ``podman save --format docker-archive``
  write. A tar with ``manifest.json`` (``[{"Config": ..., "RepoTags": [...],
  "Layers": [...]}]``). Docker 20.10 names layers ``<id>/layer.tar``; podman 4.3
  names them ``<diff_id>.tar`` (and adds ``<id>/layer.tar`` symlinks to them);
  docker 25+ writes ``blobs/sha256/<hex>`` plus an OCI ``index.json`` beside it.
  Layers may be plain tars or compressed; we look at magic bytes, never at names.
- OCI image layout, as a directory or as a tar (``oci-archive``): ``oci-layout``,
  ``index.json``, ``blobs/sha256/...``.

Everything is streamed: a layer is never held in memory, only spooled to a
temporary file when it has to be decompressed before it can be read twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import posixpath
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from imagesmith.cache.integrity import WritebackSink, remember, write_bytes_durably
from imagesmith.errors import InputError
from imagesmith.image.streams import HashingWriter, seekable_uncompressed

MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

#: Annotation keys used in index.json to name an image (OCI, and what containerd reads).
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; anything else is an InputError."""
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InputError(f"not a sha256 digest: {digest!r}")
    return hexpart


def canonical_json(obj: object) -> bytes:
    """The one serialisation imagesmith hashes: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


# --------------------------------------------------------------------------- reading


def parse_config(config: bytes, description: str) -> dict[str, Any]:
    """An image config blob as a JSON object; InputError naming `description` if it is not."""
    try:
        obj = json.loads(config)
    except ValueError as exc:
        raise InputError(f"{description}: image config is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InputError(f"{description}: image config is not a JSON object")
    return obj


@dataclass
class ImageSource:
    """One image read from an archive or layout: config bytes plus a way to open layers.

    Use as a context manager (or call `close`); layer streams it returns stay valid
    until then.
    """

    description: str
    config: bytes
    layer_names: list[str]
    repo_tags: list[str]
    manifest: bytes | None = None
    """The manifest bytes when the source has one (OCI layouts); None for docker-archive."""
    layer_digests: list[str | None] = field(default_factory=list)
    """Blob digests when the source names them (OCI layouts), else None per layer."""
    _tar: tarfile.TarFile | None = None
    _root: Path | None = None
    _closers: list[IO[bytes]] = field(default_factory=list)

    def config_json(self) -> dict[str, Any]:
        return parse_config(self.config, self.description)

    def open_layer_raw(self, index: int) -> IO[bytes]:
        """The layer blob as stored (maybe compressed), seekable."""
        name = self.layer_names[index]
        if self._root is not None:
            path = self._root / name
            try:
                f: IO[bytes] = path.open("rb")
            except OSError as exc:
                raise InputError(f"{self.description}: cannot open layer {name}: {exc}") from exc
            self._closers.append(f)
            return f
        assert self._tar is not None
        return _tar_member(self._tar, name, self.description)

    def open_layer(self, index: int) -> IO[bytes]:
        """The layer as an uncompressed, seekable tar stream."""
        raw = self.open_layer_raw(index)
        out = seekable_uncompressed(raw, what=f"{self.description} layer {index}")
        if out is not raw:
            self._closers.append(out)
        return out

    def close(self) -> None:
        for f in reversed(self._closers):
            with contextlib.suppress(OSError):
                f.close()
        self._closers.clear()
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _tar_member(tar: tarfile.TarFile, name: str, description: str) -> IO[bytes]:
    name = posixpath.normpath(name.lstrip("/"))
    try:
        member = tar.getmember(name)
    except KeyError:
        try:
            member = tar.getmember("./" + name)
        except KeyError:
            raise InputError(f"{description}: archive has no member {name!r}") from None
    try:
        f = tar.extractfile(member)  # follows symlinks and hardlinks inside the archive
    except (KeyError, tarfile.TarError) as exc:
        raise InputError(f"{description}: cannot read member {name!r}: {exc}") from exc
    if f is None:
        raise InputError(f"{description}: member {name!r} is not a file")
    return f


def _read_member(tar: tarfile.TarFile, name: str, description: str) -> bytes:
    with _tar_member(tar, name, description) as f:
        return f.read()


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        machine, machine
    )


def _pick_manifest(
    index: Mapping[str, Any],
    read_blob: Callable[[str], bytes],
    description: str,
    depth: int = 0,
) -> tuple[bytes, list[str]]:
    """Follow an OCI index down to one image manifest; returns (bytes, ref names)."""
    if depth > 4:
        raise InputError(f"{description}: image indexes nested too deeply")
    descs = index.get("manifests")
    if not isinstance(descs, list) or not descs:
        raise InputError(f"{description}: index.json lists no manifests")
    by_digest: dict[str, dict[str, Any]] = {}
    names: dict[str, list[str]] = {}
    for d in descs:
        if not isinstance(d, dict) or not isinstance(d.get("digest"), str):
            raise InputError(f"{description}: malformed descriptor in index.json")
        by_digest.setdefault(d["digest"], d)
        ann = d.get("annotations") or {}
        ref = ann.get(ANNOTATION_CONTAINERD_NAME) or ann.get(ANNOTATION_REF_NAME)
        if isinstance(ref, str):
            names.setdefault(d["digest"], []).append(ref)
    chosen: dict[str, Any]
    if len(by_digest) == 1:
        chosen = next(iter(by_digest.values()))
    else:
        arch = _host_arch()
        fits = [
            d
            for d in by_digest.values()
            if (d.get("platform") or {}).get("os") == "linux"
            and (d.get("platform") or {}).get("architecture") == arch
        ]
        if len(fits) != 1:
            raise InputError(
                f"{description}: holds {len(by_digest)} images; cannot tell which one to use"
            )
        chosen = fits[0]
    data = read_blob(chosen["digest"])
    if sha256_bytes(data) != chosen["digest"]:
        raise InputError(f"{description}: manifest {chosen['digest']} does not match its digest")
    obj = json.loads(data)
    media = obj.get("mediaType") or chosen.get("mediaType")
    if media in (MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST) or "manifests" in obj:
        inner, inner_names = _pick_manifest(obj, read_blob, description, depth + 1)
        return inner, inner_names or names.get(chosen["digest"], [])
    return data, names.get(chosen["digest"], [])


def _from_oci(
    description: str,
    read_blob: Callable[[str], bytes],
    index_bytes: bytes,
) -> tuple[bytes, bytes, list[str], list[str], list[str]]:
    try:
        index = json.loads(index_bytes)
        manifest_bytes, names = _pick_manifest(index, read_blob, description)
        manifest = json.loads(manifest_bytes)
        config_digest = manifest["config"]["digest"]
        layer_digests = [str(layer["digest"]) for layer in manifest["layers"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{description}: malformed OCI layout: {exc}") from exc
    config = read_blob(config_digest)
    if sha256_bytes(config) != config_digest:
        raise InputError(f"{description}: config blob does not match its digest")
    layer_names = [f"blobs/sha256/{digest_hex(d)}" for d in layer_digests]
    return manifest_bytes, config, layer_names, layer_digests, names


def open_image(path: Path) -> ImageSource:
    """Open a docker-archive tar (plain or compressed), an OCI archive tar, an OCI
    layout directory, or a directory holding an unpacked docker-archive."""
    description = str(path)
    if path.is_dir():
        return _open_dir(path)
    try:
        raw: IO[bytes] = path.open("rb")
    except OSError as exc:
        raise InputError(f"cannot open image archive {path}: {exc}") from exc
    closers: list[IO[bytes]] = [raw]
    try:
        stream = seekable_uncompressed(raw, what=description)
        if stream is not raw:
            closers.append(stream)
        try:
            tar = tarfile.open(fileobj=stream, mode="r:", encoding="utf-8")  # noqa: SIM115
        except tarfile.TarError as exc:
            raise InputError(f"{description} is not a tar archive: {exc}") from exc
        names = set(tar.getnames())
        norm = {posixpath.normpath(n) for n in names}
        if "manifest.json" in norm:
            src = _docker_archive(description, tar)
        elif "index.json" in norm:
            manifest, config, layers, digests, refs = _from_oci(
                description,
                lambda d: _read_member(tar, f"blobs/sha256/{digest_hex(d)}", description),
                _read_member(tar, "index.json", description),
            )
            src = ImageSource(description, config, layers, refs, manifest, list(digests), tar)
        else:
            tar.close()
            raise InputError(
                f"{description} is neither a docker-archive (no manifest.json) nor an OCI "
                "archive (no index.json)"
            )
        src._closers.extend(closers)
        return src
    except BaseException:
        for f in closers:
            f.close()
        raise


def _docker_archive(description: str, tar: tarfile.TarFile) -> ImageSource:
    try:
        entries = json.loads(_read_member(tar, "manifest.json", description))
    except ValueError as exc:
        raise InputError(f"{description}: manifest.json is not JSON: {exc}") from exc
    if not isinstance(entries, list) or len(entries) != 1:
        count = len(entries) if isinstance(entries, list) else "no"
        raise InputError(f"{description}: manifest.json must describe one image, it has {count}")
    entry = entries[0]
    try:
        config_name = str(entry["Config"])
        layers = [str(x) for x in entry["Layers"]]
        tags = [str(x) for x in (entry.get("RepoTags") or [])]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{description}: malformed manifest.json: {exc}") from exc
    config = _read_member(tar, config_name, description)
    return ImageSource(description, config, layers, tags, None, [None] * len(layers), tar)


def _open_dir(path: Path) -> ImageSource:
    description = str(path)

    def read_file(rel: str) -> bytes:
        try:
            return (path / rel).read_bytes()
        except OSError as exc:
            raise InputError(f"{description}: cannot read {rel}: {exc}") from exc

    if (path / "index.json").is_file() and not (path / "manifest.json").is_file():
        manifest, config, layers, digests, refs = _from_oci(
            description,
            lambda d: read_file(f"blobs/sha256/{digest_hex(d)}"),
            read_file("index.json"),
        )
        return ImageSource(description, config, layers, refs, manifest, list(digests), _root=path)
    if (path / "manifest.json").is_file():
        try:
            entries = json.loads(read_file("manifest.json"))
            entry = entries[0]
            if len(entries) != 1:
                raise InputError(f"{description}: manifest.json must describe one image")
            layers = [str(x) for x in entry["Layers"]]
            config = read_file(str(entry["Config"]))
            tags = [str(x) for x in (entry.get("RepoTags") or [])]
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise InputError(f"{description}: malformed manifest.json: {exc}") from exc
        return ImageSource(
            description, config, layers, tags, None, [None] * len(layers), _root=path
        )
    raise InputError(f"{description} holds neither index.json nor manifest.json")


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class LayoutWriter:
    """Builds an OCI image layout in a fresh directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": "1.0.0"}))

    def add_bytes(self, media_type: str, data: bytes) -> Descriptor:
        digest = sha256_bytes(data)
        target = self.blobs / digest_hex(digest)
        if not target.exists():
            write_bytes_durably(target, data)
        return Descriptor(media_type, digest, len(data))

    @contextlib.contextmanager
    def blob_writer(self) -> Iterator[tuple[HashingWriter, list[str]]]:
        """Yields (writer, result) ; after the block, ``result[0]`` is the blob digest."""
        fd, tmp_name = tempfile.mkstemp(prefix=".incoming-", dir=self.blobs)
        tmp = Path(tmp_name)
        result: list[str] = []
        try:
            with os.fdopen(fd, "wb") as f:
                sink = WritebackSink(f)
                writer = HashingWriter(sink)
                yield writer, result
                sink.sync()  # whole on disk before it has its name
            digest = writer.digest
            target = self.blobs / digest_hex(digest)
            tmp.replace(target)
            remember(target, digest)
            result.append(digest)
        finally:
            if tmp.exists():
                tmp.unlink()

    def write_index(self, manifest: Descriptor, repo_tags: Sequence[str]) -> None:
        descs: list[dict[str, Any]] = []
        for tag in repo_tags:
            d = manifest.to_json()
            d["annotations"] = {
                ANNOTATION_CONTAINERD_NAME: tag,
                ANNOTATION_REF_NAME: tag_of(tag),
            }
            descs.append(d)
        if not descs:
            descs.append(manifest.to_json())
        index = {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": descs}
        write_bytes_durably(self.root / "index.json", canonical_json(index))


def tag_of(ref: str) -> str:
    """``registry:5000/repo/name:tag`` -> ``tag`` (``latest`` when there is none)."""
    last = ref.rsplit("/", 1)[-1]
    if "@" in last:
        return last.split("@", 1)[1]
    return last.split(":", 1)[1] if ":" in last else "latest"
