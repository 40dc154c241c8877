"""Writing an OCI layout's image as a docker-archive, the tarball ``docker load`` and
``podman load`` read: layers kept gzip-compressed, or stored plain (decompressed here or
taken from a folder of plain layers), and the layers the engine has already left empty."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imagesmith.errors import InputError, OperationError
from imagesmith.image.oci import digest_hex, open_image
from imagesmith.image.streams import CHUNK


def write_docker_archive(
    layout: Path,
    dest: Path,
    *,
    repo_tags: Sequence[str] = (),
    compressed: bool = True,
    plain_layers: Path | None = None,
    present: int = 0,
) -> Path:
    """Write the image of an OCI layout (one manifest) as a docker-archive tarball.

    The tar holds ``manifest.json``, the config as ``<hex>.json`` and each layer blob
    as-is (gzip) under ``<hex>.tar.gz``: ``docker load`` (20.10+) and ``podman load``
    (4.x) both decompress layers on load. With `compressed` false the layers are
    decompressed here and stored as ``<diff_id hex>.tar`` instead, which podman 4.3
    loads faster; a layer found in `plain_layers` as ``<diff_id hex>.tar`` is taken
    from there as it is. The first `present` layers are written as empty members: the
    engine has them already (`Engine.present_layers`) and both engines then reuse their
    own copy without opening the member (docker 20.10 and podman 4.3). What both save
    is measured in bench/README.md ("Measurements behind the code"). Deliberately *no*
    ``index.json``: podman would then load it as an OCI archive and ignore
    ``RepoTags``. The tarball itself is deterministic (sorted entries, mtime 0,
    root-owned).
    """
    config_hex, layer_hexes, diff_ids = _read_layout(layout)
    for tag in repo_tags:
        if not tag or any(c.isspace() for c in tag):
            raise InputError(f"invalid image tag {tag!r}")
    blobs = layout / "blobs" / "sha256"
    if compressed:
        names = [f"{h}.tar.gz" for h in layer_hexes]
        layers: dict[str, _Member] = {n: blobs / h for n, h in zip(names, layer_hexes, strict=True)}
    else:
        names, layers = _plain_layers(blobs, layer_hexes, diff_ids, plain_layers)
    for name in set(names[:present]) - set(names[present:]):
        layers[name] = b""
    entry = {"Config": f"{config_hex}.json", "RepoTags": list(repo_tags), "Layers": names}
    members: list[tuple[str, _Member]] = [(f"{config_hex}.json", blobs / config_hex)]
    members += sorted(layers.items())
    members.sort(key=lambda m: m[0])
    members.append(("manifest.json", json.dumps([entry], separators=(",", ":")).encode()))
    _write_replacing(dest, members)
    return dest


def _read_layout(layout: Path) -> tuple[str, list[str], list[str]]:
    """The config's and the layers' blob hex digests, and the diff_ids, of an OCI layout."""
    with open_image(layout) as src:
        if src.manifest is None:
            raise InputError(f"{layout} is not an OCI layout")
        manifest = json.loads(src.manifest)
        config_hex = digest_hex(manifest["config"]["digest"])
        layer_hexes = [digest_hex(d["digest"]) for d in manifest["layers"]]
        diff_ids = src.config_json()["rootfs"]["diff_ids"]
    return config_hex, layer_hexes, diff_ids


def _plain_layers(
    blobs: Path, layer_hexes: Sequence[str], diff_ids: Sequence[str], plain_layers: Path | None
) -> tuple[list[str], dict[str, _Member]]:
    """Member names (``<diff_id hex>.tar``) and contents of uncompressed layers: the copy
    in `plain_layers` when there is one, else the blob, decompressed while it is written."""
    names = [f"{digest_hex(d)}.tar" for d in diff_ids]
    layers: dict[str, _Member] = {}
    for name, h in zip(names, layer_hexes, strict=True):
        plain = plain_layers / name if plain_layers is not None else None
        layers[name] = plain if plain is not None and plain.is_file() else _Gzipped(blobs / h)
    return names, layers


def _write_replacing(dest: Path, members: Sequence[tuple[str, _Member]]) -> None:
    """Write the tar to a temporary name beside `dest`, then rename it over `dest`."""
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        try:
            _write_archive(tmp, members, spool=False)
        except _SizeUnknown:  # a layer of 4 GiB or more: the gzip trailer cannot say
            _write_archive(tmp, members, spool=True)
        tmp.replace(dest)
    except OSError as exc:
        raise OperationError(f"cannot write {dest}: {exc}") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


@dataclass(frozen=True)
class _Gzipped:
    """A gzip blob to store decompressed."""

    path: Path


_Member = Path | bytes | _Gzipped


def _write_archive(tmp: Path, members: Sequence[tuple[str, _Member]], *, spool: bool) -> None:
    with tarfile.TarFile(
        tmp, "w", format=tarfile.PAX_FORMAT, encoding="utf-8", copybufsize=CHUNK
    ) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o644
            info.mtime = 0
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
            elif isinstance(content, _Gzipped):
                _add_gunzipped(tar, info, content.path, spool_dir=tmp.parent if spool else None)
            else:
                info.size = content.stat().st_size
                with content.open("rb") as f:
                    tar.addfile(info, f)


class _SizeUnknown(Exception):
    """A gzip layer whose uncompressed size its trailer does not give (4 GiB or more)."""


class _Gunzip:
    """Reads a single-member gzip file decompressed, in full-size reads (as tarfile wants)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._z = zlib.decompressobj(wbits=31)
        self._buf = b""
        self._pos = 0
        self.exhausted = False

    def _fill(self) -> bool:
        while True:
            data = self._z.unconsumed_tail or self._raw.read(CHUNK)
            # Bounded output: a run of zeros inflates a thousandfold.
            self._buf = self._z.decompress(data, 4 * CHUNK) if data else self._z.flush()
            self._pos = 0
            if self._buf or not data:
                break
        self.exhausted = not self._buf
        return not self.exhausted

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        need = size if size >= 0 else 1 << 62
        while need > 0:
            if self._pos >= len(self._buf) and not self._fill():
                break
            part = self._buf[self._pos : self._pos + need]
            self._pos += len(part)
            need -= len(part)
            parts.append(part)
        return b"".join(parts)

    def finished(self) -> bool:
        return (
            self._pos >= len(self._buf)
            and not self._fill()
            and self._z.eof
            and not self._z.unused_data
        )


def _isize(f: IO[bytes]) -> int:
    """The gzip trailer's ISIZE: the uncompressed size modulo 4 GiB; `f` is left at 0."""
    f.seek(-4, os.SEEK_END)
    size: int = struct.unpack("<I", f.read(4))[0]
    f.seek(0)
    return size


def _add_gunzipped(
    tar: tarfile.TarFile, info: tarfile.TarInfo, blob: Path, *, spool_dir: Path | None
) -> None:
    """Store the gzip `blob` decompressed. Its size comes from the gzip trailer (ISIZE,
    the size modulo 4 GiB) and is checked (_SizeUnknown when wrong); with `spool_dir`
    it is decompressed to a temporary file there first instead, which works for any
    size."""
    with blob.open("rb") as f:
        if spool_dir is None:
            info.size = _isize(f)
            plain = _Gunzip(f)
            try:
                tar.addfile(info, plain)
            except OSError:  # tarfile's "unexpected end of data", or a real error
                if plain.exhausted:
                    raise _SizeUnknown(blob) from None
                raise
            if not plain.finished():
                raise _SizeUnknown(blob)
            return
        with (
            gzip.GzipFile(fileobj=f, mode="rb") as unzipped,
            tempfile.TemporaryFile(dir=spool_dir) as spooled,
        ):
            shutil.copyfileobj(unzipped, spooled, CHUNK)
            info.size = spooled.tell()
            spooled.seek(0)
            tar.addfile(info, spooled)
