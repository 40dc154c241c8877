"""Make an engine-built image canonical, so that its digest depends on the build inputs only.

Docker and podman stamp every image with when, where and by what it was built:
timestamps in the config and in every tar header, host names, engine versions,
tar entry order, user and group names, gzip headers, mount-point placeholders.
`canonicalize` rewrites a saved image (docker-archive, or any OCI layout) into a
form where all of that is gone, and writes it as an OCI image layout plus a
docker-archive that either engine can load back; `canonicalize_local` reads the
engine's overlay store instead. This module runs the rewrite layer by layer; the
rules live beside it (`paths`, `layer_plan`, `layer_writer`, `config`,
`layer_cache`) and are written down, with the reasons for them, in docs/canonical.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imagesmith.cache.integrity import link_over
from imagesmith.engine.base import disk_full_message
from imagesmith.engine.overlay import FileInfo, LocalImage, NotReadable, read_diff_dir
from imagesmith.errors import InputError, OperationError
from imagesmith.image.config import canonical_config, layer_created_by, rfc3339
from imagesmith.image.docker_archive import write_docker_archive
from imagesmith.image.layer_cache import CachedLayer, LayerCache, engine_diff_ids, layer_keys
from imagesmith.image.layer_plan import LowerDirs, plan_layer
from imagesmith.image.layer_writer import LayerOut, MtimePolicy, Opener, write_layer
from imagesmith.image.oci import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    Descriptor,
    ImageSource,
    LayoutWriter,
    canonical_json,
    digest_hex,
    open_image,
    parse_config,
)
from imagesmith.image.tar_entries import read_entries

__all__ = ["CanonicalImage", "canonicalize", "canonicalize_local"]

_MAX_EPOCH = 8**11 - 1  # the largest mtime a ustar header holds


@dataclass(frozen=True)
class CanonicalImage:
    """What `canonicalize` wrote.

    ``manifest_digest`` is the registry digest (``repo@sha256:...``) a push of the
    layout's blobs reproduces; ``config_digest`` is the image ID docker and podman
    show after loading ``archive``.
    """

    manifest_digest: str
    config_digest: str
    layer_digests: tuple[str, ...]
    """sha256 of each gzip blob, bottom layer first."""
    diff_ids: tuple[str, ...]
    """sha256 of each uncompressed layer tar (the config's ``rootfs.diff_ids``)."""
    layer_sizes: tuple[int, ...]
    """Compressed size of each layer blob in bytes."""
    layout: Path
    """The OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``)."""
    archive: Path | None
    """``layout / "image.tar"``, a docker-archive for ``docker load``/``podman load``."""
    repo_tags: tuple[str, ...]
    removed: tuple[str, ...]
    """What the cleaning removed, as ``"layer N: path (reason)"`` lines."""
    dropped_layers: tuple[int, ...]
    """Indexes (in the input) of layers that were empty after cleaning."""

    @property
    def image_id(self) -> str:
        return self.config_digest


def _check_epoch(epoch: int, policy: str) -> None:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= _MAX_EPOCH:
        raise InputError(f"epoch must be a whole number of seconds since 1970, got {epoch!r}")
    if policy not in ("clamp", "epoch"):
        raise InputError(f"unknown mtime policy {policy!r} (use 'clamp' or 'epoch')")
    if policy == "clamp" and epoch > time.time() + 60:
        raise InputError(
            f"epoch {epoch} ({rfc3339(epoch)}) is in the future: clamping timestamps to it "
            "would keep the build's own times (use a SOURCE_DATE_EPOCH before the build)"
        )


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A staging folder beside `out`, moved to `out` when the block succeeds; removed
    whatever happens. OSError, there or in the block, becomes OperationError."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise OperationError(f"cannot create {out}: {exc}") from exc
    try:
        yield staging
        _install(staging, out)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:  # said of the cache folder, not of a staging one
            where = next(p for p in out.parents if not p.name.startswith("."))
            raise OperationError(f"canonical: {disk_full_message(str(where))}") from None
        raise OperationError(f"cannot write canonical image to {out}: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _install(staging: Path, out: Path) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InputError(f"{out} exists and is not a directory")
    if out.is_dir():
        if any(out.iterdir()):
            if not (out / "oci-layout").is_file():
                raise InputError(
                    f"{out} is not empty and not an OCI layout; refusing to replace it"
                )
            shutil.rmtree(out)
        else:
            out.rmdir()
    staging.rename(out)


@dataclass(frozen=True)
class _Rules:
    """How every layer of one image is rewritten."""

    epoch: int
    policy: MtimePolicy
    drop_paths: tuple[str, ...]
    plain_dir: Path | None
    """Where to keep an uncompressed copy of each layer rewritten, or None."""


def canonicalize(
    archive: Path,
    out: Path,
    *,
    epoch: int,
    repo_tags: Sequence[str] = (),
    mtime_policy: MtimePolicy = "clamp",
    write_archive: bool = True,
    drop_paths: Sequence[str] = (),
    cache: LayerCache | None = None,
    plain_dir: Path | None = None,
) -> CanonicalImage:
    """Rewrite the image in `archive` canonically into the OCI layout directory `out`.

    `archive`: a docker-archive (``docker save``, ``podman save --format
    docker-archive``, plain or compressed), an OCI archive or an OCI layout
    directory. `epoch`: SOURCE_DATE_EPOCH of the build. `repo_tags` name the image
    in ``index.json`` and in ``out/image.tar`` (written unless `write_archive` is
    false). `drop_paths`: fnmatch patterns (``*`` crosses ``/``) of layer entries to
    leave out of every layer but the first, e.g. `VOLATILE_PATHS`; a dropped entry
    lets the lower layers' version of the path show through (the base's file, or
    nothing), and a whiteout of a matching path goes only when it hides nothing.
    `cache`: layers rewritten before (see `LayerCache`), looked up by the diff_ids in
    the input's config, which are trusted to match its layers, as engines guarantee.
    `plain_dir`: where to keep an uncompressed copy of each layer rewritten (not those
    from `cache`), as ``<diff_id hex>.tar``, for `write_docker_archive`'s
    `plain_layers`. `out` is created; an existing empty directory or OCI layout there
    is replaced. Raises InputError for
    unreadable or unsupported input and OperationError when writing fails.
    """
    _check_epoch(epoch, mtime_policy)
    out = Path(out)
    rules = _Rules(epoch, mtime_policy, tuple(drop_paths), plain_dir)
    with _staged(out) as staging:
        with open_image(Path(archive)) as src:
            image = _canonicalize_into(
                src.config_json(),
                len(src.layer_names),
                functools.partial(_tar_layer, src),
                staging,
                description=src.description,
                repo_tags=repo_tags,
                rules=rules,
                cache=cache,
            )
        if write_archive:
            write_docker_archive(staging, staging / "image.tar", repo_tags=repo_tags)
    archive_out = out / "image.tar" if write_archive else None
    return dataclasses.replace(image, layout=out, archive=archive_out)


LayerRead = tuple[dict[str, tarfile.TarInfo], Opener]
"""A layer's entries by path, and how to open a regular file's content."""
ReadLayer = Callable[[int, str], contextlib.AbstractContextManager[LayerRead]]
"""Opens layer `index` (described as `what` in errors) for reading."""


@contextlib.contextmanager
def _tar_layer(src: ImageSource, index: int, what: str) -> Iterator[LayerRead]:
    stream = src.open_layer(index)
    try:
        with tarfile.open(fileobj=stream, mode="r:", encoding="utf-8") as tar:
            yield read_entries(tar, what), tar.extractfile
    except tarfile.TarError as exc:
        raise InputError(f"{what} is not a valid tar: {exc}") from exc
    finally:
        stream.close()


def _open_file(member: tarfile.TarInfo) -> IO[bytes]:
    assert isinstance(member, FileInfo)
    try:
        return open(member.source, "rb")  # closed by write_layer
    except OSError as exc:  # the image went away, or a file we may not read
        raise NotReadable(f"{member.source}: {exc}") from exc


@contextlib.contextmanager
def _dir_layer(local: LocalImage, index: int, what: str) -> Iterator[LayerRead]:
    try:
        entries = read_diff_dir(local.diff_dirs[index])
    except OSError as exc:
        raise NotReadable(f"{what}: {exc}") from exc
    yield entries, _open_file


def canonicalize_local(
    local: LocalImage,
    out: Path,
    *,
    epoch: int,
    mtime_policy: MtimePolicy = "clamp",
    drop_paths: Sequence[str] = (),
    cache: LayerCache | None = None,
    plain_dir: Path | None = None,
) -> CanonicalImage:
    """`canonicalize` reading the engine's overlay store instead of a saved archive.

    The same output byte for byte. Raises `NotReadable` (nothing written) when a layer
    that has to be rewritten cannot be read from the store; the caller then saves the
    image and uses `canonicalize`. `plain_dir`: where to keep an uncompressed copy of
    each layer rewritten (not those taken from `cache`), named ``<diff_id hex>.tar``.
    """
    _check_epoch(epoch, mtime_policy)
    out = Path(out)
    raw = parse_config(local.config, local.description)
    with _staged(out) as staging:
        image = _canonicalize_into(
            raw,
            len(local.diff_dirs),
            functools.partial(_dir_layer, local),
            staging,
            description=local.description,
            repo_tags=(),
            rules=_Rules(epoch, mtime_policy, tuple(drop_paths), plain_dir),
            cache=cache,
        )
    return dataclasses.replace(image, layout=out)


@dataclass
class _Rewrite:
    """One image's rewrite so far: the layers written, and what the cleaning left out."""

    layout: LayoutWriter
    rules: _Rules
    lower: LowerDirs = field(default_factory=LowerDirs)
    removed: list[str] = field(default_factory=list)
    layers: list[LayerOut] = field(default_factory=list)
    created_by: list[str | None] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def take_cached(
        self, index: int, hit: CachedLayer, cache: LayerCache, created_by: str | None
    ) -> None:
        """Layer `index` as `cache` holds it."""
        self.removed.extend(hit.removed)
        if hit.digest is None:
            self.dropped.append(index)
            return
        kept = self.layout.blobs / digest_hex(hit.digest)
        if not kept.exists():  # content-addressed: one there is the same
            link_over(cache.blob(hit.digest), kept)
        self.layers.append(LayerOut(hit.digest, hit.diff_id, hit.size))
        self.created_by.append(created_by)

    def rewrite(
        self, index: int, read_layer: ReadLayer, what: str, created_by: str | None
    ) -> LayerOut | None:
        """Plan and write layer `index`; None when the cleaning left it empty (dropped)."""
        rules = self.rules
        with read_layer(index, what) as (entries, open_data):
            records = plan_layer(
                entries,
                index=index,
                lower=self.lower,
                what=what,
                removed=self.removed,
                drop_paths=rules.drop_paths,
            )
            out: LayerOut | None = None
            if records:
                out = write_layer(
                    self.layout,
                    records,
                    open_data,
                    epoch=rules.epoch,
                    policy=rules.policy,
                    plain_dir=rules.plain_dir,
                )
                self.layers.append(out)
                self.created_by.append(created_by)
            else:
                self.dropped.append(index)
        self.lower.apply(records, rules.drop_paths)
        return out

    def cached(self, out: LayerOut | None, removed_from: int) -> tuple[CachedLayer, Path | None]:
        """What the cache keeps of the layer just rewritten (`out`), and its blob."""
        entry = CachedLayer(
            digest=out.digest if out else None,
            diff_id=out.diff_id if out else "",
            size=out.size if out else 0,
            removed=tuple(self.removed[removed_from:]),
            lower=self.lower.to_json(),
        )
        blob = self.layout.blobs / digest_hex(out.digest) if out else None
        return entry, blob


def _cache_keys(raw: dict[str, Any], count: int, rules: _Rules) -> list[str]:
    """The cache keys of the input's layers; none when its config's diff_ids do not fit."""
    engine_ids = engine_diff_ids(raw, count)
    if engine_ids is None:
        return []
    return layer_keys(
        engine_ids, epoch=rules.epoch, policy=rules.policy, drop_paths=rules.drop_paths
    )


def _canonicalize_into(
    raw: dict[str, Any],
    count: int,
    read_layer: ReadLayer,
    staging: Path,
    *,
    description: str,
    repo_tags: Sequence[str],
    rules: _Rules,
    cache: LayerCache | None = None,
) -> CanonicalImage:
    """Rewrite the `count` layers `read_layer` opens, bottom-up, into a layout in `staging`.

    Layers come from `cache` while every layer below came from it too; the first one
    that does not is rewritten on what the cache says the layers below leave."""
    created_by = layer_created_by(raw, count)
    rewrite = _Rewrite(LayoutWriter(staging), rules)
    keys = _cache_keys(raw, count, rules) if cache is not None else []
    reused: CachedLayer | None = None
    for i in range(count):
        if cache is not None and keys and (i == 0 or reused is not None):
            hit = cache.get(keys[i])
            if hit is not None:
                rewrite.take_cached(i, hit, cache, created_by[i])
                reused = hit
                continue
            if reused is not None:  # the first layer to rewrite: restore what lies below
                rewrite.lower = LowerDirs.from_json(reused.lower)
                reused = None
        removed_from = len(rewrite.removed)
        out = rewrite.rewrite(i, read_layer, f"{description} layer {i}", created_by[i])
        if cache is not None and keys:
            cache.put(keys[i], *rewrite.cached(out, removed_from))
    return _write_image(rewrite, raw, description=description, repo_tags=repo_tags)


def _write_image(
    rewrite: _Rewrite, raw: dict[str, Any], *, description: str, repo_tags: Sequence[str]
) -> CanonicalImage:
    """Write the config, manifest and index of the layers `rewrite` holds."""
    layout, layers, created_by = rewrite.layout, rewrite.layers, rewrite.created_by
    if not layers:  # an image has at least one layer
        rules = rewrite.rules
        layers.append(write_layer(layout, [], None, epoch=rules.epoch, policy=rules.policy))
        created_by.append(None)
    diff_ids = [layer.diff_id for layer in layers]
    config = canonical_config(
        raw, diff_ids=diff_ids, created_by=created_by, epoch=rewrite.rules.epoch, what=description
    )
    config_desc = layout.add_bytes(MEDIA_OCI_CONFIG, canonical_json(config))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_OCI_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [Descriptor(MEDIA_OCI_LAYER_GZIP, x.digest, x.size).to_json() for x in layers],
    }
    manifest_desc = layout.add_bytes(MEDIA_OCI_MANIFEST, canonical_json(manifest))
    layout.write_index(manifest_desc, repo_tags)
    return CanonicalImage(
        manifest_digest=manifest_desc.digest,
        config_digest=config_desc.digest,
        layer_digests=tuple(x.digest for x in layers),
        diff_ids=tuple(diff_ids),
        layer_sizes=tuple(x.size for x in layers),
        layout=layout.root,
        archive=None,
        repo_tags=tuple(repo_tags),
        removed=tuple(rewrite.removed),
        dropped_layers=tuple(rewrite.dropped),
    )
