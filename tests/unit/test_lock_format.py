"""The lock's format: a lock this imagesmith would build to another digest is refused.

tests/fixtures/lock-0.5.0/env.lock was written by imagesmith 0.5.0's own code (the whole
spec embedded, no `format`): what labs have in their repositories today.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagesmith import __version__
from imagesmith.cli import app
from imagesmith.engine.base import ImageInfo
from imagesmith.errors import InputError, LockFormatError
from imagesmith.model.lock import LOCK_FORMAT, read_lock, write_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.render.containerfile import embedded_lock, lock_in_image, render
from tests.fixtures.make_lock import make_lock

LEGACY = Path(__file__).resolve().parent.parent / "fixtures" / "lock-0.5.0"
runner = CliRunner()


@pytest.fixture
def legacy(tmp_path: Path) -> Path:
    """A copy of the spec and the lock 0.5.0 wrote for it; returns the spec's path."""
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    return folder / "env.toml"


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def _says_how_to_proceed(line: str) -> None:
    assert "written by imagesmith 0.5.0 before lock formats were recorded" in line
    assert f"imagesmith {__version__} builds lock format {LOCK_FORMAT}" in line
    assert "install imagesmith 0.5.0 to rebuild it bit for bit" in line
    assert "run `imagesmith lock env.toml` to move the lock to format" in line
    assert "the same pins where the archive still has them, a new digest" in line


def test_the_fixture_is_a_0_5_0_lock(legacy: Path) -> None:
    lock = read_lock(legacy.with_suffix(".lock"))
    assert (lock.format, lock.imagesmith_version) == (None, "0.5.0")
    assert "resources" in lock.spec_data  # 0.5.0 embedded the whole spec


def test_render_refuses_a_lock_of_another_format_in_one_line(legacy: Path) -> None:
    result = runner.invoke(app, ["render", str(legacy)])
    assert result.exit_code == 2, result.output
    line = _one_line(result.stderr)
    assert line.startswith("error: env.lock was written by imagesmith 0.5.0")
    _says_how_to_proceed(line)
    assert result.stdout == ""


def test_lock_check_reports_the_format(legacy: Path) -> None:
    result = runner.invoke(app, ["lock", "--check", str(legacy)])
    assert result.exit_code == 1, result.output
    _says_how_to_proceed(_one_line(result.stderr))


def test_a_newer_format_is_refused_too(tmp_path: Path) -> None:
    spec = tmp_path / "env.toml"
    spec.write_text('name = "tiny"\n[base]\nimage = "debian:bookworm"\n')
    future = dataclasses.replace(make_lock(spec), format=LOCK_FORMAT + 1, imagesmith_version="9.0")
    write_lock(future, tmp_path / "env.lock")
    result = runner.invoke(app, ["render", str(spec)])
    assert result.exit_code == 2
    line = _one_line(result.stderr)
    assert f"written by imagesmith 9.0 in lock format {LOCK_FORMAT + 1}" in line
    assert "install imagesmith 9.0" in line


def test_build_refuses_it_unless_told_to_relock(legacy: Path) -> None:
    from imagesmith.pipeline.build import ensure_lock

    class NoEngine:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the engine was used ({name})")

    spec = load_spec(legacy)
    with pytest.raises(LockFormatError, match="install imagesmith 0.5.0"):
        ensure_lock(spec, NoEngine(), relock=False, platform="linux/amd64", on_line=print)  # type: ignore[arg-type]


def test_lock_moves_it_to_this_format_asking_apt_where_its_debs_live(legacy: Path) -> None:
    """A 0.5.0 lock does not record where its .debs live: moving it asks the base's apt
    (the engine), keeping the same base and versions (tests/integration covers the run)."""
    lock_path = legacy.with_suffix(".lock")
    before = lock_path.read_bytes()
    result = runner.invoke(app, ["lock", str(legacy), "--engine", "no-such-engine"])
    assert result.exit_code == 2, result.output
    assert "apt: the previous lock does not say where its .debs live" in result.stderr
    assert "unknown engine 'no-such-engine'" in result.stderr
    assert lock_path.read_bytes() == before  # nothing half-done


# -- images: the lock label, under today's name and the one 0.5.0 used ----------------------


def _legacy_labels() -> dict[str, str]:
    lock = read_lock(LEGACY / "env.lock")
    return {"io.imagesmith.lock": embedded_lock(lock), "io.imagesmith.lock-hash": lock.lock_hash}


def test_the_lock_of_a_0_5_0_image_is_still_read() -> None:
    text, lock = lock_in_image("old:1", _legacy_labels(), path=Path("env.lock"))
    assert text == (LEGACY / "env.lock").read_text()
    assert lock.imagesmith_version == "0.5.0" and lock.spec.resources.memory == "8Gi"


def test_the_lock_of_a_0_6_0_image_is_read_under_its_new_label(tmp_path: Path) -> None:
    spec = tmp_path / "env.toml"
    spec.write_text('name = "tiny"\n[base]\nimage = "debian:bookworm"\n')
    lock = make_lock(spec)
    _, read = lock_in_image("new:1", {"dev.imagesmith.lock": embedded_lock(lock)}, path=spec)
    assert read == dataclasses.replace(lock, spec_path=read.spec_path)
    assert f'"dev.imagesmith.lock"="{embedded_lock(lock)}"' in render(lock)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({}, "x:1 was not built by imagesmith (it has no dev.imagesmith.lock label)"),
        ({"io.imagesmith.lock": "bm90IHpsaWI="}, "x:1: its io.imagesmith.lock label is damaged"),
    ],
)
def test_a_missing_or_damaged_lock_label_is_one_line(labels: dict[str, str], message: str) -> None:
    with pytest.raises(InputError) as caught:
        lock_in_image("x:1", labels, path=Path("env.lock"))
    assert str(caught.value) == message


class _LabelsOnly:
    """An engine that knows one image's labels and must do nothing else."""

    name = "fake"

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def inspect_image(self, ref: str) -> ImageInfo:
        return ImageInfo(id="sha256:" + "1" * 64, labels=self.labels)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked to {name}")


def test_inspect_shows_a_0_5_0_image(monkeypatch: pytest.MonkeyPatch) -> None:
    import imagesmith.engine

    monkeypatch.setattr(
        imagesmith.engine, "choose_engine", lambda _: (_LabelsOnly(_legacy_labels()), "test")
    )
    result = runner.invoke(app, ["inspect", "old:1"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("old:1: legacy:1.0, image sha256:111")
    spec = runner.invoke(app, ["inspect", "old:1", "--show", "spec"])
    assert 'memory = "8Gi"' in spec.stdout  # 0.5.0 carried the run-time tables too


def test_verify_image_refuses_a_0_5_0_image_without_building() -> None:
    from imagesmith.pipeline.verify import verify_image

    with pytest.raises(LockFormatError) as caught:
        verify_image("old:1", _LabelsOnly(_legacy_labels()))  # type: ignore[arg-type]
    (line,) = caught.value.lines()
    assert line.startswith("the lock old:1 carries was written by imagesmith 0.5.0")
    assert "install imagesmith 0.5.0 to rebuild it bit for bit" in line


# -- a lock made for another platform -------------------------------------------------------


def test_a_lock_for_another_platform_is_stale_for_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build --platform P` never builds from a lock made for another platform (its base
    digest and wheels are that platform's); with --relock it locks again keeping none of
    its pins, as `imagesmith lock --platform P` does."""
    from imagesmith.errors import StaleLockError
    from imagesmith.pipeline import build as build_module

    spec_path = tmp_path / "env.toml"
    spec_path.write_text('name = "tiny"\n[base]\nimage = "debian:bookworm"\n')
    arm = dataclasses.replace(make_lock(spec_path), platform="linux/arm64")
    write_lock(arm, tmp_path / "env.lock")
    spec = load_spec(spec_path)
    with pytest.raises(StaleLockError, match="env.lock pins linux/arm64, not linux/amd64"):
        build_module.ensure_lock(
            spec,
            None,  # type: ignore[arg-type]
            relock=False,
            platform="linux/amd64",
            on_line=print,
        )
    same, made = build_module.ensure_lock(
        spec,
        None,  # type: ignore[arg-type]
        relock=False,
        platform="linux/arm64",
        on_line=print,
    )
    assert same == read_lock(tmp_path / "env.lock") and not made
    kept: list[Any] = []

    def fake_lock_spec(spec: Any, *, previous: Any, platform: str, **_: Any) -> Any:
        kept.append(previous)
        return dataclasses.replace(arm, platform=platform)

    monkeypatch.setattr("imagesmith.locking.resolve.lock_spec", fake_lock_spec)
    relocked, made = build_module.ensure_lock(
        spec,
        None,  # type: ignore[arg-type]
        relock=True,
        platform="linux/amd64",
        on_line=print,
    )
    assert made and relocked.platform == "linux/amd64"
    assert kept == [None]  # none of the arm64 pins carried over


# -- a base `imagesmith base` made, under a name a public registry serves too -------------


@pytest.mark.parametrize(
    ("labels", "local"),
    [
        ({"dev.imagesmith.base.rootfs-sha256": "x"}, True),  # made here: pinned by its ID
        ({"dev.imagesmith.base.rootfs-sha256": "x", "dev.imagesmith.lock-hash": "y"}, False),
        ({}, False),  # pulled: the registry's digest
    ],
)
def test_a_base_made_here_is_pinned_by_its_id_whatever_podman_lists(
    labels: dict[str, str], local: bool
) -> None:
    """podman lists `docker.io/library/debian@sha256:<its own manifest>` for a local image
    tagged debian:bookworm; no registry serves that digest, so a lock pinning it would
    not build anywhere else."""
    from imagesmith.locking.resolve import resolve_base

    image_id = "sha256:" + "1" * 64
    listed = "docker.io/library/debian@sha256:" + "2" * 64

    class Store:
        def image_exists(self, ref: str) -> bool:
            return ref == "debian:bookworm"

        def inspect_image(self, ref: str) -> ImageInfo:
            return ImageInfo(id=image_id, repo_digests=(listed,), labels=labels)

    base = resolve_base("debian:bookworm", Store(), "linux/amd64")  # type: ignore[arg-type]
    assert base.local is local
    assert base.pinned == (image_id if local else "debian@sha256:" + "2" * 64)
