"""The local Debian base image: mmdebstrap rootfs (deterministic), imported on each engine."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, InputError
from imagesmith.model.labels import BASE_EPOCH, BASE_ROOTFS, BASE_SUITE
from imagesmith.pipeline import debian_base as base
from imagesmith.pipeline.debian_base import build_base, make_base, make_rootfs

if TYPE_CHECKING:
    from tests.integration.conftest import ImageTracker

pytestmark = pytest.mark.integration

needs_mmdebstrap = pytest.mark.skipif(
    shutil.which("mmdebstrap") is None, reason="apt-get install mmdebstrap"
)


def test_containerfile_found_and_fallback_agrees() -> None:
    path = base.containerfile_path()
    assert path is not None and path.name == "Containerfile.base"
    assert path.read_text() == base.CONTAINERFILE_FALLBACK


def test_sources_include_updates_and_security() -> None:
    assert base.sources_lines("bookworm") == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    assert base.sources_lines("sid", mirror="http://m.example/debian/") == [
        "deb http://m.example/debian sid main"
    ]


def test_unknown_suite_needs_an_epoch(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pass an epoch"):
        make_rootfs(tmp_path / "r.tar", suite="sid")


def test_missing_mmdebstrap_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="apt-get install mmdebstrap"):
        make_rootfs(tmp_path / "r.tar")
    assert list(tmp_path.iterdir()) == []


def _packages(rootfs: Path) -> dict[str, str]:
    """Installed package -> version, from the tarball's dpkg status."""
    with tarfile.open(rootfs) as tar:
        status = tar.extractfile("./var/lib/dpkg/status")
        assert status is not None
        text = status.read().decode()
    out = {}
    for stanza in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out


def test_rootfs_is_reproducible(
    session_rootfs: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two mmdebstrap runs give the same bytes, unless Debian published updates in between."""
    first_path, first = session_rootfs
    second_path = tmp_path_factory.mktemp("rootfs") / "rootfs.tar"
    second = make_rootfs(second_path, suite="bookworm")
    if second != first and _packages(second_path) != _packages(first_path):
        # The archive moved between the runs (seen: a libzstd1 update); try once more.
        first_path, first = second_path, second
        second_path = tmp_path_factory.mktemp("rootfs") / "rootfs.tar"
        second = make_rootfs(second_path, suite="bookworm")
    assert second == first
    assert second_path.read_bytes() == first_path.read_bytes()


def test_rootfs_contents(session_rootfs: tuple[Path, str]) -> None:
    path, digest = session_rootfs
    assert len(digest) == 64
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        sources = tar.extractfile("./etc/apt/sources.list")
        assert sources is not None
        text = sources.read().decode()
        newest = max(m.mtime for m in tar.getmembers())
    assert "./usr/bin/apt-get" in names and "./usr/bin/bash" in names
    assert not any(n.startswith("./dev/") for n in names)
    assert "./etc/hostname" not in names and "./etc/resolv.conf" not in names
    assert "bookworm-security" in text and "bookworm-updates" in text
    assert newest <= base.DEFAULT_EPOCHS["bookworm"]  # every timestamp clamped to the epoch


def test_build_base_on_each_engine(
    engine: Engine, images: ImageTracker, session_rootfs: tuple[Path, str]
) -> None:
    tag = images.tag("debian")
    made = build_base(engine, session_rootfs[0], suite="bookworm", tag=tag)
    assert (made.ref, made.rootfs_sha256) == (tag, session_rootfs[1])
    info = engine.inspect_image(tag)
    assert info.id == made.image_id
    assert info.labels[BASE_SUITE] == "bookworm"
    assert info.labels[BASE_EPOCH] == str(base.DEFAULT_EPOCHS["bookworm"])
    assert info.labels[BASE_ROOTFS] == session_rootfs[1]
    assert info.env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    result = engine.run(tag, ["cat", "/etc/debian_version"], network=False)
    assert result.exit_code == 0 and result.output.startswith("12.")


@needs_mmdebstrap
def test_make_base_end_to_end(docker_or_podman: Engine, session_rootfs: tuple[Path, str]) -> None:
    """make_base = mmdebstrap + build + tag, once (on Docker if it runs, else podman)."""
    engine = docker_or_podman
    tag = f"imagesmith-it/debian:{uuid.uuid4().hex[:12]}"
    temp_dirs = set(Path(tempfile.gettempdir()).glob("imagesmith-base-*"))
    lines: list[str] = []
    try:
        made = make_base(engine, suite="bookworm", tag=tag, on_line=lines.append)
        assert made.ref == tag
        assert any(line.startswith("I: ") for line in lines)  # mmdebstrap's progress
        assert any("STEP 2/" in line or "Step 2/" in line for line in lines)  # the build's
        assert engine.inspect_image(tag).labels[BASE_ROOTFS] == made.rootfs_sha256
        if made.rootfs_sha256 != session_rootfs[1]:
            # Only an archive update in between may change the bytes.
            listing = engine.run(tag, ["dpkg-query", "-W", "-f", "${Package} ${Version}\n"])
            packages = dict(line.split(" ", 1) for line in listing.output.splitlines())
            assert packages != _packages(session_rootfs[0])
    finally:
        engine.remove_image(tag, force=True)
    assert set(Path(tempfile.gettempdir()).glob("imagesmith-base-*")) <= temp_dirs


def test_base_image_apt_works(engine: Engine, base_image: str) -> None:
    """apt inside the image reaches the normal archive, updates and security included."""
    script = (
        "set -e; apt-get update; "
        "apt-get install -y --no-install-recommends git >/dev/null; git --version"
    )
    result = engine.run(base_image, ["bash", "-c", script])
    assert result.exit_code == 0, result.output[-2000:]
    assert "bookworm-security" in result.output and "bookworm-updates" in result.output
    assert "git version" in result.output
