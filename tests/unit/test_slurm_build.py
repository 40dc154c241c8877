"""`build --on slurm`: the job array's script (bash -n, shellcheck, quoting, no credential
in it), what is refused before anything is submitted, and how `--wait` reads the tasks'
results. sbatch and squeue are small stubs here; the real cluster builds in
tests/integration/test_slurm_build.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.cluster.slurm_build import TaskResources, render_array
from imagesmith.errors import InputError
from imagesmith.model.spec_loading import load_spec
from tests.support import check_schema

runner = CliRunner()
DIGEST = "sha256:" + "ab" * 32
SECRET = "pa$$word-that-must-not-leak"


def _spec(folder: Path, name: str, extra: str = "", repository: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f'name = "{name}"\n[base]\nimage = "debian:bookworm"\n{extra}'
    if repository:
        text += f'[registry]\nrepository = "127.0.0.1:5000/lab/{name}"\n'
    (folder / "env.toml").write_text(text)
    return folder / "env.toml"


def _stub(folder: Path, name: str, body: str) -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def _cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, job: str = "4242") -> Path:
    """sbatch that records its arguments and answers `job`; squeue that lists nothing."""
    stubs = tmp_path / "bin"
    calls = tmp_path / "sbatch-calls"
    _stub(stubs, "sbatch", f'printf "%s\\n" "$@" >>"{calls}"\necho "{job};imagesmith"')
    _stub(stubs, "squeue", "exit 0")
    monkeypatch.setenv("PATH", f"{stubs}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    return calls


def test_the_script_passes_bash_n_and_shellcheck_and_quotes_every_path(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed: scripts/install-host.sh installs it")
    odd = tmp_path / "it's $HOME; `x` $(y) a b" / "env.toml"
    specs = [tmp_path / "a" / "env.toml", odd]
    text = render_array(
        specs,
        resources=TaskResources(cpus=3, memory_mb=1024, time_seconds=5400),
        run_folder=tmp_path / "runs here",
        partition="build-nodes",
        imagesmith=[str(tmp_path / "stub imagesmith")],
        build_options=["--tag=lab/x:$(evil)", "--no-cache"],
    )
    assert text == render_array(  # pure: same arguments, same bytes
        specs,
        resources=TaskResources(cpus=3, memory_mb=1024, time_seconds=5400),
        run_folder=tmp_path / "runs here",
        partition="build-nodes",
        imagesmith=[str(tmp_path / "stub imagesmith")],
        build_options=["--tag=lab/x:$(evil)", "--no-cache"],
    )
    for line in (
        "#SBATCH --array=0-1",
        "#SBATCH --cpus-per-task=3",
        "#SBATCH --mem=1024M",
        "#SBATCH --time=01:30:00",
        "#SBATCH --partition=build-nodes",
        "#SBATCH --export=ALL",
    ):
        assert f"\n{line}\n" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout

    # Run task 1 as Slurm would, with a stub imagesmith that prints its arguments as JSON:
    # the odd path reaches it byte for byte, and its output is the task's result file.
    stub = tmp_path / "stub imagesmith"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    (tmp_path / "runs here").mkdir()
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1"}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr
    argv = json.loads((tmp_path / "runs here" / "77_1.json").read_text())
    assert argv == [
        "build",
        str(odd),
        "--engine",
        "podman",
        "--push",
        "--json",
        "--tag=lab/x:$(evil)",
        "--no-cache",
    ]
    assert not (tmp_path / "runs here" / "77_1.json.part").exists()


def test_a_failing_task_keeps_its_result_and_exit_code(tmp_path: Path) -> None:
    stub = tmp_path / "imagesmith"
    stub.write_text("#!/bin/bash\necho '{\"ok\": false}'\nexit 2\n")
    stub.chmod(0o755)
    script = tmp_path / "job.sh"
    script.write_text(
        render_array(
            [tmp_path / "env.toml"],
            resources=TaskResources(cpus=1, memory_mb=100, time_seconds=60),
            run_folder=tmp_path,
            imagesmith=[str(stub)],
        )
    )
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "0"}
    ran = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert ran.returncode == 2
    assert json.loads((tmp_path / "5_0.json").read_text()) == {"ok": False}


def test_bad_partition_names_are_refused_before_they_reach_the_script(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a Slurm partition name"):
        render_array(
            [tmp_path / "env.toml"],
            resources=TaskResources(cpus=1, memory_mb=100, time_seconds=60),
            run_folder=tmp_path,
            partition="debug\n#SBATCH --uid=0",
            imagesmith=["imagesmith"],
        )


def test_each_task_asks_for_the_most_any_spec_asks_and_defaults_otherwise(
    tmp_path: Path,
) -> None:
    plain = load_spec(_spec(tmp_path / "a", "a"))
    assert TaskResources.for_specs([plain]) == TaskResources(
        cpus=2, memory_mb=4096, time_seconds=3600
    )
    big = load_spec(_spec(tmp_path / "b", "b", '[build]\ncpus = 8\nmemory = "1Gi"\ntime = "5"\n'))
    assert TaskResources.for_specs([plain, big]) == TaskResources(
        cpus=8, memory_mb=4096, time_seconds=3600
    )


def test_build_is_a_run_time_table_it_does_not_change_the_spec_hash(tmp_path: Path) -> None:
    plain = load_spec(_spec(tmp_path / "a", "a"))
    tuned = load_spec(_spec(tmp_path / "b", "a", '[build]\ncpus = 4\nmemory = "2Gi"\n'))
    assert plain.spec_hash == tuned.spec_hash
    assert (tuned.build.cpus, tuned.build.memory) == (4, "2Gi")
    bad = _spec(tmp_path / "c", "c", '[build]\ncpus = 0\ntime = "0"\nmemory = "1k"\n')
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "$.build.cpus" in result.stderr and "$.build.time" in result.stderr
    assert "$.build.memory" in result.stderr, result.stderr


def test_no_sbatch_on_path_is_one_line_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(tmp_path / "a", "a")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["build", str(spec), "--on", "slurm"])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: --on slurm: sbatch is not on PATH; run this on a Slurm submit host "
        "(or build here without --on)"
    ]
    assert not (tmp_path / "imagesmith-slurm").exists()


def test_specs_without_a_registry_are_refused_one_line_each_and_nothing_is_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _cluster(tmp_path, monkeypatch)
    good = _spec(tmp_path / "good", "good")
    lacking = [_spec(tmp_path / n, n, repository=False) for n in ("b", "c")]
    result = runner.invoke(app, ["build", str(good), *map(str, lacking), "--on", "slurm"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 2, result.stderr
    for name, line in zip(("b", "c"), lines, strict=True):
        assert line == (
            f"{name}/env.toml: --on slurm pushes each image by digest; set [registry] repository"
        )
    assert not calls.exists() and not (tmp_path / "imagesmith-slurm").exists()


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--on", "nomad"], "--on nomad: not a place imagesmith builds"),
        (["--wait"], "--partition and --wait go with --on slurm"),
        (["--on", "slurm", "--engine", "docker"], "--engine docker: --on slurm builds with"),
        (["--on", "slurm", "--jobs", "2"], "--jobs and --fail-fast"),
        (["--on", "slurm", "--json"], "--json with --on slurm needs --wait"),
    ],
)
def test_options_that_do_not_go_with_slurm_are_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], said: str
) -> None:
    calls = _cluster(tmp_path, monkeypatch)
    spec = _spec(tmp_path / "a", "a")
    result = runner.invoke(app, ["build", str(spec), *arguments])
    assert result.exit_code == 2, result.output
    assert said in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not calls.exists()


def test_submitting_prints_the_job_and_keeps_the_script_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _cluster(tmp_path, monkeypatch)
    monkeypatch.setenv("IMAGESMITH_ENGINE", "docker")  # for local builds: the tasks use podman
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", "robot-user")
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", SECRET)
    specs = [_spec(tmp_path / n, n, '[build]\ncpus = 1\nmemory = "512Mi"\n') for n in ("a", "b")]
    result = runner.invoke(
        app, ["build", *map(str, specs), "--on", "slurm", "--partition", "debug"]
    )
    assert result.exit_code == 0, result.output
    assert "submitted Slurm job 4242: 2 specs, one array task each" in result.stdout
    assert "squeue --jobs 4242" in result.stdout
    script = tmp_path / "imagesmith-slurm" / "4242.sh"
    text = script.read_text()
    assert SECRET not in text and "robot-user" not in text and "PASSWORD" not in text
    assert "#SBATCH --array=0-1\n" in text and "#SBATCH --partition=debug\n" in text
    assert "#SBATCH --mem=512M\n" in text
    assert f"{sys.executable} -m imagesmith build" in text
    submitted = calls.read_text().splitlines()
    assert submitted[:2] == ["--parsable", f"--output={tmp_path}/imagesmith-slurm/%A_%a.log"]
    assert [p.name for p in (tmp_path / "imagesmith-slurm").iterdir()] == ["4242.sh"]


def test_sbatch_refusing_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cluster(tmp_path, monkeypatch)
    _stub(
        tmp_path / "bin", "sbatch", 'echo "sbatch: error: invalid partition specified" >&2\nexit 1'
    )
    spec = _spec(tmp_path / "a", "a")
    result = runner.invoke(app, ["build", str(spec), "--on", "slurm", "-p", "nope"])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == (
        "error: sbatch refused the build array (exit 1): sbatch: error: invalid partition specified"
    )
    assert list((tmp_path / "imagesmith-slurm").iterdir()) == []


def test_wait_prints_each_digest_and_names_the_failed_spec_and_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cluster(tmp_path, monkeypatch)
    specs = [_spec(tmp_path / n, n) for n in ("a", "b", "c")]
    runs = tmp_path / "imagesmith-slurm"
    runs.mkdir()
    pushed = f"127.0.0.1:5000/lab/a@{DIGEST}"
    ok = {
        "command": "build",
        "ok": True,
        "exit_code": 0,
        "problems": [],
        "image_id": DIGEST,
        "digest": DIGEST,
        "tags": ["a:latest"],
        "engine": "podman",
        "seconds": 3.25,
        "size": 10,
        "lock_hash": DIGEST,
        "pushed": pushed,
    }
    (runs / "4242_0.json").write_text(json.dumps(ok))
    failed = {
        "command": "build",
        "ok": False,
        "exit_code": 2,
        "problems": ["apt: not available in the base image's Debian suite: no-such"],
    }
    (runs / "4242_1.json").write_text(json.dumps(failed))
    # Task 2 wrote nothing (cancelled, say) and the job has left the queue.
    result = runner.invoke(app, ["build", *map(str, specs), "--on", "slurm", "--wait"])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    a, b, c = (f"{name}/env.toml" for name in ("a", "b", "c"))
    assert lines[0] == f"ok      {a}: {DIGEST} (task 0, built with podman in 3.2 s), " + (
        f"pushed {pushed}"
    )
    assert lines[1] == (
        f"failed  {b}: apt: not available in the base image's Debian suite: no-such "
        "(task 1, exit 2); log: imagesmith-slurm/4242_1.log"
    )
    assert lines[2].startswith(f"failed  {c}: task 2 ended without a result")
    assert lines[2].endswith("(task 2, exit 1); log: imagesmith-slurm/4242_2.log")
    assert "3 specs: 1 built, 2 failed (job 4242)" in result.stderr

    as_json = runner.invoke(
        app, ["build", *map(str, specs[:2]), "--on", "slurm", "--wait", "--json"]
    )
    assert as_json.exit_code == 2, as_json.output  # the one failure was bad input
    report = json.loads(as_json.stdout)
    check_schema(report)
    assert [s["ok"] for s in report["specs"]] == [True, False]
    assert report["specs"][0]["digest"] == DIGEST
    assert report["problems"] == [f"{b}: failed"]


def test_wait_without_squeue_is_one_line_and_the_job_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cluster(tmp_path, monkeypatch)
    (tmp_path / "bin" / "squeue").unlink()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    spec = _spec(tmp_path / "a", "a")
    result = runner.invoke(app, ["build", str(spec), "--on", "slurm", "--wait"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == (
        "error: --wait: squeue is not on PATH, so the tasks cannot be followed; job 4242 goes "
        "on (its results land in the run folder)"
    )
