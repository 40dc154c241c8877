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
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.model.lock import write_lock
from imagesmith.model.records import PushRecord, push_record_path, write_record
from imagesmith.model.spec_loading import load_spec
from imagesmith.outputs.sbatch import render_sbatch
from imagesmith.outputs.sbatch_parse import parse_sbatch
from tests.conftest import REPO
from tests.fixtures.make_lock import make_lock

pytestmark = [pytest.mark.integration, pytest.mark.podman]

START = REPO / "scripts" / "start-slurm.sh"
GREETING = 'it\'s "quoted" $HOME, a,b=c; `no` $(expansion) and ünïcode  '
JOB_TIMEOUT = 180


def run(
    *args: str, timeout: float = 120, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=timeout, check=check, cwd=cwd
    )


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


def _job_ids(name: str) -> list[str]:
    done = run("squeue", "--noheader", "--name", name, "--format", "%i", check=False)
    return done.stdout.split()


def test_sbatch_script_runs_the_image_on_slurm(
    slurm: None, marked_podman_image: tuple[str, str], tmp_path: Path
) -> None:
    image, marker = marked_podman_image
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


def test_array_runs_each_index_with_its_slurm_id(
    slurm: None, marked_podman_image: tuple[str, str], tmp_path: Path
) -> None:
    """[job] array = "1-7:2%2": four tasks, each sees its own SLURM_ARRAY_TASK_ID (1, 3, 5,
    7, not 0-3), and the count/min/max; Slurm runs at most two at a time. Each writes its id
    into the submit folder's shared/, bound by [job] mounts ("./shared"), and the file
    appears on the host."""
    image, marker = marked_podman_image
    name = f"imagesmith-array-{uuid.uuid4().hex[:8]}"
    spec_path = tmp_path / "env.toml"
    report = (
        'echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN '
        '$SLURM_ARRAY_TASK_MAX $(cat /etc/imagesmith-marker)"; '
        'echo "$SLURM_ARRAY_TASK_ID" > "/shared/id-$SLURM_ARRAY_TASK_ID"'
    )
    spec_path.write_text(
        tomli_w.dumps(
            {
                "name": name,
                "version": "0.0.1",
                "base": {"image": "debian:bookworm"},
                "image": {"workdir": "/work", "user": "lab"},
                "resources": {"cpu": "500m", "memory": "100Mi"},
                "job": {
                    "command": ["sh", "-c", report],
                    "time": "5",
                    "array": "1-7:2%2",
                    "mounts": [{"source": "./shared", "target": "/shared"}],
                },
            }
        )
    )
    # Through the command itself: a lock and a push record name the image by digest.
    lock = make_lock(spec_path)
    write_lock(lock, spec_path.with_suffix(".lock"))
    repository, _, digest = image.partition("@")
    record = PushRecord(
        repository=repository,
        digest=digest,
        tags=(),
        lock_hash=lock.lock_hash,
        uid=1000,
        gid=1000,
    )
    write_record(push_record_path(spec_path), record)
    script = tmp_path / "job.sh"
    made = CliRunner().invoke(app, ["sbatch", str(spec_path), "-o", str(script)])
    assert made.exit_code == 0, made.output
    assert "#SBATCH --array=1-7:2%2\n" in script.read_text()
    logs_dir = tmp_path / "logs"  # each task's output file lands here, named by its index
    logs_dir.mkdir()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # rootful podman: the container writes as the image's uid 1000
    job_id = ""
    started = time.monotonic()
    try:
        done = run(
            "sbatch",
            "--wait",
            "--parsable",
            f"--output={logs_dir}/task-%a.out",
            str(script),
            timeout=JOB_TIMEOUT * 2,
            check=False,
            cwd=tmp_path,  # the submit folder
        )
        job_id = done.stdout.strip().split(";")[0]
        logs = {p.name: p.read_text() for p in sorted(logs_dir.iterdir())}
        assert done.returncode == 0, f"sbatch: {done.stdout}{done.stderr}\n{logs}"
        shown = run("scontrol", "show", "job", job_id, check=False).stdout
    finally:
        for leftover in {job_id, *_job_ids(name)} - {""}:
            run("scancel", leftover, check=False)
    print(f"sbatch --wait (4 array tasks): {time.monotonic() - started:.1f}s")
    assert logs == {f"task-{i}.out": f"{i} 4 1 7 {marker}\n" for i in (1, 3, 5, 7)}
    written = {p.name: p.read_text() for p in sorted(shared.iterdir())}
    assert written == {f"id-{i}": f"{i}\n" for i in (1, 3, 5, 7)}
    if "ArrayTaskThrottle" in shown:  # the records may already be gone (MinJobAge)
        assert "ArrayTaskThrottle=2" in shown, shown
    assert _job_ids(name) == []
