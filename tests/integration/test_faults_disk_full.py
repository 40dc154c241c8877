"""A full disk under each of imagesmith's cache folders, on Docker and on podman (issue 18).

Each case mounts a tiny tmpfs (64 KiB, as root) over one folder of a fresh cache and
builds: one error line that says the disk is full, exit 1, no build record, no tag, and
every entry left in the cache (on the full disk too) still matches its digest. Then the
tmpfs grows (a remount keeps what was written) and the same build succeeds, with the
digest of a build that had space all along.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

from imagesmith.engine.base import Engine
from tests.integration.faults_kit import (
    build_digest,
    cache_problems,
    environment,
    imagesmith,
    parsed,
    remove_recorded,
    tiny_spec,
    unique,
)

pytestmark = pytest.mark.integration

#: Folder -> whether a full disk there stops the build. The layer cache is an accelerator:
#: one that cannot be written costs time, never a build (canonical.LayerCache).
FOLDERS = {"debs": True, "wheels": True, "venvs": True, "layers": False, "images": True}
#: Left by a download cut short, and resumed by the next one (debs.py); never taken whole.
RESUMABLE = ".partial"


@pytest.fixture(scope="module")
def spec_with_space(
    engine: Engine, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, Path, str]]:
    """The tiny spec, locked and built with space (image removed after): its folder, its
    cache, its digest."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    root = tmp_path_factory.mktemp(f"disk-full-{engine.name}")
    spec = tiny_spec(root / "lab", base_image, name=unique("it-full"))
    built = imagesmith(["build", str(spec), "--engine", engine.name], environment(root))
    assert built.returncode == 0, built.stderr
    remove_recorded(engine, spec)  # its tag would hide whether a failed build tagged
    yield spec, root / "cache" / "imagesmith", build_digest(built.stdout)


def _mount(point: Path, size: str, *, remount: bool = False) -> None:
    options = f"remount,size={size}" if remount else f"size={size},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)


@pytest.mark.parametrize("folder", list(FOLDERS))
def test_full_disk_under_a_cache_folder(
    folder: str,
    engine: Engine,
    spec_with_space: tuple[Path, Path, str],
    tmp_path: Path,
) -> None:
    reference_spec, reference_cache, digest = spec_with_space
    spec = tmp_path / "lab" / "env.toml"
    spec.parent.mkdir()
    shutil.copy(reference_spec, spec)
    shutil.copy(reference_spec.with_suffix(".lock"), spec.with_suffix(".lock"))
    cache = tmp_path / "cache" / "imagesmith"
    if folder != "debs":  # the .debs come from the archive once, not once per case
        shutil.copytree(reference_cache / "debs", cache / "debs")
    point = cache / folder
    point.mkdir(parents=True, exist_ok=True)
    env = environment(tmp_path)
    args = ["build", str(spec), "--engine", engine.name]
    _mount(point, "4k")
    try:
        full = imagesmith(args, env)
        assert "Traceback" not in full.stderr
        if FOLDERS[folder]:
            errors = [line for line in full.stderr.splitlines() if line.startswith("error")]
            assert full.returncode == 1, full.stderr
            assert errors == [full.stderr.splitlines()[-1]], full.stderr
            assert "is full (no space left on device)" in errors[0], errors
            assert parsed(spec.with_suffix(".build.json")) is None
            name = tomllib.loads(spec.read_text())["name"]
            assert not engine.image_exists(f"{name}:1")
        else:
            assert full.returncode == 0, full.stderr
            assert build_digest(full.stdout) == digest
        left = cache_problems(cache)
        assert [p for p in left if not p.split(":")[0].endswith(RESUMABLE)] == []

        _mount(point, "1g", remount=True)  # space again; what was written stays
        again = imagesmith(args, env)
        assert again.returncode == 0, again.stderr
        assert build_digest(again.stdout) == digest
        assert cache_problems(cache) == []
    finally:
        remove_recorded(engine, spec)
        subprocess.run(["umount", "--lazy", str(point)], check=False)
