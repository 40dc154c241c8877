"""examples/ci/pipeline.sh, run for real: lock check, build, verify, push, manifest.

The script is what examples/ci/github-actions.yml and gitlab-ci.yml run step by step
(tests/unit/test_docs.py checks that they run the same commands). Here it runs against a
docker-registry on 127.0.0.1 (no auth), on Docker, for a small spec on the local Debian
base, exactly as a CI job would: `imagesmith` from PATH, the committed lock, the registry
as its one argument. The registry's digest must be the one the build printed, and the Job
it publishes must name that digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from imagesmith.engine.base import Engine
from imagesmith.registry.client import RegistryClient
from tests.conftest import REPO
from tests.integration.conftest import ensure_test_base

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.registry]

PIPELINE = REPO / "examples" / "ci" / "pipeline.sh"
BIN = Path(sys.executable).parent  # the venv that has `imagesmith`


@pytest.fixture(scope="module")
def docker_base(docker_engine: Engine, request: pytest.FixtureRequest) -> str:
    """The local Debian base on Docker, built once when missing (and kept)."""
    return ensure_test_base(docker_engine, request)


@pytest.fixture
def lab(tmp_path: Path, docker_base: str, docker_engine: Engine) -> Iterator[Path]:
    """A lab's repository: a small env.toml and its committed lock; its images removed after."""
    folder = tmp_path / "lab"
    folder.mkdir()
    name = f"it-ci-{uuid.uuid4().hex[:8]}"
    (folder / "env.toml").write_text(
        f'name = "{name}"\nversion = "1.0.0"\n\n[base]\nimage = "{docker_base}"\n\n'
        '[env]\nGREETING = "hello from CI"\n\n'
        '[image]\nworkdir = "/work"\nuid = 10001\ncmd = ["/bin/sh"]\n\n'
        '[resources]\ncpu = "1"\nmemory = "1Gi"\n\n'
        '[job]\ncommand = ["/bin/sh", "-c", "echo \\"$GREETING\\""]\ntime = "10"\n'
    )
    locked = imagesmith("lock", "env.toml", cwd=folder)
    assert locked.returncode == 0, locked.stderr
    yield folder
    record = folder / "env.build.json"
    if record.exists():
        built = json.loads(record.read_text())
        for ref in [*built["tags"], built["image_id"]]:
            docker_engine.remove_image(ref, force=True)


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESMITH_REGISTRY_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env["IMAGESMITH_ENGINE"] = "docker"
    env["CI"] = "true"
    return env


def imagesmith(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "imagesmith"), *args, "--engine", "docker"],
        cwd=cwd,
        env=environment(),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def pipeline(lab: Path, repository: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PIPELINE), repository, "env.toml"],
        cwd=lab,
        env={**environment(), "ARTIFACTS": str(lab / "artifacts")},
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )


def test_pipeline_pushes_the_built_digest_and_publishes_its_job(
    lab: Path, open_registry: str
) -> None:
    repository = f"{open_registry}/lab/ci-example"
    done = pipeline(lab, repository)
    assert done.returncode == 0, done.stdout + done.stderr
    out = lab / "artifacts"
    built = json.loads((out / "build.json").read_text())
    pushed = json.loads((out / "pushed.json").read_text())
    digest = built["digest"]
    assert digest.startswith("sha256:") and pushed["digest"] == digest
    assert pushed["repository"] == repository
    # verify passed (the script stops at a failing step) and said so
    assert "reproducible" in done.stdout and "NOT reproducible" not in done.stderr
    assert f"pipeline: {repository}@{digest} is built, verified, pushed" in done.stdout

    # The registry serves exactly that manifest, under the digest and both tags.
    client = RegistryClient(open_registry)
    for reference in (digest, *pushed["tags"]):
        served, _, _ = client.manifest("lab/ci-example", reference)
        assert served == digest, reference

    # The published Job runs that digest and nothing else.
    job, policy = yaml.safe_load_all((out / "job.yaml").read_text())
    assert job["kind"] == "Job" and policy["kind"] == "NetworkPolicy"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"{repository}@{digest}"
    assert job["metadata"]["annotations"]["imagesmith.dev/image"] == f"{repository}@{digest}"
    assert job["spec"]["activeDeadlineSeconds"] == 600
    sbatch = (out / "job.sbatch").read_text()
    assert f"{repository}@{digest}" in sbatch and "#SBATCH --time=00:10:00" in sbatch
    assert "warning" not in done.stderr  # pushed: the manifest did not fall back to the build


def test_pipeline_stops_at_a_stale_lock_before_building(lab: Path, open_registry: str) -> None:
    spec = lab / "env.toml"
    # Something that goes into the image ([resources] would not stale the lock).
    spec.write_text(spec.read_text().replace("hello from CI", "hello again"))
    done = pipeline(lab, f"{open_registry}/lab/ci-stale")
    assert done.returncode == 1
    assert "env.lock is stale: env.toml changed since it was locked" in done.stderr
    assert not (lab / "artifacts" / "build.json").exists()
    assert not (lab / "env.build.json").exists()


def test_pipeline_wants_a_registry_argument(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(PIPELINE)], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert done.returncode == 2 and "usage:" in done.stderr
