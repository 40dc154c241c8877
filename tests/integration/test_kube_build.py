"""`build --on kubernetes` for real (issue 15, item 4): imagesmith builds the builder image
from recipes/imagesmith-builder and pushes it, stores the spec's build context, inputs and
local base in a registry on 127.0.0.1, and writes the Job; the Job passes
`kubernetes-validate --strict`, and its pod, played with `podman kube play`, builds the
spec from the registry alone and pushes the digest a local build prints.

No Kubernetes API server can run on these machines, so the Job's pod template is played
as a Pod (podman 4.3 plays no Job). Two changes are made to it for that, both about the
test machine, not the Job: `hostNetwork: true`, so that the pod reaches the registry on
127.0.0.1, and no `hostUsers: false`, because podman cannot mount /sys in a user
namespace that does not own the (host's) network namespace. The pod keeps the Job's
securityContext otherwise: no `privileged`, the capabilities it names.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.model.lock import read_lock
from imagesmith.registry.client import RegistryClient
from imagesmith.render.containerfile import content_tag
from tests.integration.conftest import ensure_test_base, second_podman
from tests.support import check_schema, tool

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _app_spec(folder: Path, base: str, repository: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "hello.py").write_text("print('hello from a pod-built image')\n")
    spec = folder / "env.toml"
    spec.write_text(
        f'name = "kube-built"\nversion = "1.0"\n[base]\nimage = "{base}"\n'
        '[apt]\npackages = ["jq"]\n[python]\nrequirements = ["six==1.17.0"]\n'
        '[image]\ncopy = [{ src = "hello.py", dest = "/opt/hello.py" }]\n'
        f'[registry]\nrepository = "{repository}"\n'
    )
    return spec


def test_the_job_pod_builds_the_digest_a_local_build_prints(
    podman_engine: Engine,
    open_registry: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a fresh machine (a podman store and an imagesmith cache of its own) whose base
    is its local `debian:bookworm`: `build --on kubernetes` with no --builder makes the
    builder from the packaged recipe, as a user's first run does."""
    saved = tmp_path / "base.tar"
    podman_engine.save(ensure_test_base(podman_engine, request), saved)
    monkeypatch.chdir(tmp_path)
    run = uuid.uuid4().hex[:8]
    spec = _app_spec(tmp_path / "app", "debian:bookworm", f"{open_registry}/lab/kube-{run}")
    job_file = tmp_path / "build.yaml"
    pod_file = tmp_path / "pod.yaml"
    with second_podman(tmp_path, monkeypatch) as fresh:
        fresh.tag(fresh.load(saved), "docker.io/library/debian:bookworm")
        try:
            written = runner.invoke(
                app,
                [
                    "build",
                    str(spec),
                    "--on",
                    "kubernetes",
                    "--engine",
                    "podman",
                    "-o",
                    str(job_file),
                    "--json",
                ],
            )
            assert written.exit_code == 0, written.output
            report = check_schema(json.loads(written.stdout))
            builder = f"{open_registry}/lab/imagesmith-builder@sha256:"
            assert f"builder {builder}" in written.stderr  # beside the spec's repository
            checked = subprocess.run(
                [tool("kubernetes-validate"), "--strict", str(job_file)],
                capture_output=True,
                text=True,
            )
            assert checked.returncode == 0, checked.stdout + checked.stderr

            job = yaml.safe_load(job_file.read_text())
            assert report["job"] == job["metadata"]["name"] and not report["indexed"]
            assert report["builder"] == job["spec"]["template"]["spec"]["containers"][0]["image"]
            contexts = job["spec"]["template"]["spec"]["containers"][0]["args"][1:]
            assert [s["context"] for s in report["specs"]] == contexts
            pod_spec = job["spec"]["template"]["spec"]
            assert pod_spec.pop("hostUsers") is False
            pod_spec["hostNetwork"] = True
            assert pod_spec["containers"][0]["image"].startswith(builder)
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"kb-{run}"}}
            pod_file.write_text(yaml.safe_dump({**pod, "spec": pod_spec}))
            played = _podman("kube", "play", "--tls-verify=false", str(pod_file), timeout=300)
            assert played.returncode == 0, played.stdout + played.stderr
            name = f"kb-{run}-build"
            waited = _podman("wait", name, timeout=900)
            logs = _podman("logs", name).stdout + _podman("logs", name).stderr
            assert waited.stdout.strip() == "0", logs
            pod_digest = re.search(r"digest: (sha256:[0-9a-f]{64})", logs)
            assert pod_digest is not None, logs
            assert "substituted" not in logs  # the registry held no image for it: a real build

            local = runner.invoke(app, ["build", str(spec), "--engine", "podman", "--json"])
            assert local.exit_code == 0, local.output
            assert f'"digest": "{pod_digest.group(1)}"' in local.stdout

            lock = read_lock(spec.with_suffix(".lock"))
            repository = f"lab/kube-{run}"
            held, _, _ = RegistryClient(open_registry).manifest(repository, content_tag(lock))
            assert held == pod_digest.group(1)

            # `build-from` given what is not a build context: one line, nothing left behind.
            before = sorted(p.name for p in tmp_path.iterdir())
            image = f"{open_registry}/{repository}@{held}"
            wrong = runner.invoke(app, ["build-from", image, "--engine", "podman"])
            assert wrong.exit_code == 1, wrong.output
            assert wrong.stderr.strip().endswith(f"{image}: not an imagesmith build context")
            tagged = runner.invoke(app, ["build-from", f"{open_registry}/{repository}:latest"])
            assert tagged.exit_code == 2, tagged.output
            assert "name the build context by digest" in tagged.stderr
            assert sorted(p.name for p in tmp_path.iterdir()) == before
        finally:
            _podman("kube", "down", str(pod_file))  # the private store goes with second_podman
