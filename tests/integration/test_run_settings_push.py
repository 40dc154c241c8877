"""The run-time settings an image was first pushed with, seen by inspect on both engines.

A small image is built on each engine and pushed twice (through the CLI, to a real
docker-registry on 127.0.0.1) with another memory the second time: the image's digest
does not move, and inspect shows the first push's settings, labelled information only,
from this machine's record; a collaborator with an empty cache who pulls the image by
digest into the other engine reads the same settings from the registry.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build

pytestmark = [pytest.mark.integration, pytest.mark.registry]
runner = CliRunner()


@pytest.fixture
def small_spec(engine: Engine, base_image: str, tmp_path: Path) -> Iterator[Spec]:
    name = f"it-runset-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base_image}"\n'
        '[image]\ncmd = ["/bin/true"]\n[resources]\ncpu = "1"\nmemory = "1Gi"\n'
        '[job]\ncommand = ["/bin/echo", "first"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    result = build(spec, engine)
    yield spec
    for tag in result.tags:
        engine.remove_image(tag, force=True)
    engine.remove_image(result.image_id, force=True)


def _json(result_stdout: str) -> dict[str, object]:
    found: dict[str, object] = json.loads(result_stdout)
    return found


def test_inspect_shows_the_first_push_settings_here_and_to_a_collaborator(
    engine: Engine,
    small_spec: Spec,
    open_registry: str,
    docker_engine: Engine,
    podman_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec_path = str(small_spec.path)
    repository = f"{open_registry}/lab/{small_spec.name}"
    push = ["push", spec_path, "--to", repository, "--no-inputs", "--no-attestations", "--json"]
    first = runner.invoke(app, push)
    assert first.exit_code == 0, first.output
    pinned = str(_json(first.stdout)["pinned"])

    small_spec.path.write_text(small_spec.path.read_text().replace('"1Gi"', '"2Gi"'))
    again = runner.invoke(app, push)
    assert again.exit_code == 0, again.output
    assert _json(again.stdout)["pinned"] == pinned  # run-time settings are not the image

    tag = f"{small_spec.name}:1.0"
    shown = runner.invoke(app, ["inspect", tag, "--engine", engine.name])
    assert shown.exit_code == 0, shown.output
    assert "run-time settings at first publication (information only:" in shown.stdout
    assert '    resources.memory = "1Gi"' in shown.stdout.splitlines()
    assert f"as {pinned} (recorded on this machine at push)" in shown.stdout

    # A collaborator: nothing of this machine's cache, the image pulled by digest.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "collaborator-cache"))
    other = podman_engine if engine.name == "docker" else docker_engine
    pulled = runner.invoke(app, ["pull", pinned, "--engine", other.name])
    assert pulled.exit_code == 0, pulled.output
    try:
        seen = runner.invoke(app, ["inspect", pinned, "--engine", other.name, "--json"])
        assert seen.exit_code == 0, seen.output
        settings = _json(seen.stdout)["run_settings"]
        assert isinstance(settings, dict)
        assert settings["found"] is True and settings["pinned"] == pinned
        assert settings["source"].startswith(f"from {repository}:lock-")
        assert settings["settings"]["resources"] == {"cpu": "1", "memory": "1Gi"}
        assert settings["settings"]["job"] == {"command": ["/bin/echo", "first"]}
    finally:
        other.remove_image(pinned, force=True)
