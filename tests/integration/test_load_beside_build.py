"""Docker loads a build's finished layers, made canonical, while the build goes on
(`Prewarm`, `Engine.loads_beside_builds`): the load after the build then sends only what
was made after them, the digest is the one a build without it gives, and the images
loaded on the way are gone when the build is over (issue 18: the part after the build)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import imagesmith.pipeline.canonical_build as canonical_build
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import BuildResult, build
from tests.integration.conftest import ensure_test_base

pytestmark = [pytest.mark.integration, pytest.mark.docker]


@pytest.fixture
def spec(
    docker_engine: Engine,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Spec]:
    """A spec whose last stage makes a layer (its run step) and then more steps."""
    base = ensure_test_base(docker_engine, request)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = f"it-beside-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base}"\n'
        f'[env]\nMARK = "{name}"\n'
        f'[image]\nrun = ["echo {name} > /marked"]\ncmd = ["cat", "/marked"]\n'
    )
    yield load_spec(tmp_path / "env.toml")


def _built(
    engine: Engine, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> tuple[BuildResult, list[tuple[int, str]]]:
    """A --no-cache build of `spec`, and each load: (layers left out as present, image)."""
    loads: list[tuple[int, str]] = []
    real = canonical_build._load_archive

    def recording(engine: Engine, layout: Path, workdir: Path, *, present: int) -> str:
        loaded = real(engine, layout, workdir, present=present)
        loads.append((present, loaded))
        return loaded

    monkeypatch.setattr(canonical_build, "_load_archive", recording)
    return build(spec, engine, no_cache=True), loads


def _removed(engine: Engine, result: BuildResult) -> None:
    for ref in (*result.tags, result.image_id):
        with contextlib.suppress(EngineError):
            engine.remove_image(ref, force=True)


def test_layers_load_during_the_build_and_what_they_loaded_goes(
    docker_engine: Engine, spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = docker_engine
    result, loads = _built(engine, spec, monkeypatch)
    try:
        layers = int(
            subprocess.run(
                ["docker", "image", "inspect", "-f", "{{len .RootFS.Layers}}", result.image_id],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        *during, (present, final) = loads
        assert final == result.image_id
        # The image after the run step was loaded while the build went on; the load after
        # the build found every layer there and sent the config alone.
        assert during, loads
        assert present == layers
        for _, image_id in during:
            if image_id != final:
                assert not engine.image_exists(image_id), "an image loaded on the way is left"

        # Without loading beside the build: the same image, every new layer sent after it.
        _removed(engine, result)
        monkeypatch.setattr(type(engine), "loads_beside_builds", False)
        again, loads_after = _built(engine, spec, monkeypatch)
        assert (again.digest, again.image_id) == (result.digest, result.image_id)
        assert len(loads_after) == 1 and loads_after[0][0] < layers
    finally:
        _removed(engine, result)
