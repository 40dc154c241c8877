"""The command line, through Typer's runner: exit codes, one line per problem, no tracebacks."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from imagesmith import __version__
from imagesmith.cli import app
from imagesmith.lock import write_lock
from tests.fixtures.make_lock import make_lock

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"imagesmith {__version__}"


def test_validate_ok(example_dir: Path) -> None:
    result = runner.invoke(app, ["validate", str(example_dir / "env.toml")])
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "valid" in result.output


def test_validate_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    spec = tmp_path / "env.toml"
    spec.write_text(
        'name = "x"\n[base]\nimage = "debian"\n[resources]\nmemory = "32GB"\ngpu = 1.5\n'
    )
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "env.toml: $.resources.gpu: 1.5 is not a whole, non-negative number of GPUs (0, 1, 2, ...)",
        'env.toml: $.resources.memory: "32GB" is not a Kubernetes quantity (e.g. 32Gi)',
    ]
    assert "Traceback" not in result.output


def test_render_without_lock_says_which_command(example_dir: Path) -> None:
    result = runner.invoke(app, ["render", str(example_dir / "env.toml")])
    assert result.exit_code == 2
    assert "imagesmith lock env.toml" in result.stderr


def test_render_stale_lock_says_which_command(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    spec.write_text(spec.read_text().replace('"git", ', ""))
    result = runner.invoke(app, ["render", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: env.lock is stale: env.toml changed since it was locked; run `imagesmith lock env.toml`"
    )


def test_render_to_file_and_stdout_agree(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    printed = runner.invoke(app, ["render", str(spec)])
    assert printed.exit_code == 0, printed.output
    out = example_dir / "Containerfile"
    written = runner.invoke(app, ["render", str(spec), "-o", str(out)])
    assert written.exit_code == 0, written.output
    assert out.read_text() == printed.stdout


def test_every_command_has_help() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in app.registered_commands:
        name = command.name or (command.callback.__name__ if command.callback else "")
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert len(sub.output) > 80


def test_init_writes_a_valid_spec_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path), "--recipe", "lab-analysis"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["validate", str(tmp_path / "env.toml")]).exit_code == 0
    again = runner.invoke(app, ["init", str(tmp_path), "--recipe", "lab-analysis"])
    assert again.exit_code == 2 and "--force" in again.stderr


def test_init_unknown_recipe_lists_the_known_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path), "--recipe", "nope"])
    assert result.exit_code == 2
    assert "lab-analysis" in result.stderr


def test_usage_error_exits_2() -> None:
    assert runner.invoke(app, ["validate", "--bogus"]).exit_code == 2


def test_manifest_refuses_without_a_digest(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    result = runner.invoke(app, ["manifest", str(spec)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no image digest for this lock yet: run `imagesmith build env.toml` "
        "and `imagesmith push env.toml` first"
    )


def test_manifest_uses_the_pushed_digest(example_dir: Path) -> None:
    from imagesmith.records import PushRecord, push_record_path, write_record

    spec = example_dir / "env.toml"
    lock = make_lock(spec)
    write_lock(lock, example_dir / "env.lock")
    digest = "sha256:" + "ab" * 32
    write_record(
        push_record_path(spec),
        PushRecord(
            repository="registry.example.edu/lab/analysis",
            digest=digest,
            tags=("1.0.0",),
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
        ),
    )
    result = runner.invoke(app, ["manifest", str(spec), "--kind", "pod"])
    assert result.exit_code == 0, result.output
    assert f"image: registry.example.edu/lab/analysis@{digest}" in result.stdout
    assert "kind: Pod" in result.stdout
    assert "warning" not in result.stderr
    sb = runner.invoke(app, ["sbatch", str(spec)])
    assert sb.exit_code == 0, sb.output
    assert f"registry.example.edu/lab/analysis@{digest}" in sb.stdout and "#SBATCH" in sb.stdout


def test_manifest_from_sbatch_warns_about_what_it_cannot_map(example_dir: Path) -> None:
    from imagesmith.records import PushRecord, push_record_path, write_record

    spec = example_dir / "env.toml"
    lock = make_lock(spec)
    write_lock(lock, example_dir / "env.lock")
    write_record(
        push_record_path(spec),
        PushRecord(
            repository="r.example.edu/x",
            digest="sha256:" + "cd" * 32,
            tags=(),
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
        ),
    )
    script = example_dir / "job.sh"
    script.write_text(
        "#!/bin/bash\n#SBATCH -c 8\n#SBATCH --mem=16G\n#SBATCH --array=1-4\n"
        "#SBATCH --dependency=afterok:1\npython3 train.py\n"
    )
    result = runner.invoke(app, ["manifest", str(spec), "--from-sbatch", str(script)])
    assert result.exit_code == 0, result.output
    assert "--dependency" in result.stderr and "--array" not in result.stderr
    assert "completionMode: Indexed" in result.stdout and "completions: 4" in result.stdout
    assert "cpu: '8'" in result.stdout and "memory: 16Gi" in result.stdout


def _pushed(example_dir: Path) -> Path:
    from imagesmith.records import PushRecord, push_record_path, write_record

    spec = example_dir / "env.toml"
    lock = make_lock(spec)
    write_lock(lock, example_dir / "env.lock")
    record = PushRecord(
        repository="r.example.edu/x",
        digest="sha256:" + "cd" * 32,
        tags=(),
        lock_hash=lock.lock_hash,
        uid=1000,
        gid=1000,
    )
    write_record(push_record_path(spec), record)
    return spec


def test_manifest_queue_and_gpu_maps(example_dir: Path) -> None:
    spec = _pushed(example_dir)
    script = example_dir / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH -p gpu\n#SBATCH --gres=gpu:a100:2\npython3 x.py\n")
    base = ["manifest", str(spec), "--from-sbatch", str(script)]
    plain = runner.invoke(app, base)
    assert plain.exit_code == 0, plain.output
    assert "job.sh:2: -p gpu: no queue for this partition" in plain.stderr
    assert "GPU model 'a100' has no nvidia.com/gpu.product value" in plain.stderr
    assert "nodeSelector" not in plain.stdout and "suspend" not in plain.stdout
    mapped = runner.invoke(
        app,
        [
            *base,
            "--queue-map",
            "gpu=lab-gpu",
            "--queue-map",
            "cpu=lab-cpu",
            "--gpu-map",
            "a100=NVIDIA-A100-SXM4-80GB",
            "--gpu-label",
            "example.com/gpu",
        ],
    )
    assert mapped.exit_code == 0, mapped.output
    assert "warning" not in mapped.stderr
    assert "kueue.x-k8s.io/queue-name: lab-gpu" in mapped.stdout
    assert "suspend: true" in mapped.stdout
    assert "example.com/gpu: NVIDIA-A100-SXM4-80GB" in mapped.stdout
    unknown = runner.invoke(app, [*base, "--queue-map", "cpu=lab-cpu"])
    assert unknown.exit_code == 2
    assert unknown.stderr == (
        "error: job.sh:2: -p gpu: partition 'gpu' has no queue in the queue map (it maps cpu); "
        "add --queue-map gpu=QUEUE or a [job.queue_map] entry\n"
    )
    bad = runner.invoke(app, [*base, "--queue-map", "gpu", "--gpu-map", "a100=no spaces"])
    assert bad.exit_code == 2
    assert len(bad.stderr.splitlines()) == 2 and "Traceback" not in bad.output
    label = runner.invoke(app, [*base, "--gpu-label", "Bad_Prefix/x"])
    assert label.exit_code == 2 and "--gpu-label 'Bad_Prefix/x'" in label.stderr
    alone = runner.invoke(app, ["manifest", str(spec), "--queue-map", "gpu=q"])
    assert alone.exit_code == 2 and "use it with --from-sbatch" in alone.stderr


def test_sbatch_runtimes(example_dir: Path) -> None:
    spec = _pushed(example_dir)
    for runtime, fragment in (
        ("singularity", "exec singularity exec --cleanenv --containall"),
        ("apptainer", "exec apptainer exec --cleanenv --containall"),
        ("pyxis", "exec srun '--container-image=r.example.edu#x@sha256:"),
    ):
        result = runner.invoke(app, ["sbatch", str(spec), "--runtime", runtime])
        assert result.exit_code == 0, result.output
        assert fragment in result.stdout
    sifs = runner.invoke(app, ["sbatch", str(spec), "--runtime", "apptainer", "--sif-dir", "/s"])
    assert sifs.exit_code == 0, sifs.output
    assert "sif_dir=/s\n" in sifs.stdout
    wrong = runner.invoke(app, ["sbatch", str(spec), "--runtime", "pyxis", "--sif-dir", "/s"])
    assert wrong.exit_code == 2
    assert wrong.stderr == "error: --sif-dir is for apptainer or singularity, not pyxis\n"
    unknown = runner.invoke(app, ["sbatch", str(spec), "--runtime", "docker"])
    assert unknown.exit_code == 2
    assert "runtime 'docker' is not one of podman, apptainer, singularity, pyxis" in unknown.stderr


def test_spec_array_queue_account_mounts_through_both_commands(example_dir: Path) -> None:
    spec_path = example_dir / "env.toml"
    text = spec_path.read_text().replace(
        '[job]\ncommand = ["python3", "train.py"]\n',
        '[job]\ncommand = ["python3", "train.py"]\narray = "1-7:2%2"\nqueue = "lab-queue"\n'
        'account = "lab-acct"\nqos = "long"\n'
        '[[job.mounts]]\nsource = "./out"\ntarget = "/out"\nclaim = "lab-out"\n',
    )
    assert text != spec_path.read_text()
    spec_path.write_text(text)
    _pushed(example_dir)
    script = runner.invoke(app, ["sbatch", str(spec_path), "--runtime", "apptainer"])
    assert script.exit_code == 0, script.output
    for directive in ("--array=1-7:2%2", "--partition=lab-queue", "--account=lab-acct"):
        assert f"#SBATCH {directive}\n" in script.stdout
    assert "#SBATCH --qos=long\n" in script.stdout
    assert '--bind "$SLURM_SUBMIT_DIR/out:/out"' in script.stdout
    manifest = runner.invoke(app, ["manifest", str(spec_path)])
    assert manifest.exit_code == 0, manifest.output
    assert "completionMode: Indexed" in manifest.stdout and "suspend: true" in manifest.stdout
    assert "kueue.x-k8s.io/queue-name: lab-queue" in manifest.stdout
    assert "claimName: lab-out" in manifest.stdout
    assert "warning" not in manifest.stderr
    as_pod = runner.invoke(app, ["manifest", str(spec_path), "--kind", "pod"])
    assert as_pod.exit_code == 2
    assert as_pod.stderr == (
        "error: array 1-7:2%2 needs kind job (an Indexed Job, one pod per index), not pod\n"
    )
