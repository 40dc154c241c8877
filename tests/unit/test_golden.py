"""Golden digests: what a lock's `format` promises, pinned by committed bytes.

A lock in format N must render to the same Containerfile and the same engine output must
canonicalise to the same digest for as long as this imagesmith says it builds format N
(`imagesmith.model.lock.LOCK_FORMAT`). Two kinds of committed files hold that:

- tests/golden/engine-export/: two tiny images, the same Containerfile built by Docker
  and by podman and saved (make.sh beside them made them), and `canonical.json`, the
  canonical digest both must give;
- tests/golden/NAME/: a committed `env.lock` and the `Containerfile` it renders to.

`IMAGESMITH_UPDATE_GOLDEN=1` rewrites them, and that run fails. It refuses to record a
changed digest or Containerfile under an unchanged LOCK_FORMAT: bump the format first
(while no release has written a format, delete its golden files instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from imagesmith.errors import LockError
from imagesmith.image.canonical import canonicalize
from imagesmith.image.paths import VOLATILE_PATHS
from imagesmith.model.lock import LOCK_FORMAT, read_lock, write_lock
from imagesmith.render.containerfile import render
from tests.conftest import EXAMPLE
from tests.fixtures.golden import GOLDEN, UPDATE_VAR, check_golden, updating
from tests.fixtures.make_lock import make_lock

EXPORTS = GOLDEN / "engine-export"
#: SOURCE_DATE_EPOCH of the golden canonicalisation (2023-11-14), before the exports' build.
EPOCH = 1_700_000_000
BUMP = "bump LOCK_FORMAT in imagesmith/model/lock.py: a format names one rendering and one canonical form"


def _minimal_spec(folder: Path) -> Path:
    (folder / "env.toml").write_text('name = "tiny"\n[base]\nimage = "debian:bookworm"\n')
    return folder / "env.toml"


#: Golden Containerfiles, and the spec their committed lock is made from in update mode.
SPECS: dict[str, Callable[[Path], Path]] = {
    "lab-analysis": lambda _: EXAMPLE / "env.toml",
    "minimal": _minimal_spec,
}


def _canonical_record(export: Path, out: Path) -> dict[str, object]:
    image = canonicalize(export, out, epoch=EPOCH, drop_paths=VOLATILE_PATHS, write_archive=False)
    return {
        "format": LOCK_FORMAT,
        "manifest_digest": image.manifest_digest,
        "config_digest": image.config_digest,
        "layer_digests": list(image.layer_digests),
        "diff_ids": list(image.diff_ids),
    }


def test_engine_exports_canonicalise_to_the_golden_digest(tmp_path: Path) -> None:
    docker = _canonical_record(EXPORTS / "docker.tar.gz", tmp_path / "docker")
    podman = _canonical_record(EXPORTS / "podman.tar.gz", tmp_path / "podman")
    assert docker == podman  # the same Containerfile on both engines: one canonical image
    golden = EXPORTS / "canonical.json"
    if updating() and golden.exists():
        old = json.loads(golden.read_text())
        if old["format"] == LOCK_FORMAT and old != docker:
            pytest.fail(f"the canonical form changed under format {LOCK_FORMAT}: {BUMP}")
    check_golden(golden, json.dumps(docker, indent=2, sort_keys=True) + "\n")


def _needs_new_lock(path: Path) -> bool:
    try:
        return read_lock(path).format != LOCK_FORMAT
    except LockError:
        return True


def _instructions(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_committed_lock_renders_to_the_golden_containerfile(name: str, tmp_path: Path) -> None:
    folder = GOLDEN / name
    lock_path, containerfile = folder / "env.lock", folder / "Containerfile"
    if updating() and _needs_new_lock(lock_path):
        folder.mkdir(exist_ok=True)
        lock = make_lock(SPECS[name](tmp_path))
        write_lock(lock, lock_path)
    lock = read_lock(lock_path)
    assert lock.format == LOCK_FORMAT, (
        f"{lock_path} is in format {lock.format}, this imagesmith builds {LOCK_FORMAT}: "
        f"make new golden locks with {UPDATE_VAR}=1"
    )
    text = render(lock)
    changed = containerfile.exists() and (
        _instructions(containerfile.read_text()) != _instructions(text)
    )
    if updating() and changed:
        pytest.fail(f"{lock_path} (format {LOCK_FORMAT}) renders differently now: {BUMP}")
    check_golden(containerfile, text)


def test_an_update_run_rewrites_and_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "golden.txt"
    path.write_text("old\n")
    monkeypatch.setenv(UPDATE_VAR, "1")
    with pytest.raises(pytest.fail.Exception, match="rewrote"):
        check_golden(path, "new\n")
    assert path.read_text() == "new\n"
    with pytest.raises(pytest.fail.Exception, match="unchanged"):
        check_golden(path, "new\n")
    monkeypatch.delenv(UPDATE_VAR)
    check_golden(path, "new\n")
    with pytest.raises(AssertionError, match="differs"):
        check_golden(path, "newer\n")
