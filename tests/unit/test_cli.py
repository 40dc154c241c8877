"""The command line, through Typer's runner: exit codes, one line per problem, no tracebacks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith import __version__
from imagesmith.cli import app
from imagesmith.model.lock import write_lock
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


def test_render_without_lock_says_which_command(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example_dir.parent)
    result = runner.invoke(app, ["render", "lab/env.toml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: lab/env.lock: no lock yet; run `imagesmith lock lab/env.toml`"
    )


def test_render_stale_lock_says_which_command(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    spec.write_text(spec.read_text().replace('"git", ', ""))
    monkeypatch.chdir(example_dir.parent)
    result = runner.invoke(app, ["render", "lab/env.toml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: env.lock is stale: env.toml changed since it was locked; "
        "run `imagesmith lock lab/env.toml`"
    )


def test_hints_name_the_spec_as_given_from_anywhere(example_dir: Path) -> None:
    # From a folder the spec is not below, the hint gives the whole path: it still works.
    result = runner.invoke(app, ["render", str(example_dir / "env.toml")])
    assert result.exit_code == 2
    assert f"run `imagesmith lock {example_dir / 'env.toml'}`" in result.stderr


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


def test_init_copies_the_whole_recipe_and_overwrites_nothing_without_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagesmith.package_data import data_path

    recipe = data_path("recipes", "jupyter")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init", "lab", "--recipe", "jupyter"])
    assert result.exit_code == 0, result.output
    for name in ("env.toml", "README.md"):
        assert (tmp_path / "lab" / name).read_bytes() == (recipe / name).read_bytes()
    assert result.stdout.splitlines() == [
        "wrote lab/env.toml, lab/README.md from recipe jupyter",
        "  next: read lab/README.md, then imagesmith build lab/env.toml",
    ]

    # One file of the recipe already there: nothing is written, and it is named.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "README.md").write_text("my notes\n")
    refused = runner.invoke(app, ["init", "other", "--recipe", "jupyter"])
    assert refused.exit_code == 2
    assert refused.stderr.strip() == (
        "error: other/README.md already exists; pass --force to overwrite"
    )
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["README.md"]
    assert (tmp_path / "other" / "README.md").read_text() == "my notes\n"

    forced = runner.invoke(app, ["init", "other", "--recipe", "jupyter", "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "other" / "README.md").read_bytes() == (recipe / "README.md").read_bytes()
    assert not list((tmp_path / "other").glob(".*.part"))


def test_init_unknown_recipe_lists_the_known_ones(tmp_path: Path) -> None:
    result = runner.invoke(app, ["init", str(tmp_path), "--recipe", "nope"])
    assert result.exit_code == 2
    assert "lab-analysis" in result.stderr


def test_usage_error_exits_2() -> None:
    assert runner.invoke(app, ["validate", "--bogus"]).exit_code == 2


def test_manifest_refuses_without_a_digest(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    monkeypatch.chdir(example_dir.parent)
    result = runner.invoke(app, ["manifest", "lab/env.toml"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: no image digest for this lock yet: run `imagesmith build lab/env.toml` "
        "and `imagesmith push lab/env.toml` first"
    )


def test_manifest_uses_the_pushed_digest(example_dir: Path) -> None:
    from imagesmith.model.records import PushRecord, push_record_path, write_record

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
    from imagesmith.model.records import PushRecord, push_record_path, write_record

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


def _pushed(spec: Path) -> None:
    """A lock and a push record beside `spec`, so manifest and sbatch have an image."""
    from imagesmith.model.records import PushRecord, push_record_path, write_record

    lock = make_lock(spec)
    write_lock(lock, spec.with_suffix(".lock"))
    write_record(
        push_record_path(spec),
        PushRecord(
            repository="registry.example.edu/lab/analysis",
            digest="sha256:" + "2" * 64,
            tags=("1.0.0",),
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
        ),
    )


UNWRITABLE = {
    # where -o points: (exit code, the end of the one line that says why)
    "/proc/imagesmith-out": (1, "/proc does not take new files (No such file or directory)"),
    "/sys/imagesmith-out": (1, "Permission denied"),
    "{tmp}/missing/out": (2, "its folder {tmp}/missing does not exist"),
    "{tmp}/a-file/out": (2, "{tmp}/a-file is not a folder"),
    "{tmp}": (2, "it is a folder; name a file"),
}


@pytest.mark.parametrize("command", ["render", "manifest", "sbatch"])
@pytest.mark.parametrize("where", sorted(UNWRITABLE))
def test_output_that_cannot_be_written_is_one_line(
    example_dir: Path, tmp_path: Path, command: str, where: str
) -> None:
    spec = example_dir / "env.toml"
    _pushed(spec)
    (tmp_path / "a-file").write_text("x")
    target = where.format(tmp=tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = runner.invoke(app, [command, str(spec), "-o", target])
    code, why = UNWRITABLE[where]
    assert result.exit_code == code, result.output
    assert result.stderr.splitlines() == [
        f"error: cannot write {target}: {why.format(tmp=tmp_path)}"
    ]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing partial left


def test_output_into_a_read_only_folder_leaves_nothing(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder that refuses the write after the temporary file exists (a full or read-only
    file system at rename time): the temporary file goes, the old file stays."""
    spec = example_dir / "env.toml"
    _pushed(spec)
    out = tmp_path / "out" / "Containerfile"
    out.parent.mkdir()
    out.write_text("old\n")

    def refuse(*_: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("os.replace", refuse)
    result = runner.invoke(app, ["render", str(spec), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"error: cannot write {out}: Read-only file system"]
    assert [p.name for p in out.parent.iterdir()] == ["Containerfile"]
    assert out.read_text() == "old\n"


@pytest.mark.parametrize(
    ("folder", "code", "why"),
    [
        (
            "/proc/imagesmith-init",
            1,
            "cannot create /proc/imagesmith-init: /proc does not take new folders",
        ),
        (
            "/proc/imagesmith-init/deeper",
            1,
            "cannot create /proc/imagesmith-init: /proc does not take",
        ),
        ("/sys/imagesmith-init", 1, "cannot create /sys/imagesmith-init: "),
        ("{tmp}/a-file", 2, "{tmp}/a-file is not a folder"),
        ("{tmp}/a-file/below", 2, "cannot create {tmp}/a-file/below: {tmp}/a-file is not a folder"),
    ],
)
def test_init_where_no_folder_can_be_made_is_one_line(
    tmp_path: Path, folder: str, code: int, why: str
) -> None:
    (tmp_path / "a-file").write_text("x")
    result = runner.invoke(app, ["init", folder.format(tmp=tmp_path)])
    assert result.exit_code == code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {why.format(tmp=tmp_path)}"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_init_makes_missing_folders_and_removes_them_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = runner.invoke(app, ["init", str(tmp_path / "new" / "lab")])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "new" / "lab" / "env.toml").is_file()

    def refuse(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", refuse)
    failed = runner.invoke(app, ["init", str(tmp_path / "other" / "lab")])
    assert failed.exit_code == 1, failed.output
    assert failed.stderr.splitlines() == [
        f"error: cannot write {tmp_path}/other/lab/env.toml: no space left on the device"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_run_time_settings_change_without_a_new_lock(example_dir: Path) -> None:
    """[resources], [job] and [registry] are read from env.toml when a job is written; they
    are not in the lock, so changing them leaves the lock (and the image's digest) alone."""
    from imagesmith.model.records import PushRecord, push_record_path, write_record

    spec = example_dir / "env.toml"
    lock = make_lock(spec)
    write_lock(lock, example_dir / "env.lock")
    locked = (example_dir / "env.lock").read_bytes()
    write_record(
        push_record_path(spec),
        PushRecord(
            repository="registry.example.edu/lab/analysis",
            digest="sha256:" + "ab" * 32,
            tags=("1.0.0",),
            lock_hash=lock.lock_hash,
            uid=10001,
            gid=10001,
        ),
    )
    before = runner.invoke(app, ["manifest", str(spec)])
    assert before.exit_code == 0, before.output
    assert "memory: 32Gi" in before.stdout and "nvidia.com/gpu: 1\n" in before.stdout
    spec.write_text(
        spec.read_text()
        .replace('memory = "32Gi"', 'memory = "48Gi"')
        .replace("gpu = 1 ", "gpu = 2 ")
        .replace('command = ["python3", "train.py"]', 'command = ["python3", "eval.py"]')
        .replace("registry.example.edu/lab/analysis", "other.example.edu/lab/analysis")
    )
    check = runner.invoke(app, ["lock", "--check", str(spec)])
    assert check.exit_code == 0, check.output
    assert check.stdout.strip() == "env.lock matches env.toml"
    after = runner.invoke(app, ["manifest", str(spec)])
    assert after.exit_code == 0, after.output
    assert "memory: 48Gi" in after.stdout and "memory: 32Gi" not in after.stdout
    assert "nvidia.com/gpu: 2\n" in after.stdout and "- eval.py" in after.stdout
    assert f"imagesmith.dev/lock-hash: {lock.lock_hash}" in after.stdout  # the same image
    sbatch = runner.invoke(app, ["sbatch", str(spec)])
    assert sbatch.exit_code == 0, sbatch.output
    assert "#SBATCH --mem=49152M" in sbatch.stdout and "#SBATCH --gpus=2" in sbatch.stdout
    rendered = runner.invoke(app, ["render", str(spec)])
    assert rendered.exit_code == 0 and "48Gi" not in rendered.stdout
    assert (example_dir / "env.lock").read_bytes() == locked


def _pushed_example(example_dir: Path) -> Path:
    from imagesmith.model.records import PushRecord, push_record_path, write_record

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
    spec = _pushed_example(example_dir)
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
    spec = _pushed_example(example_dir)
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


def test_credentials_quoted_in_a_message_are_redacted() -> None:
    from imagesmith.cli.output import redacted

    assert (
        redacted(
            "pip: ProxyError for http://lab:s3cr3t@proxy:3128 via https://tok@pypi.example.edu/simple"
        )
        == "pip: ProxyError for http://***@proxy:3128 via https://***@pypi.example.edu/simple"
    )
    assert redacted("see https://pypi.org/simple/@scope and ssh://git.example.edu") == (
        "see https://pypi.org/simple/@scope and ssh://git.example.edu"
    )


def test_an_error_line_with_a_credential_is_printed_redacted(tmp_path: Path) -> None:
    spec = tmp_path / "env.toml"
    spec.write_text(
        'name = "x"\n[base]\nimage = "debian"\n[python]\nindex_url = "ftp://u:s3cr3t@h/simple"\n'
    )
    result = runner.invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2
    assert '$.python.index_url: "ftp://***@h/simple" is not an index URL' in result.stderr
    assert "s3cr3t" not in result.output


def _read_only_mount_works(folder: Path) -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder}",
        ],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def test_a_read_only_folder_is_one_line_and_keeps_nothing(
    example_dir: Path, tmp_path: Path
) -> None:
    """The real thing: a read-only bind mount (a private mount namespace, root only)."""
    import subprocess
    import sys

    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "Containerfile").write_text("old\n")
    if not _read_only_mount_works(folder):
        pytest.skip("no private mount namespace here (unshare -m needs root)")
    spec = example_dir / "env.toml"
    _pushed(spec)
    imagesmith = str(Path(sys.executable).with_name("imagesmith"))
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
        f"{imagesmith} render {spec} -o {folder}/Containerfile; echo rc=$?; "
        f"{imagesmith} manifest {spec} -o {folder}/job.yaml; echo rc=$?; "
        f"{imagesmith} init {folder}/new; echo rc=$?"
    )
    run = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert run.stdout.split() == ["rc=1", "rc=1", "rc=1"], run.stdout + run.stderr
    assert run.stderr.splitlines() == [
        f"error: cannot write {folder}/Containerfile: Read-only file system",
        f"error: cannot write {folder}/job.yaml: Read-only file system",
        f"error: cannot create {folder}/new: Read-only file system",
    ]
    assert [p.name for p in folder.iterdir()] == ["Containerfile"]
    assert (folder / "Containerfile").read_text() == "old\n"


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
    _pushed_example(example_dir)
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


@pytest.mark.parametrize("command", ["lock", "build"])
@pytest.mark.parametrize("value", ["foo", "linux", "linux/", "Linux/AMD64", "linux/arm64/v8/x"])
def test_a_platform_that_is_not_os_arch_is_a_usage_error(
    command: str, value: str, example_dir: Path
) -> None:
    result = runner.invoke(app, [command, str(example_dir / "env.toml"), "--platform", value])
    assert result.exit_code == 2, result.output
    words = " ".join(result.output.replace("│", " ").split())  # typer's box wraps lines
    assert f"'{value}' is not OS/ARCH (e.g. linux/amd64, linux/arm64)" in words
    assert isinstance(result.exception, SystemExit)
