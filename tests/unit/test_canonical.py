"""Unit tests for imagesmith.image.canonical on synthetic archives (no container engine)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import struct
import tarfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import InputError
from imagesmith.image.canonical import CanonicalImage, canonicalize
from imagesmith.image.config import normalize_created_by
from imagesmith.image.diff import diff_archives
from imagesmith.image.docker_archive import write_docker_archive
from imagesmith.image.layer_cache import LayerCache, layer_keys
from imagesmith.image.layer_writer import GZIP_LEVEL
from imagesmith.image.oci import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_MANIFEST,
    open_image,
)
from imagesmith.image.paths import VOLATILE_PATHS
from imagesmith.image.streams import GzipPipe

EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z
OLD = 1_600_000_000  # a package's file time, before EPOCH
BUILD = 1_750_000_000  # "now", when the engine ran the build


# --------------------------------------------------------------------------- builders


@dataclass
class E:
    """One tar entry of a synthetic layer."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | chardev | fifo
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = OLD
    uname: str = "root"
    pax: dict[str, str] = field(default_factory=dict)
    dev: tuple[int, int] = (0, 0)


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def tar_bytes(entries: Sequence[E], *, fmt: int = tarfile.GNU_FORMAT, times: bool = False) -> bytes:
    """A layer tar; `times` adds PAX atime/ctime records and sub-second mtimes, as podman does."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.uname = info.gname = e.uname
            info.mtime = e.mtime + (0.25 if times else 0)
            info.linkname = e.link
            info.devmajor, info.devminor = e.dev
            pax = dict(e.pax)
            if times:
                pax.update({"atime": f"{BUILD}.5", "ctime": f"{BUILD}.75"})
            info.pax_headers = pax
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def gz(data: bytes, *, name: str = "layer.tar", mtime: int = BUILD, level: int = 9) -> bytes:
    """gzip with a file name and a timestamp in the header, as a careless tool would."""
    buf = io.BytesIO()
    with gzip.GzipFile(
        filename=name, mode="wb", fileobj=buf, mtime=mtime, compresslevel=level
    ) as f:
        f.write(data)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def uncompressed(blob: bytes) -> bytes:
    return gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob


def add(tar: tarfile.TarFile, name: str, data: bytes, *, mtime: int = BUILD) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = mtime
    tar.addfile(info, io.BytesIO(data))


def docker_archive(
    path: Path,
    config: dict[str, Any],
    layers: Sequence[bytes],
    *,
    style: str = "docker",
    tags: Sequence[str] = ("example/app:1",),
) -> Path:
    """Write a docker-archive the way docker 20.10 (``style="docker"``), podman 4.3
    (``"podman"``: digest-named layers behind symlinks) or docker 25
    (``"docker25"``: ``blobs/sha256``) does."""
    config = dict(config)
    config["rootfs"] = {"type": "layers", "diff_ids": [sha(uncompressed(x)) for x in layers]}
    cfg = json.dumps(config, indent=2 if style == "podman" else None).encode()
    cfg_hex = hashlib.sha256(cfg).hexdigest()
    names: list[str] = []
    with tarfile.open(path, "w") as tar:
        for i, blob in enumerate(layers):
            hexd = hashlib.sha256(blob).hexdigest()
            if style == "docker":
                name = f"{i:02d}{hexd[2:]}/layer.tar"
                add(tar, name, blob)
            elif style == "docker25":
                name = f"blobs/sha256/{hexd}"
                add(tar, name, blob, mtime=0)
            else:
                add(tar, f"{hexd}.tar", blob, mtime=0)
                link = tarfile.TarInfo(f"{i:02d}{hexd[2:]}/layer.tar")
                link.type = tarfile.SYMTYPE
                link.linkname = f"../{hexd}.tar"
                tar.addfile(link)
                name = link.name
            names.append(name)
        cfg_name = f"blobs/sha256/{cfg_hex}" if style == "docker25" else f"{cfg_hex}.json"
        add(tar, cfg_name, cfg)
        manifest = [{"Config": cfg_name, "RepoTags": list(tags), "Layers": names}]
        add(tar, "manifest.json", json.dumps(manifest).encode(), mtime=0)
        if style == "docker25":
            add(tar, "index.json", b'{"schemaVersion":2,"manifests":[]}', mtime=0)
    return path


def docker_config(layer_cmds: Sequence[str]) -> dict[str, Any]:
    """A config the way docker 20.10's classic builder writes it."""
    history: list[dict[str, Any]] = [
        {"created": "2026-01-01T10:00:00.1Z", "created_by": cmd} for cmd in layer_cmds
    ]
    history.insert(
        1,
        {
            "created": "2026-01-01T10:00:01Z",
            "created_by": '/bin/sh -c #(nop)  CMD ["bash"]',
            "empty_layer": True,
        },
    )
    history.append(
        {
            "created": "2026-01-01T10:00:02Z",
            "created_by": "/bin/sh -c #(nop)  LABEL lab=canon",
            "empty_layer": True,
        }
    )
    common = {
        "Hostname": "",
        "Domainname": "",
        "User": "1000:1000",
        "AttachStdin": False,
        "Tty": False,
        "Env": ["PATH=/usr/bin:/bin", "TZ=Etc/UTC"],
        "Cmd": ["bash"],
        "Image": "sha256:" + "1" * 64,
        "Volumes": None,
        "WorkingDir": "",
        "Entrypoint": None,
        "OnBuild": None,
        "Labels": {"lab": "canon"},
    }
    return {
        "architecture": "amd64",
        "os": "linux",
        "config": common,
        "container": "0b996b980edd",
        "container_config": dict(common, Hostname="0b996b980edd"),
        "created": "2026-01-01T10:00:02.5Z",
        "docker_version": "20.10.24+dfsg1",
        "history": history,
    }


def podman_config(layer_cmds: Sequence[str]) -> dict[str, Any]:
    """A config the way podman 4.3 (buildah 1.28) writes it."""
    history: list[dict[str, Any]] = [
        {"created": "2026-02-02T11:00:00Z", "created_by": cmd, "comment": "FROM abc"}
        for cmd in layer_cmds
    ]
    history.insert(
        1,
        {
            "created": "2026-02-02T11:00:01Z",
            "created_by": '/bin/sh -c #(nop) CMD ["bash"]',
            "empty_layer": True,
        },
    )
    history.append(
        {
            "created": "2026-02-02T11:00:02Z",
            "created_by": '/bin/sh -c #(nop) LABEL lab="canon"',
            "empty_layer": True,
        }
    )
    return {
        "created": "2026-02-02T11:00:03Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/bin:/bin", "TZ=Etc/UTC"],
            "Cmd": ["bash"],
            "Labels": {"io.buildah.version": "1.28.2", "lab": "canon"},
        },
        "history": history,
    }


BASE_CMD = "/bin/sh -c #(nop) ADD file:" + "a" * 64 + " in / "
PODMAN_BASE_CMD = "/bin/sh -c #(nop) ADD file:" + "b" * 64 + " in / "
RUN_CMD = "/bin/sh -c apt-get install -y tool"
NOOP_CMD = "/bin/sh -c true"


def base_layer(*, uname: str = "root") -> list[E]:
    return [
        E("bin", "symlink", link="usr/bin", mode=0o777, uname=uname),
        E("dev", "dir", mode=0o755, uname=uname),
        E("dev/null", "chardev", mode=0o666, dev=(1, 3), uname=uname),
        E("etc", "dir", mode=0o755, uname=uname),
        E("etc/hostname", data=b"base\n", uname=uname),
        E("etc/passwd", data=b"root:x:0:0::/root:/bin/bash\n", uname=uname),
        E("tmp", "dir", mode=0o1777, uname=uname),
        E("run", "dir", mode=0o755, uname=uname),
        E("usr", "dir", mode=0o755, uname=uname),
        E("usr/bin", "dir", mode=0o755, uname=uname),
        E("usr/bin/zz-tool", data=b"#!/bin/sh\necho tool\n", mode=0o755, uname=uname),
        E("usr/bin/aa-tool", "hardlink", link="usr/bin/zz-tool", mode=0o755, uname=uname),
        E("var", "dir", mode=0o755, uname=uname),
        E("var/lib", "dir", mode=0o755, uname=uname),
        E("var/lib/apt", "dir", mode=0o755, uname=uname),
        E("var/lib/apt/lists", "dir", mode=0o755, uname=uname),
        E("var/lib/apt/lists/lock", mode=0o640, uname=uname),
        E("var/log", "dir", mode=0o755, uname=uname),
        E("var/log/dpkg.log", data=b"base install\n", uname=uname),
    ]


def run_layer_docker(script: bytes = b"#!/bin/sh\necho hi\n") -> list[E]:
    return [
        E("opt", "dir", mode=0o755, mtime=BUILD),
        E("opt/app", "dir", mode=0o755, mtime=BUILD),
        E("opt/app/.wh..wh..opq", mode=0o755, mtime=BUILD),  # docker: opaque on a new dir
        E("opt/app/run.sh", data=script, mode=0o755, uid=1000, gid=1000, mtime=BUILD, uname="app"),
        E("opt/app/README", data=b"packaged\n", mtime=OLD),
        E("tmp", "dir", mode=0o1777, mtime=BUILD),
        E("var", "dir", mode=0o755),
        E("var/lib", "dir", mode=0o755),
        E("var/lib/apt", "dir", mode=0o755),
        E("var/lib/apt/lists", "dir", mode=0o755, mtime=BUILD),
        E("var/lib/apt/lists/.wh.lock", mode=0o600, mtime=BUILD),
        E("var/log", "dir", mode=0o755, mtime=BUILD),
        E("var/log/dpkg.log", data=f"installed at {time.time()}\n".encode(), mtime=BUILD),
    ]


def run_layer_podman(script: bytes = b"#!/bin/sh\necho hi\n") -> list[E]:
    entries = [
        E("etc", "dir", mode=0o755, mtime=BUILD, uname=""),
        E("etc/hosts", mode=0o755, mtime=BUILD, uname=""),  # buildah's mount-point placeholder
        E("run", "dir", mode=0o755, mtime=BUILD, uname=""),
        E("opt", "dir", mode=0o755, mtime=BUILD, uname=""),
        E("opt/app", "dir", mode=0o755, mtime=BUILD, uname=""),
        E("opt/app/run.sh", data=script, mode=0o755, uid=1000, gid=1000, mtime=BUILD + 7),
        E("opt/app/README", data=b"packaged\n", mtime=OLD, uname=""),
        E("tmp", "dir", mode=0o1777, mtime=BUILD + 3, uname=""),
        E("var", "dir", mode=0o755, uname=""),
        E("var/lib", "dir", mode=0o755, uname=""),
        E("var/lib/apt", "dir", mode=0o755, uname=""),
        E("var/lib/apt/lists", "dir", mode=0o755, mtime=BUILD + 3, uname=""),
        E("var/lib/apt/lists/.wh.lock", mode=0o000, mtime=BUILD + 3, uname=""),
        E("var/log", "dir", mode=0o755, mtime=BUILD + 9),
        E("var/log/dpkg.log", data=b"other install log\n", mtime=BUILD + 9),
    ]
    return list(reversed(entries))  # another entry order altogether


def docker_image(path: Path, *, script: bytes = b"#!/bin/sh\necho hi\n") -> Path:
    layers = [
        tar_bytes(base_layer()),
        tar_bytes(run_layer_docker(script)),
        tar_bytes([]),  # `RUN true`: docker commits an empty layer
    ]
    return docker_archive(path, docker_config([BASE_CMD, RUN_CMD, NOOP_CMD]), layers)


def podman_image(path: Path, *, script: bytes = b"#!/bin/sh\necho hi\n") -> Path:
    layers = [
        gz(tar_bytes(base_layer(uname=""), fmt=tarfile.PAX_FORMAT, times=True)),
        gz(tar_bytes(run_layer_podman(script), fmt=tarfile.PAX_FORMAT, times=True), name="x"),
        tar_bytes(
            [E("etc", "dir", mode=0o755, mtime=BUILD), E("etc/hosts", mtime=BUILD)],
            fmt=tarfile.PAX_FORMAT,
        ),
    ]
    return docker_archive(
        path,
        podman_config([PODMAN_BASE_CMD, RUN_CMD, NOOP_CMD]),
        layers,
        style="podman",
        tags=("localhost/example/app:1",),
    )


def canon(src: Path, tmp: Path, name: str, **kw: Any) -> CanonicalImage:
    kw.setdefault("drop_paths", VOLATILE_PATHS)
    return canonicalize(src, tmp / name, epoch=EPOCH, **kw)


def layer_members(image: CanonicalImage, i: int) -> list[tarfile.TarInfo]:
    blob = (image.layout / "blobs" / "sha256" / image.layer_digests[i].split(":")[1]).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob)), mode="r:") as tar:
        return tar.getmembers()


def blob_bytes(image: CanonicalImage, digest: str) -> bytes:
    return (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def config_of(image: CanonicalImage) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(blob_bytes(image, image.config_digest))
    return result


# --------------------------------------------------------------------------- tests


def test_docker_and_podman_style_archives_give_one_digest(tmp_path: Path) -> None:
    a = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a")
    b = canon(podman_image(tmp_path / "b.tar"), tmp_path, "b")
    assert a.manifest_digest == b.manifest_digest, diff_archives(a.layout, b.layout)
    assert a.config_digest == b.config_digest
    assert a.layer_digests == b.layer_digests
    assert a.diff_ids == b.diff_ids
    assert len(a.diff_ids) == 2  # the empty third layer is gone
    assert a.dropped_layers == b.dropped_layers == (2,)
    assert diff_archives(a.layout, b.layout) == []
    assert any("etc/hosts (empty mount-point placeholder)" in r for r in b.removed)
    assert any("opt/app/.wh..wh..opq" in r for r in a.removed)


def test_same_input_twice_is_byte_identical(tmp_path: Path) -> None:
    src = docker_image(tmp_path / "a.tar")
    a = canon(src, tmp_path, "a")
    b = canon(src, tmp_path, "b")
    for digest in (a.manifest_digest, a.config_digest, *a.layer_digests):
        assert blob_bytes(a, digest) == blob_bytes(b, digest)
    assert (a.layout / "index.json").read_bytes() == (b.layout / "index.json").read_bytes()
    assert a.archive is not None and b.archive is not None
    assert a.archive.read_bytes() == b.archive.read_bytes()


def test_canonical_output_is_a_fixed_point(tmp_path: Path) -> None:
    a = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a")
    again = canon(a.layout, tmp_path, "again")
    from_archive = canon(a.archive or Path("-"), tmp_path, "from-archive")
    assert again.manifest_digest == a.manifest_digest
    assert from_archive.manifest_digest == a.manifest_digest


def test_docker25_archive_with_blobs_layout_is_read(tmp_path: Path) -> None:
    layers = [tar_bytes(base_layer()), tar_bytes(run_layer_docker()), tar_bytes([])]
    src = docker_archive(
        tmp_path / "d25.tar",
        docker_config([BASE_CMD, RUN_CMD, NOOP_CMD]),
        layers,
        style="docker25",
    )
    a = canon(src, tmp_path, "a")
    b = canon(docker_image(tmp_path / "a.tar"), tmp_path, "b")
    assert a.manifest_digest == b.manifest_digest


def test_compressed_outer_archive_is_read(tmp_path: Path) -> None:
    src = docker_image(tmp_path / "a.tar")
    zipped = tmp_path / "a.tar.gz"
    zipped.write_bytes(gz(src.read_bytes()))
    assert canon(zipped, tmp_path, "z").manifest_digest == canon(src, tmp_path, "p").manifest_digest


def test_different_content_different_digest_and_diff_names_the_file(tmp_path: Path) -> None:
    a = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a")
    b = canon(podman_image(tmp_path / "b.tar", script=b"#!/bin/sh\necho bye\n"), tmp_path, "b")
    assert a.manifest_digest != b.manifest_digest
    assert a.diff_ids[0] == b.diff_ids[0]
    lines = diff_archives(a.layout, b.layout)
    assert any(line.startswith("layer 1: opt/app/run.sh: content") for line in lines), lines
    assert not any(line.startswith("layer 0") for line in lines)
    assert not any(line.startswith("config: created") for line in lines)


def test_diff_of_raw_archives_explains_noise(tmp_path: Path) -> None:
    lines = diff_archives(docker_image(tmp_path / "a.tar"), podman_image(tmp_path / "b.tar"))
    text = "\n".join(lines)
    assert "config: config.Hostname: only in a" in text
    assert "config: config.Labels.io.buildah.version: only in b" in text
    assert "layer 1: etc/hosts: only in b (file, 0 bytes)" in text
    assert "layer 1: opt/app/run.sh:" in text and "mtime" in text
    assert "layer 1: var/lib/apt/lists/.wh.lock: mode 0600 != 0000" in text


def test_diff_reports_mode_owner_link_and_added(tmp_path: Path) -> None:
    def image(path: Path, extra: list[E]) -> Path:
        layer = tar_bytes([E("etc", "dir", mode=0o755), *extra])
        return docker_archive(path, docker_config([BASE_CMD]), [layer])

    a = image(
        tmp_path / "a.tar",
        [E("etc/a", mode=0o644), E("etc/l", "symlink", link="a"), E("etc/gone", data=b"x")],
    )
    b = image(
        tmp_path / "b.tar",
        [E("etc/a", mode=0o600, uid=5), E("etc/l", "symlink", link="b"), E("etc/new", data=b"y")],
    )
    lines = diff_archives(a, b)
    assert "layer 0: etc/a: mode 0644 != 0600; owner 0:0 != 5:0" in lines
    assert "layer 0: etc/l: link target 'a' != 'b'" in lines
    assert "layer 0: etc/gone: only in a (file, 1 bytes)" in lines
    assert "layer 0: etc/new: only in b (file, 1 bytes)" in lines


def test_diff_limits_lines_per_layer(tmp_path: Path) -> None:
    def image(path: Path, data: bytes) -> Path:
        layer = tar_bytes([E(f"f{i:03d}", data=data) for i in range(30)])
        return docker_archive(path, docker_config([BASE_CMD]), [layer])

    lines = diff_archives(
        image(tmp_path / "a.tar", b"a"), image(tmp_path / "b.tar", b"b"), max_per_layer=5
    )
    assert len(lines) == 6
    assert lines[-1] == "layer 0: ... and 25 more differences"


def test_layer_tar_is_canonical(tmp_path: Path) -> None:
    image = canon(podman_image(tmp_path / "b.tar"), tmp_path, "b")
    base = layer_members(image, 0)
    names = [m.name for m in base]
    assert names == [
        "bin",
        "dev",
        "dev/null",
        "etc",
        "etc/hostname",
        "etc/passwd",
        "run",
        "tmp",
        "usr",
        "usr/bin",
        "usr/bin/aa-tool",
        "usr/bin/zz-tool",
        "var",
        "var/lib",
        "var/lib/apt",
        "var/lib/apt/lists",
        "var/lib/apt/lists/lock",
        "var/log",
        "var/log/dpkg.log",
    ]
    for m in base:
        assert m.uname == "" and m.gname == ""
        assert m.pax_headers == {}, m.name  # no atime/ctime/mtime records carried over
        assert m.mtime == OLD  # older than the epoch: kept (clamp policy)
    by_name = {m.name: m for m in base}
    # the hard-link group was re-elected: the first name in sorted order holds the data
    assert by_name["usr/bin/aa-tool"].isreg() and by_name["usr/bin/aa-tool"].size == 20
    assert by_name["usr/bin/zz-tool"].islnk()
    assert by_name["usr/bin/zz-tool"].linkname == "usr/bin/aa-tool"
    assert by_name["dev/null"].ischr() and (
        by_name["dev/null"].devmajor,
        by_name["dev/null"].devminor,
    ) == (1, 3)
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"
    assert by_name["tmp"].mode == 0o1777

    run = {m.name: m for m in layer_members(image, 1)}
    assert sorted(run) == [
        "opt",
        "opt/app",
        "opt/app/README",
        "opt/app/run.sh",
        "var",
        "var/lib",
        "var/lib/apt",
        "var/lib/apt/lists",
        "var/lib/apt/lists/.wh.lock",
    ]
    assert run["opt/app/run.sh"].mtime == EPOCH  # written by the build: clamped
    assert run["opt/app/README"].mtime == OLD
    assert (run["opt/app/run.sh"].uid, run["opt/app/run.sh"].mode) == (1000, 0o755)
    wh = run["var/lib/apt/lists/.wh.lock"]
    assert (wh.mode, wh.mtime, wh.size, wh.uid) == (0o600, EPOCH, 0, 0)


def test_whiteouts_sort_before_names_and_opaque_kept_over_lower_dir(tmp_path: Path) -> None:
    base = tar_bytes([E("d", "dir", mode=0o755), E("d/x", data=b"1"), E("d/y", data=b"2")])
    upper = tar_bytes(
        [
            E("d", "dir", mode=0o755, mtime=BUILD),
            E("d/+plus", data=b"p"),
            E("d/.wh.y"),
            E("d/.wh..wh..opq"),
            E("e", "dir", mode=0o755, mtime=BUILD),
            E("e/.wh..wh..opq"),
            E("e/f", data=b"f"),
        ]
    )
    src = docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD, RUN_CMD]), [base, upper])
    image = canon(src, tmp_path, "a")
    names = [m.name for m in layer_members(image, 1)]
    # d exists below, so its opaque marker matters; e is new, so its marker is a no-op
    assert names == ["d", "d/.wh..wh..opq", "d/.wh.y", "d/+plus", "e", "e/f"]


def test_mtime_policy_epoch_sets_everything(tmp_path: Path) -> None:
    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a", mtime_policy="epoch")
    assert {m.mtime for m in layer_members(image, 0)} == {EPOCH}
    assert {m.mtime for m in layer_members(image, 1)} == {EPOCH}


def test_placeholders_only_removed_when_empty_and_above_the_base(tmp_path: Path) -> None:
    layer0 = tar_bytes([E("etc", "dir", mode=0o755), E("etc/hosts"), E("proc", "dir", mode=0o555)])
    layer1 = tar_bytes(
        [
            E("etc", "dir", mode=0o755, mtime=BUILD),
            E("etc/hosts", data=b"127.0.0.1 lab\n"),
            E("etc/resolv.conf"),
            E("proc", "dir", mode=0o555, mtime=BUILD),
            E("sys", "dir", mode=0o555, mtime=BUILD),
        ]
    )
    src = docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD, RUN_CMD]), [layer0, layer1])
    image = canon(src, tmp_path, "a")
    assert [m.name for m in layer_members(image, 0)] == ["etc", "etc/hosts", "proc"]
    assert [m.name for m in layer_members(image, 1)] == ["etc", "etc/hosts"]
    assert "layer 1: etc/resolv.conf (empty mount-point placeholder)" in image.removed
    assert "layer 1: sys/ (runtime mount-point directory)" in image.removed


def test_long_and_unicode_names_xattrs_and_large_ids(tmp_path: Path) -> None:
    long_name = "usr/share/" + "/".join(["averyveryverylongdirectoryname"] * 6) + "/f.txt"
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"
    layer = tar_bytes(
        [
            E(long_name, data=b"long"),
            E(
                "usr/bin/ping",
                data=b"ELF",
                mode=0o755,
                pax={"SCHILY.xattr.security.capability": cap},
            ),
            E("usr/share/café", data=b"unicode", uid=3_000_000, gid=3_000_000),
            E("etc/x", data=b"x", pax={"SCHILY.xattr.security.selinux": "system_u:object_r:x"}),
        ],
        fmt=tarfile.PAX_FORMAT,
    )
    src = docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD]), [layer])
    image = canon(src, tmp_path, "a")
    members = {m.name: m for m in layer_members(image, 0)}
    assert members[long_name].size == 4
    assert members["usr/bin/ping"].pax_headers == {"SCHILY.xattr.security.capability": cap}
    assert members["usr/share/café"].uid == 3_000_000
    assert members["etc/x"].pax_headers == {}
    for m in members.values():
        assert not {"mtime", "atime", "ctime"} & set(m.pax_headers)


def test_config_is_canonical(tmp_path: Path) -> None:
    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a")
    raw = blob_bytes(image, image.config_digest)
    config = json.loads(raw)
    assert raw == json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    assert config == {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {
            "Cmd": ["bash"],
            "Env": ["PATH=/usr/bin:/bin", "TZ=Etc/UTC"],
            "Labels": {"lab": "canon"},
            "User": "1000:1000",
        },
        "history": [
            {"created": "2023-11-14T22:13:20Z", "created_by": "ADD file in /"},
            {"created": "2023-11-14T22:13:20Z", "created_by": "RUN apt-get install -y tool"},
        ],
        "rootfs": {"type": "layers", "diff_ids": list(image.diff_ids)},
    }


def test_history_without_created_by_when_it_does_not_line_up(tmp_path: Path) -> None:
    config = docker_config([BASE_CMD])  # one history entry, two layers
    layers = [tar_bytes(base_layer()), tar_bytes(run_layer_docker())]
    image = canon(docker_archive(tmp_path / "a.tar", config, layers), tmp_path, "a")
    assert config_of(image)["history"] == [{"created": "2023-11-14T22:13:20Z"}] * 2


@pytest.mark.parametrize(
    ("docker", "podman", "expected"),
    [
        ('/bin/sh -c #(nop)  CMD ["bash"]', '/bin/sh -c #(nop) CMD ["bash"]', 'CMD ["bash"]'),
        (
            "/bin/sh -c #(nop) COPY file:" + "1" * 64 + " in /app ",
            "/bin/sh -c #(nop) COPY file:" + "2" * 64 + " in /app ",
            "COPY file in /app",
        ),
        (
            "/bin/sh -c apt-get update",
            "RUN /bin/sh -c apt-get update # buildkit",
            "RUN apt-get update",
        ),
        ("|2 A=1 B=2 /bin/sh -c make", "/bin/sh -c make", "RUN make"),
    ],
)
def test_normalize_created_by(docker: str, podman: str, expected: str) -> None:
    assert normalize_created_by(docker) == normalize_created_by(podman) == expected


def test_layout_and_archive_are_well_formed(tmp_path: Path) -> None:
    image = canon(
        docker_image(tmp_path / "a.tar"), tmp_path, "a", repo_tags=["reg:5000/lab/app:v1"]
    )
    root = image.layout
    assert json.loads((root / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_text())
    (desc,) = index["manifests"]
    assert desc["digest"] == image.manifest_digest
    assert desc["mediaType"] == MEDIA_OCI_MANIFEST
    assert desc["annotations"] == {
        "io.containerd.image.name": "reg:5000/lab/app:v1",
        "org.opencontainers.image.ref.name": "v1",
    }
    manifest_bytes = blob_bytes(image, image.manifest_digest)
    assert (
        sha(manifest_bytes)
        == image.manifest_digest
        == "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    )
    manifest = json.loads(manifest_bytes)
    assert manifest["mediaType"] == MEDIA_OCI_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_OCI_CONFIG
    assert manifest["config"]["digest"] == image.config_digest
    for layer, digest, diff_id, size in zip(
        manifest["layers"], image.layer_digests, image.diff_ids, image.layer_sizes, strict=True
    ):
        assert layer == {"mediaType": MEDIA_OCI_LAYER_GZIP, "digest": digest, "size": size}
        blob = blob_bytes(image, digest)
        assert sha(blob) == digest and len(blob) == size
        assert sha(gzip.decompress(blob)) == diff_id
        # gzip header: no name, mtime 0, OS "unknown"
        assert (
            blob[:4] == b"\x1f\x8b\x08\x00" and blob[4:8] == b"\x00\x00\x00\x00" and blob[9] == 255
        )
    for path in (root / "blobs" / "sha256").iterdir():
        assert sha(path.read_bytes()) == "sha256:" + path.name  # nothing stray left behind

    assert image.archive == root / "image.tar"
    with tarfile.open(image.archive) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        assert entry["RepoTags"] == ["reg:5000/lab/app:v1"]
        assert entry["Config"] == image.config_digest.split(":")[1] + ".json"
        assert "index.json" not in tar.getnames()
    with open_image(image.archive) as src:
        assert sha(src.config) == image.config_digest
        assert src.repo_tags == ["reg:5000/lab/app:v1"]


def test_archive_with_plain_layers_holds_the_same_image(tmp_path: Path) -> None:
    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a", write_archive=False)
    plain = write_docker_archive(image.layout, tmp_path / "plain.tar", compressed=False)
    with tarfile.open(plain) as tar:
        entry = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        assert entry["Layers"] == [d.split(":")[1] + ".tar" for d in image.diff_ids]
        for name, diff_id in zip(entry["Layers"], image.diff_ids, strict=True):
            layer = tar.extractfile(name)
            assert layer is not None and sha(layer.read()) == diff_id  # not gzip: the tar
    assert canon(plain, tmp_path, "again").manifest_digest == image.manifest_digest


def test_archive_leaves_the_layers_the_engine_has_empty(tmp_path: Path) -> None:
    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "a", write_archive=False)
    assert len(image.diff_ids) >= 2
    for compressed in (True, False):
        archive = write_docker_archive(
            image.layout, tmp_path / f"{compressed}.tar", compressed=compressed, present=1
        )
        with tarfile.open(archive) as tar:
            entry = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
            sizes = [tar.getmember(name).size for name in entry["Layers"]]
        assert sizes[0] == 0 and all(size > 0 for size in sizes[1:])


def test_plain_archive_is_the_same_however_its_layers_are_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three ways to a plain archive give the same bytes: layers kept uncompressed while
    they were written (`plain_dir`), decompressed here with the size the gzip trailer
    gives, and decompressed through a spool file when that size is wrong (a layer of
    4 GiB or more; simulated)."""
    from imagesmith.image import docker_archive

    kept = tmp_path / "kept"
    image = canonicalize(
        docker_image(tmp_path / "a.tar"),
        tmp_path / "a",
        epoch=EPOCH,
        write_archive=False,
        plain_dir=kept,
    )
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        d.split(":")[1] + ".tar" for d in image.diff_ids
    )
    from_kept = write_docker_archive(
        image.layout, tmp_path / "k.tar", compressed=False, plain_layers=kept
    )
    streamed = write_docker_archive(image.layout, tmp_path / "s.tar", compressed=False)
    monkeypatch.setattr(docker_archive, "_isize", lambda f: 12345)
    spooled = write_docker_archive(image.layout, tmp_path / "p.tar", compressed=False)
    assert from_kept.read_bytes() == streamed.read_bytes() == spooled.read_bytes()


def _piped(data: bytes, write_size: int, monkeypatch: pytest.MonkeyPatch, cpus: int) -> bytes:
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    out = io.BytesIO()
    pipe = GzipPipe(out, level=GZIP_LEVEL)
    for i in range(0, len(data), write_size):
        pipe.write(data[i : i + write_size])
    pipe.close()
    assert pipe.digest == sha(data) and pipe.size == len(data)
    return out.getvalue()


@pytest.mark.parametrize("length", [0, 1, GzipPipe.BLOCK, 3 * GzipPipe.BLOCK + 12345])
def test_gzip_pipe_is_fixed_and_readable_by_any_gzip_reader(
    length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"".join(hashlib.sha256(str(i).encode()).digest() * (i % 50) for i in range(20000))
    data = (data * (1 + length // max(1, len(data))))[:length]
    blob = _piped(data, 7777, monkeypatch, cpus=4)
    # The same bytes whatever the core count and however the input arrives.
    assert _piped(data, 1 << 20, monkeypatch, cpus=1) == blob
    assert _piped(data, 4099, monkeypatch, cpus=2) == blob
    assert gzip.decompress(blob) == data and zlib.decompress(blob, 31) == data
    # No name, mtime 0, OS 255; the trailer holds the CRC-32 and length.
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    assert blob[-8:] == struct.pack("<II", zlib.crc32(data), length)
    # Blocks reuse the previous block's tail: compression close to one zlib stream's.
    if length > GzipPipe.BLOCK:
        assert len(blob) <= len(gzip.compress(data, GZIP_LEVEL, mtime=0)) * 1.01


def test_out_directory_handling(tmp_path: Path) -> None:
    src = docker_image(tmp_path / "a.tar")
    out = tmp_path / "out"
    first = canonicalize(src, out, epoch=EPOCH)
    second = canonicalize(src, out, epoch=EPOCH, write_archive=False)  # replaces the layout
    assert first.manifest_digest == second.manifest_digest
    assert second.archive is None and not (out / "image.tar").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="refusing"):
        canonicalize(src, other, epoch=EPOCH)
    assert (other / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "other", "out"]


@pytest.mark.parametrize(
    ("epoch", "message"),
    [(-1, "whole number"), (int(time.time()) + 86400, "in the future"), (1.5, "whole number")],
)
def test_bad_epoch(tmp_path: Path, epoch: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        canonicalize(docker_image(tmp_path / "a.tar"), tmp_path / "out", epoch=epoch)


def test_future_epoch_allowed_when_setting_all_times(tmp_path: Path) -> None:
    image = canonicalize(
        docker_image(tmp_path / "a.tar"), tmp_path / "o", epoch=BUILD + 10**6, mtime_policy="epoch"
    )
    assert {m.mtime for m in layer_members(image, 1)} == {BUILD + 10**6}


def test_bad_inputs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(InputError, match="not a tar"):
        canonicalize(junk, tmp_path / "o1", epoch=EPOCH)

    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        add(tar, "hello.txt", b"hi")
    with pytest.raises(InputError, match="neither a docker-archive"):
        canonicalize(empty, tmp_path / "o2", epoch=EPOCH)

    zstd = docker_archive(
        tmp_path / "z.tar", docker_config([BASE_CMD]), [b"\x28\xb5\x2f\xfd" + b"\0" * 100]
    )
    with pytest.raises(InputError, match="zstd"):
        canonicalize(zstd, tmp_path / "o3", epoch=EPOCH)

    evil = docker_archive(
        tmp_path / "e.tar", docker_config([BASE_CMD]), [tar_bytes([E("../../etc/x")])]
    )
    with pytest.raises(InputError, match="unsafe path"):
        canonicalize(evil, tmp_path / "o4", epoch=EPOCH)

    with pytest.raises(InputError, match="cannot open"):
        canonicalize(tmp_path / "missing.tar", tmp_path / "o5", epoch=EPOCH)
    assert not any(p.name.startswith((".o", "o")) for p in tmp_path.iterdir())


def test_all_empty_layers_keep_one(tmp_path: Path) -> None:
    layers = [tar_bytes([]), tar_bytes([E("etc", "dir"), E("etc/hosts")])]
    image = canon(
        docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD, RUN_CMD]), layers),
        tmp_path,
        "a",
    )
    # layer 0 is empty, layer 1 keeps etc/ (not in any lower layer) once etc/hosts is gone
    assert len(image.diff_ids) == 1
    assert [m.name for m in layer_members(image, 0)] == ["etc"]
    nothing = canon(
        docker_archive(tmp_path / "b.tar", docker_config([BASE_CMD]), [tar_bytes([])]),
        tmp_path,
        "b",
    )
    assert len(nothing.diff_ids) == 1 and layer_members(nothing, 0) == []
    assert len(config_of(nothing)["history"]) == 1


def test_volatile_files_differ_unless_dropped(tmp_path: Path) -> None:
    a = canonicalize(docker_image(tmp_path / "a.tar"), tmp_path / "a", epoch=EPOCH)
    b = canonicalize(podman_image(tmp_path / "b.tar"), tmp_path / "b", epoch=EPOCH)
    assert a.manifest_digest != b.manifest_digest
    lines = diff_archives(a.layout, b.layout)
    assert lines == [
        "layer 1: var/log/dpkg.log: content "
        + lines[0].split("content ", 1)[1]  # hashes and sizes vary with the test's clock
    ]
    assert "(file, " not in lines[0] and "mtime" not in lines[0]


def test_drop_paths_keeps_hard_link_targets_and_whiteouts(tmp_path: Path) -> None:
    base = tar_bytes([E("var", "dir"), E("var/log", "dir"), E("var/log/old.log", data=b"o")])
    upper = tar_bytes(
        [
            E("var", "dir"),
            E("var/keep", "hardlink", link="var/log/apt/term.log"),
            E("var/log", "dir", mtime=BUILD),
            E("var/log/.wh.old.log"),
            E("var/log/apt", "dir"),
            E("var/log/apt/term.log", data=b"data"),
            E("var/log/apt/history.log", data=b"h"),
        ]
    )
    src = docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD, RUN_CMD]), [base, upper])
    image = canon(src, tmp_path, "a")
    members = layer_members(image, 1)
    assert [m.name for m in members] == [
        "var",
        "var/keep",
        "var/log",
        "var/log/.wh.old.log",
        "var/log/apt",
        "var/log/apt/term.log",
    ]
    assert members[1].isreg() and members[1].size == 4  # the group's first name holds the data
    assert members[5].islnk() and members[5].linkname == "var/keep"
    assert "layer 1: var/log/apt/history.log (matches drop_paths)" in image.removed


def test_config_keeps_runtime_fields(tmp_path: Path) -> None:
    config = docker_config([BASE_CMD])
    config["config"].update(
        {
            "ExposedPorts": {"8888/tcp": {}},
            "Volumes": {"/data": {}},
            "WorkingDir": "/work",
            "Entrypoint": ["/usr/bin/tini", "--"],
            "StopSignal": "SIGINT",
            "Healthcheck": {"Test": ["CMD", "true"]},
            "Labels": {},
        }
    )
    config["variant"] = "v8"
    src = docker_archive(tmp_path / "a.tar", config, [tar_bytes(base_layer())])
    got = config_of(canon(src, tmp_path, "a"))
    assert got["variant"] == "v8"
    assert got["config"] == {
        "Cmd": ["bash"],
        "Entrypoint": ["/usr/bin/tini", "--"],
        "Env": ["PATH=/usr/bin:/bin", "TZ=Etc/UTC"],
        "ExposedPorts": {"8888/tcp": {}},
        "Healthcheck": {"Test": ["CMD", "true"]},
        "StopSignal": "SIGINT",
        "User": "1000:1000",
        "Volumes": {"/data": {}},
        "WorkingDir": "/work",
    }


def _pyc(mtime: int, flags: int = 0) -> bytes:
    return (
        b"\xa7\x0d\r\n"
        + flags.to_bytes(4, "little")
        + mtime.to_bytes(4, "little")
        + b"\x10\0\0\0code"
    )


@pytest.mark.parametrize("policy", ["clamp", "epoch"])
def test_pyc_headers_follow_their_sources(tmp_path: Path, policy: str) -> None:
    layer = tar_bytes(
        [
            E("app", "dir"),
            E("app/new.py", data=b"x = 1\n", mtime=BUILD),
            E("app/old.py", data=b"y = 2\n", mtime=OLD),
            E("app/__pycache__", "dir"),
            E("app/__pycache__/new.cpython-311.pyc", data=_pyc(BUILD), mtime=BUILD),
            E("app/__pycache__/old.cpython-311.pyc", data=_pyc(OLD), mtime=BUILD),
            E("app/__pycache__/hashed.cpython-311.pyc", data=_pyc(BUILD, flags=3)),
            E("app/short.pyc", data=b"\xa7\x0d\r\n"),
        ]
    )
    src = docker_archive(tmp_path / "a.tar", docker_config([BASE_CMD]), [layer])
    image = canon(src, tmp_path, "a", mtime_policy=policy)
    blob = gzip.decompress(blob_bytes(image, image.layer_digests[0]))
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        files = {m.name: m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None
            return f.read()

        for name in ("new", "old"):
            pyc = read(f"app/__pycache__/{name}.cpython-311.pyc")
            recorded = int.from_bytes(pyc[8:12], "little")
            assert recorded == files[f"app/{name}.py"].mtime  # still valid
            assert pyc[12:] == b"\x10\0\0\0code"
        assert read("app/__pycache__/hashed.cpython-311.pyc") == _pyc(BUILD, flags=3)
        assert read("app/short.pyc") == b"\xa7\x0d\r\n"


def test_env_order_does_not_change_the_digest() -> None:
    from imagesmith.image.config import canonical_config

    raw = {"architecture": "amd64", "os": "linux"}
    docker = canonical_config(
        {**raw, "config": {"Env": ["PATH=/opt/venv/bin:/bin", "VIRTUAL_ENV=/opt/venv", "A=1"]}},
        diff_ids=[],
        created_by=[],
        epoch=0,
    )
    podman = canonical_config(
        {**raw, "config": {"Env": ["VIRTUAL_ENV=/opt/venv", "PATH=/opt/venv/bin:/bin", "A=1"]}},
        diff_ids=[],
        created_by=[],
        epoch=0,
    )
    assert docker == podman
    assert docker["config"]["Env"] == ["A=1", "PATH=/opt/venv/bin:/bin", "VIRTUAL_ENV=/opt/venv"]


# --------------------------------------------------------------------------- layer cache


def test_layer_cache_rewrites_only_new_layers_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagesmith.image import canonical

    written: list[int] = []
    real_write = canonical.write_layer

    def counting(*args: Any, **kw: Any) -> Any:
        written.append(1)
        return real_write(*args, **kw)

    monkeypatch.setattr(canonical, "write_layer", counting)
    cache = LayerCache(tmp_path / "cache")
    one = docker_image(tmp_path / "one.tar", script=b"one")
    two = docker_image(tmp_path / "two.tar", script=b"two")  # same base layer, new RUN layer
    plain_two = canon(two, tmp_path, "plain-two")
    written.clear()

    first = canon(one, tmp_path, "first", cache=cache)
    assert len(written) == 2  # base and RUN layer; the empty third one is dropped
    written.clear()
    again = canon(one, tmp_path, "again", cache=cache)
    assert written == [] and again.manifest_digest == first.manifest_digest
    assert again.removed == first.removed and again.dropped_layers == first.dropped_layers

    cached_two = canon(two, tmp_path, "cached-two", cache=cache)
    assert len(written) == 1  # the RUN layer only; the base layer came from the cache
    # Byte for byte what no cache gives, including the cleaning that depends on the lower
    # layers (tmp/ unchanged but for its mtime is dropped from the RUN layer).
    assert cached_two.manifest_digest == plain_two.manifest_digest
    assert cached_two.removed == plain_two.removed
    assert "layer 1: tmp/ (directory unchanged but for its mtime)" in cached_two.removed
    for digest in cached_two.layer_digests:
        assert blob_bytes(cached_two, digest) == blob_bytes(plain_two, digest)


def test_layer_cache_ignores_damaged_entries(tmp_path: Path) -> None:
    cache = LayerCache(tmp_path / "cache")
    src = docker_image(tmp_path / "a.tar")
    first = canon(src, tmp_path, "first", cache=cache)
    for blob in (tmp_path / "cache" / "blobs").iterdir():
        blob.write_bytes(b"truncated")  # hard links: the first layout's blobs change too
    entries = sorted((tmp_path / "cache").glob("*.json"))
    entries[-1].write_text("{not json")
    second = canon(src, tmp_path, "second", cache=cache)
    assert second.manifest_digest == first.manifest_digest
    for digest in second.layer_digests:
        assert sha(blob_bytes(second, digest)) == digest


def test_layer_cache_keys_cover_every_input() -> None:
    ids = [sha(b"base"), sha(b"run")]
    keys = layer_keys(ids, epoch=EPOCH, policy="clamp", drop_paths=())
    assert len(set(keys)) == 2
    assert layer_keys(ids[:1], epoch=EPOCH, policy="clamp", drop_paths=()) == keys[:1]
    for other in (
        layer_keys([sha(b"other"), ids[1]], epoch=EPOCH, policy="clamp", drop_paths=()),
        layer_keys(ids, epoch=EPOCH + 1, policy="clamp", drop_paths=()),
        layer_keys(ids, epoch=EPOCH, policy="epoch", drop_paths=()),
        layer_keys(ids, epoch=EPOCH, policy="clamp", drop_paths=("var/log/*",)),
    ):
        assert other[1] != keys[1]


def test_gunzip_reader_gives_back_every_byte_of_highly_compressible_data() -> None:
    from imagesmith.image.docker_archive import _Gunzip

    data = b"\0" * (30 << 20) + os.urandom(3 << 20) + b"\0" * (5 << 20)
    reader = _Gunzip(io.BytesIO(gzip.compress(data, mtime=0)))
    parts = []
    while chunk := reader.read(1 << 16):
        parts.append(chunk)
    assert b"".join(parts) == data and reader.finished()


def test_a_folder_copied_in_and_removed_leaves_no_trace(tmp_path: Path) -> None:
    """imagesmith's .debs: COPY puts them in one layer, the next RUN removes the folder.
    With the folder in drop_paths, the COPY layer and its history entry are gone and the
    RUN layer's whiteout of the folder too, since nothing below has it any more; a
    whiteout of a dropped path that a lower layer does hold (the base's dpkg.log) stays."""
    drop = (*VOLATILE_PATHS, ".imagesmith-apt", ".imagesmith-apt/*")
    base = tar_bytes(
        [E("etc", "dir"), E("var", "dir"), E("var/log", "dir"), E("var/log/dpkg.log", data=b"b")]
    )
    copied = tar_bytes(
        [E(".imagesmith-apt", "dir", mode=0o755), E(".imagesmith-apt/jq_1.6_amd64.deb", data=b"d")]
    )
    run = tar_bytes(
        [
            E(".wh..imagesmith-apt"),
            E("usr", "dir"),
            E("usr/bin", "dir"),
            E("usr/bin/jq", data=b"jq"),
            E("var", "dir"),
            E("var/log", "dir", mtime=BUILD),
            E("var/log/.wh.dpkg.log"),
            E("var/log/.wh.alternatives.log"),  # a dropped path nothing below has
        ]
    )
    copy_cmd = "/bin/sh -c #(nop) COPY dir:" + "c" * 64 + " in /.imagesmith-apt/ "
    config = docker_config([BASE_CMD, copy_cmd, RUN_CMD])
    src = docker_archive(tmp_path / "a.tar", config, [base, copied, run])
    image = canon(src, tmp_path, "plain", drop_paths=drop)
    assert image.dropped_layers == (1,)
    assert [m.name for m in layer_members(image, 1)] == [
        "usr",
        "usr/bin",
        "usr/bin/jq",
        "var",
        "var/log",
        "var/log/.wh.dpkg.log",
    ]
    assert "layer 2: .wh..imagesmith-apt (whiteout of a dropped path: hides nothing)" in (
        image.removed
    )
    config_out = json.loads(blob_bytes(image, image.config_digest))
    assert [h["created_by"] for h in config_out["history"]] == [
        normalize_created_by(BASE_CMD),
        normalize_created_by(RUN_CMD),
    ]
    # The same through the layer cache, the lower layers (and what they hold) restored
    # from it: the base and COPY layers cached by an image that ends there.
    cache = LayerCache(tmp_path / "cache")
    short = docker_archive(
        tmp_path / "short.tar", docker_config([BASE_CMD, copy_cmd]), [base, copied]
    )
    canon(short, tmp_path, "short", drop_paths=drop, cache=cache)
    cached = canon(src, tmp_path, "cached", drop_paths=drop, cache=cache)
    assert cached.manifest_digest == image.manifest_digest
    assert cached.removed == image.removed
