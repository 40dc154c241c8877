"""The engine a command uses is said once, with why; a missing image says where else it is.

Real Docker and real podman: an image tagged in Docker only is looked for in podman.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.engine.base import Engine
from tests.integration.conftest import TEST_REPOSITORY
from tests.support import check_schema

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture
def docker_only_tag(docker_engine: Engine, podman_engine: Engine) -> Iterator[str]:
    """A tag Docker has and podman does not (on an image both already hold)."""
    base = "imagesmith/debian:bookworm"
    if not docker_engine.image_exists(base):
        pytest.skip(f"{base} is not in Docker (tests/integration/test_base.py makes it)")
    tag = f"{TEST_REPOSITORY}/engine-choice-{uuid.uuid4().hex[:8]}:1"
    subprocess.run(["docker", "tag", base, tag], check=True, capture_output=True)
    try:
        yield tag
    finally:
        subprocess.run(["docker", "rmi", tag], check=False, capture_output=True)


def _engine_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("engine: ")]


def test_engine_choice_is_said_once_with_its_reason(
    docker_only_tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagesmith.cli import app

    monkeypatch.delenv("IMAGESMITH_ENGINE", raising=False)
    named = runner.invoke(app, ["inspect", docker_only_tag, "--engine", "podman", "--json"])
    assert named.exit_code == 1
    assert _engine_lines(named.stderr) == ["engine: podman (--engine)"]
    report = check_schema(json.loads(named.stdout))
    assert report["problems"] == [
        f"podman: no local image {docker_only_tag}; docker has it: add --engine docker "
        "(or set IMAGESMITH_ENGINE=docker)"
    ]

    from_env = runner.invoke(app, ["inspect", docker_only_tag], env={"IMAGESMITH_ENGINE": "docker"})
    assert _engine_lines(from_env.stderr) == ["engine: docker (IMAGESMITH_ENGINE)"]
    # imagesmith/debian is made by `imagesmith base`, not `build`: no lock label
    assert from_env.exit_code == 2 and "was not built by imagesmith" in from_env.stderr

    auto = runner.invoke(app, ["inspect", f"{docker_only_tag}-nowhere"])
    assert auto.exit_code == 1
    assert _engine_lines(auto.stderr) == ["engine: docker (Docker daemon answered)"]
    assert "podman has no such image either" in auto.stderr


def test_pull_asks_the_registry_before_choosing_an_engine(
    podman_engine: Engine, tmp_path: Path
) -> None:
    from imagesmith.cli import app

    result = runner.invoke(
        app, ["pull", "127.0.0.1:1/none@sha256:" + "0" * 64, "--engine", "podman", "--json"]
    )
    assert result.exit_code == 1, result.output
    # The registry does not answer: pull stops there, before it chooses (or names) an engine.
    assert _engine_lines(result.stderr) == []
    assert "127.0.0.1:1" in result.stderr
    report = check_schema(json.loads(result.stdout))
    assert report["command"] == "pull" and report["ok"] is False


def test_json_of_the_engine_commands_on_a_real_build(
    docker_engine: Engine,
    podman_engine: Engine,
    open_registry: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """build, inspect, verify, push (Docker) and pull (podman) with --json: each object
    matches its schema, and the digests agree from build to pull."""
    from imagesmith.cli import app
    from tests.integration.conftest import ensure_test_base

    base = ensure_test_base(docker_engine, request)
    name = f"{TEST_REPOSITORY}-json-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "env.toml"
    spec.write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base}"\n'
        '[image]\ncmd = ["/bin/sh", "-c", "id -u"]\n'
    )

    def json_run(*args: str) -> dict[str, object]:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return check_schema(json.loads(result.stdout))

    built = json_run("build", str(spec), "--engine", "docker")
    pinned = ""
    try:
        assert built["engine"] == "docker"
        tag = f"{name}:1.0"
        inspected = json_run("inspect", tag, "--engine", "docker")
        assert inspected["lock_hash"] == built["lock_hash"] and inspected["name"] == name
        verified = json_run("verify", str(spec), "--engine", "docker")
        assert verified["identical"] is True and verified["reference"] == built["digest"]
        pushed = json_run("push", str(spec), "--to", f"{open_registry}/lab/{name}")
        assert pushed["digest"] == built["digest"]
        pinned = str(pushed["pinned"])
        pulled = json_run("pull", pinned, "--engine", "podman")
        assert pulled["pinned"] == pinned and pulled["engine"] == "podman"
        assert pulled["lock_hash"] == built["lock_hash"]
    finally:
        for ref in [*built["tags"], built["image_id"]]:  # type: ignore[misc]
            docker_engine.remove_image(str(ref), force=True)
        if pinned:
            podman_engine.remove_image(pinned, force=True)
