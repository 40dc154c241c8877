"""Bit-for-bit reproducibility: the same lock gives the same digest, run after run and
on Docker and podman alike (the reproducibility issue's bars 1 and 2).

One test, because each step feeds the next and a cold build of the example costs minutes:
a base made from one root filesystem is the same image on both engines; the example
spec locked once builds to one digest on Docker and on podman; and `verify` (a --no-cache
rebuild) finds the same digest again on each engine.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.locking.resolve import lock_spec
from imagesmith.model.lock import read_lock, write_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.debian_base import build_base
from imagesmith.pipeline.verify import verify
from tests.conftest import EXAMPLE

pytestmark = pytest.mark.integration
SHARED_BASE = "imagesmith-it/debian-shared:bookworm"


def test_same_lock_same_digest_on_both_engines_and_after_no_cache_rebuilds(
    docker_engine: Engine,
    podman_engine: Engine,
    session_rootfs: tuple[Path, str],
    tmp_path: Path,
) -> None:
    rootfs, _ = session_rootfs
    docker_base = build_base(docker_engine, rootfs, tag=SHARED_BASE)
    podman_base = build_base(podman_engine, rootfs, tag=SHARED_BASE)
    # The canonical base: one root filesystem, one image ID, whichever engine imported it.
    assert docker_base.image_id == podman_base.image_id

    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLE, folder)
    path = folder / "env.toml"
    path.write_text(
        path.read_text()
        .replace('name = "lab-analysis"', 'name = "it-repro"')
        .replace('image = "debian:bookworm"', f'image = "{SHARED_BASE}"')
    )
    spec = load_spec(path)
    write_lock(lock_spec(spec, engine=lambda: docker_engine), spec.lock_path)
    lock = read_lock(spec.lock_path)
    assert lock.base.local and lock.base.digest == docker_base.image_id

    results = {}
    try:
        for engine in (docker_engine, podman_engine):
            results[engine.name] = build(spec, engine)
            verdict = verify(spec, lock, engine)
            assert verdict.identical, "\n".join(verdict.differences)
            assert verdict.rebuilt == results[engine.name].digest
            # After verify, a plain build still gives the same image (whether the engine
            # reuses the first build's steps or the rebuild's is the engine's choice).
            again = build(spec, engine)
            assert again.image_id == results[engine.name].image_id
        assert results["docker"].digest == results["podman"].digest
        assert results["docker"].image_id == results["podman"].image_id
    finally:
        for engine in (docker_engine, podman_engine):
            result = results.get(engine.name)
            if result is not None:
                for tag in result.tags:
                    engine.remove_image(tag, force=True)
                engine.remove_image(result.image_id, force=True)


@pytest.mark.parametrize("engine", ["docker", "podman"], indirect=True)
def test_verify_image_rebuilds_from_the_lock_it_carries(
    engine: Engine, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagesmith.pipeline.verify import verify_image

    (tmp_path / "env.toml").write_text(
        f'name = "it-verify-{engine.name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
        '[env]\nX = "1"\n[image]\nrun = ["echo built > /etc/marker"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    result = build(spec, engine)
    monkeypatch.chdir(tmp_path.parent)  # the image alone: no spec folder needed
    try:
        verdict = verify_image(result.tags[0], engine)
        assert verdict.identical, "\n".join(verdict.differences)
        # A source of variation coming back (another build time) is caught and explained.
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1000000000")
        changed = verify_image(result.tags[0], engine)
        assert not changed.identical
        assert any("created" in line for line in changed.differences), changed.differences
    finally:
        for tag in result.tags:
            engine.remove_image(tag, force=True)
        engine.remove_image(result.image_id, force=True)
