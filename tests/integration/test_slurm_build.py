"""`imagesmith build SPECS --on slurm --wait` on the real one-node Slurm cluster
(scripts/start-slurm.sh, as in test_slurm_cluster.py), pushing to a registry on 127.0.0.1
that wants a password (issue 15, item 3).

Three tiny specs (the test base, one small apt package) in one job array: two build with
podman in their tasks and push, and their digests are those of local podman builds of the
same locks; the third names a package Debian does not have, fails its task only, and
`--wait` says which spec and where its log is. The tasks get an empty imagesmith cache, so
they build (the engine's layer cache keeps that quick), rather than find the local build.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.model.records import push_record_path
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from tests.integration.conftest import Registry, ensure_test_base
from tests.integration.test_catalogue_build import _remove_built, _write_spec
from tests.integration.test_slurm_cluster import _job_ids, run, slurm  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.podman]

TIMEOUT = 900
IMAGESMITH = (sys.executable, "-m", "imagesmith")
BUILD_TABLE = '[build]\ncpus = 1\nmemory = "1Gi"\ntime = "15"\n'


def _manifest_status(registry: Registry, repository: str, digest: str) -> int:
    path = repository.removeprefix(f"{registry.host}/")
    request = urllib.request.Request(
        f"http://{registry.host}/v2/{path}/manifests/{digest}",
        method="HEAD",
        headers={
            "Authorization": "Basic "
            + b64encode(f"{registry.username}:{registry.password}".encode()).decode(),
            "Accept": "application/vnd.oci.image.manifest.v1+json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        status: int = answer.status
        return status


def test_an_array_builds_each_spec_on_its_node_with_the_local_digest(
    slurm: None,  # noqa: F811
    podman_engine: Engine,
    registry: Registry,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    base = ensure_test_base(podman_engine, request)
    tag = uuid.uuid4().hex[:8]
    repositories = {n: f"{registry.host}/lab/slurm-{n}-{tag}" for n in ("a", "b", "c")}
    packages = {"a": "hello", "b": "tree", "c": "imagesmith-no-such-package"}
    paths = {}
    for n in ("a", "b", "c"):
        paths[n] = _write_spec(tmp_path / n, f"slurm-{n}-{tag}", base, packages[n], repositories[n])
        with paths[n].open("a") as f:
            f.write(BUILD_TABLE)
    job_id = ""
    try:
        # The local builds first; then their images go, so that the tasks build again.
        local = {}
        for n in ("a", "b"):
            local[n] = build(load_spec(paths[n]), podman_engine).digest
            _remove_built(podman_engine, paths[n])
        env = {
            **os.environ,
            "XDG_CACHE_HOME": str(tmp_path / "task-cache"),
            "IMAGESMITH_REGISTRY_USER": registry.username,
            "IMAGESMITH_REGISTRY_PASSWORD": registry.password,
        }
        started = time.monotonic()
        done = subprocess.run(
            [*IMAGESMITH, "build", "a", "b", "c/env.toml", "--on", "slurm", "--wait"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        found = re.search(r"submitted job (\d+)", done.stderr)
        job_id = found.group(1) if found else ""
        print(f"build --on slurm --wait, 3 tasks: {time.monotonic() - started:.1f} s")
        print(done.stdout)
        runs = tmp_path / "imagesmith-slurm"
        logs = {p.name: p.read_text() for p in sorted(runs.glob("*.log"))}
        said = f"{done.stdout}\n{done.stderr}\n{logs}"
        assert job_id, said
        # Only c failed, and that was bad input: exit 2, as for a local catalogue.
        assert done.returncode == 2, said
        lines = done.stdout.splitlines()
        assert len(lines) == 3, said
        # One line per spec, in the order the tasks finish.
        by_spec = {line.split()[1].removesuffix(":"): line for line in lines}
        for index, n in enumerate(("a", "b")):
            line = by_spec[f"{n}/env.toml"]
            assert line.startswith(f"ok      {n}/env.toml: {local[n]} (task {index}, "), said
            assert line.endswith(f"pushed {repositories[n]}@{local[n]}"), said
            record = json.loads(push_record_path(paths[n]).read_text())
            assert (record["repository"], record["digest"]) == (repositories[n], local[n])
            assert _manifest_status(registry, repositories[n], local[n]) == 200
        log = f"imagesmith-slurm/{job_id}_2.log"
        failed = by_spec["c/env.toml"]
        assert failed.startswith("failed  c/env.toml: "), said
        assert packages["c"] in failed and failed.endswith(f"(task 2, exit 2); log: {log}")
        assert packages["c"] in (tmp_path / log).read_text()
        assert "3 specs: 2 built, 1 failed" in done.stderr
        # The password reached the tasks through the environment only.
        script = (runs / f"{job_id}.sh").read_text()
        assert registry.password not in script and "PASSWORD" not in script
        assert all(registry.password not in text for text in logs.values())
        assert not any(j.startswith(job_id) for j in _job_ids("imagesmith-build"))
    finally:
        if job_id:
            run("scancel", job_id, check=False)
        for n in ("a", "b"):
            _remove_built(podman_engine, paths[n])
