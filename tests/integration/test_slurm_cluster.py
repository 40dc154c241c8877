"""render_sbatch's script, submitted to a real one-node Slurm cluster, runs the image by digest.

scripts/start-slurm.sh installs Debian's slurm-wlm and munge when missing and starts
munged, slurmctld and slurmd on loopback (idempotent; the daemons stay up for the session
and later runs). The test submits with `sbatch --wait` under a timeout, checks that the job
ran inside the image (a marker file only that image has, uid 1000, the spec's environment
byte for byte) with the resources the #SBATCH lines asked for, and leaves no job behind.
It skips only when Slurm cannot be installed (start-slurm.sh exits 3).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w

from imagesmith.manifests import render_sbatch
from imagesmith.slurm import parse_sbatch
from imagesmith.spec import load_spec
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.podman]

START = REPO / "scripts" / "start-slurm.sh"
BASES = (
    "localhost/imagesmith/debian:bookworm",
    "localhost/imagesmith-test/canon-base:bookworm",
    "localhost/imagesmith-test/manifest-base:bookworm",
)
GREETING = 'it\'s "quoted" $HOME, a,b=c; `no` $(expansion) and ünïcode  '
JOB_TIMEOUT = 180


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def slurm() -> None:
    """A one-node cluster that answers; skip only when Slurm cannot be installed."""
    if os.geteuid() != 0:
        pytest.skip("scripts/start-slurm.sh runs the daemons as root; run the tests as root")
    started = time.monotonic()
    done = run("bash", str(START), timeout=900, check=False)
    if done.returncode == 3:
        pytest.skip(f"Slurm cannot be installed here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"start-slurm.sh: {time.monotonic() - started:.1f}s: {done.stdout.strip()}")


def base_image(tmp: Path) -> str:
    for ref in BASES:
        if run("podman", "image", "exists", ref, check=False).returncode == 0:
            return ref
    if shutil.which("mmdebstrap") is None:
        pytest.skip("no local Debian base image and no mmdebstrap: apt-get install mmdebstrap")
    rootfs = tmp / "rootfs.tar"
    subprocess.run(
        ["mmdebstrap", "--variant=minbase", "--quiet", "bookworm", str(rootfs)],
        env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        check=True,
        timeout=600,
    )
    path = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    run("podman", "import", "--change", f"ENV {path}", str(rootfs), BASES[-1], timeout=300)
    return BASES[-1]


@pytest.fixture(scope="module")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(image by digest, marker text only this image holds); removed afterwards."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: apt-get install podman")
    tmp = tmp_path_factory.mktemp("slurm-image")
    marker = f"imagesmith-marker-{uuid.uuid4().hex}"
    (tmp / "Containerfile").write_text(
        f"FROM {base_image(tmp)}\n"
        "RUN useradd --no-log-init --uid 1000 --create-home lab"
        " && mkdir /work && chown 1000:1000 /work"
        f" && echo {marker} > /etc/imagesmith-marker\n"
        "USER 1000:1000\nWORKDIR /work\n"
    )
    tag = f"localhost/imagesmith-it/slurm-job:{uuid.uuid4().hex[:12]}"
    run("podman", "build", "--quiet", "--tag", tag, str(tmp), timeout=300)
    try:
        digest = run("podman", "image", "inspect", "--format", "{{.Digest}}", tag).stdout.strip()
        assert digest.startswith("sha256:"), digest
        yield f"{tag.rsplit(':', 1)[0]}@{digest}", marker
    finally:
        run("podman", "rmi", "--force", tag, check=False)


def _job_ids(name: str) -> list[str]:
    done = run("squeue", "--noheader", "--name", name, "--format", "%i", check=False)
    return done.stdout.split()


def test_sbatch_script_runs_the_image_on_slurm(
    slurm: None, test_image: tuple[str, str], tmp_path: Path
) -> None:
    image, marker = test_image
    name = f"imagesmith-slurm-{uuid.uuid4().hex[:8]}"
    spec_path = tmp_path / "env.toml"
    spec_path.write_text(
        tomli_w.dumps(
            {
                "name": name,
                "version": "0.0.1",
                "base": {"image": "debian:bookworm"},
                "env": {"GREETING": GREETING},
                "image": {"workdir": "/work", "user": "lab"},
                "resources": {"cpu": "500m", "memory": "200Mi"},
                "job": {
                    "command": [
                        "sh",
                        "-c",
                        "id -u; cat /etc/imagesmith-marker; pwd; printf '%s|\\n' \"$GREETING\"",
                    ],
                    "time": "5",
                },
            }
        )
    )
    spec = load_spec(spec_path)
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(spec, image=image, runtime="podman"))
    # What Slurm will be asked for, read back the way imagesmith reads any script.
    asked = parse_sbatch(script.read_text())
    assert (asked.cpu, asked.memory, asked.time_seconds, asked.warnings) == ("1", "200Mi", 300, [])
    output = tmp_path / "slurm.out"
    started = time.monotonic()
    job_id = ""
    try:
        done = run(
            "sbatch",
            "--wait",
            "--parsable",
            f"--output={output}",
            str(script),
            timeout=JOB_TIMEOUT,
            check=False,
        )
        job_id = done.stdout.strip().split(";")[0]
        elapsed = time.monotonic() - started
        log = output.read_text(encoding="utf-8") if output.exists() else "(no output file)"
        assert done.returncode == 0, f"sbatch: {done.stdout}{done.stderr}\njob output:\n{log}"
        assert re.fullmatch(r"\d+", job_id), done.stdout
        shown = run("scontrol", "show", "job", job_id).stdout
    finally:
        for leftover in {job_id, *_job_ids(name)} - {""}:
            run("scancel", leftover, check=False)
    print(f"sbatch --wait: {elapsed:.1f}s")
    assert output.read_bytes() == f"1000\n{marker}\n/work\n{GREETING}|\n".encode()
    assert "JobState=COMPLETED" in shown and "ExitCode=0:0" in shown, shown
    assert f"JobName={name}" in shown
    assert "NumCPUs=1" in shown and "TimeLimit=00:05:00" in shown, shown
    assert re.search(r"\bmem=200M\b", shown), shown
    assert _job_ids(name) == []  # nothing left in the queue
