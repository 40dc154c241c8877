"""What the command line prints for people and for CI: --help, --json, colour, completion.

Every --json object is checked against its schema in schemas/cli/. Commands that need an
engine (build, verify, push, pull, inspect) are checked here through the functions that
build their objects; tests/integration/test_cli_engines.py runs them on the engines.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from typer.testing import CliRunner

from imagesmith import reports
from imagesmith.cli import app
from imagesmith.cli.output import colour_wanted
from imagesmith.engine.base import ImageInfo
from imagesmith.model.labels import LOCK
from imagesmith.model.lock import write_lock
from imagesmith.model.records import PushRecord, push_record_path, write_record
from imagesmith.pipeline.build import BuildResult
from imagesmith.pipeline.verify import Verdict
from imagesmith.render.containerfile import embedded_lock
from tests.conftest import REPO
from tests.fixtures.make_lock import make_lock
from tests.support import check_schema

runner = CliRunner()
SCHEMAS = REPO / "schemas" / "cli"
DIGEST = "sha256:" + "ab" * 32
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # help on one line per option


def json_of(stdout: str) -> dict[str, Any]:
    """The one JSON object a --json command prints: one line, nothing else on stdout."""
    lines = stdout.splitlines()
    assert len(lines) == 1, stdout
    return check_schema(json.loads(lines[0]))


def pushed(spec: Path) -> Path:
    """`spec` locked, with a push record, so manifest and sbatch have a digest."""
    lock = make_lock(spec)
    write_lock(lock, spec.with_suffix(".lock"))
    record = PushRecord(
        repository="registry.example.edu/lab/analysis",
        digest=DIGEST,
        tags=("1.0.0",),
        lock_hash=lock.lock_hash,
        uid=1000,
        gid=1000,
    )
    write_record(push_record_path(spec), record)
    return spec


# -- --help --------------------------------------------------------------------------------


def test_help_shows_argument_help_and_no_escaped_brackets() -> None:
    for command, wanted in [
        ("validate", "The lab's env.toml."),
        ("init", "Folder to copy the recipe into"),
        ("build", "[registry] repository"),
        ("push", "instead of [registry] repository"),
        ("manifest", "[job] kind"),
        ("lock", "[default: env.toml]"),
    ]:
        result = runner.invoke(app, [command, "--help"], env=WIDE)
        assert result.exit_code == 0, result.output
        assert wanted in result.output, (command, result.output)
        assert "\\[" not in result.output, (command, result.output)


def test_help_lists_the_json_option_where_ci_needs_it() -> None:
    for command in [
        "validate",
        "lock",
        "render",
        "build",
        "verify",
        "push",
        "pull",
        "inspect",
        "manifest",
        "sbatch",
    ]:
        result = runner.invoke(app, [command, "--help"], env=WIDE)
        assert "--json" in result.output, command
        assert (SCHEMAS / f"{command}.json").is_file(), command


# -- --json, commands that need no engine -------------------------------------------------------


def test_validate_json_ok_and_failed(example_dir: Path) -> None:
    ok = runner.invoke(app, ["validate", str(example_dir / "env.toml"), "--json"])
    assert ok.exit_code == 0, ok.output
    report = json_of(ok.stdout)
    assert report["ok"] and report["name"] == "lab-analysis" and report["problems"] == []

    bad = example_dir / "bad.toml"
    bad.write_text(
        'name = "x"\n[base]\nimage = "debian"\n[resources]\nmemory = "32GB"\ngpu = 1.5\n'
    )
    failed = runner.invoke(app, ["validate", str(bad), "--json"])
    assert failed.exit_code == 2
    report = json_of(failed.stdout)
    assert report["ok"] is False and report["exit_code"] == 2
    assert report["problems"] == failed.stderr.splitlines()
    assert len(report["problems"]) == 2


def test_lock_check_json_fresh_stale_missing_and_damaged(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(example_dir.parent)
    missing = runner.invoke(app, ["lock", "lab/env.toml", "--check", "--json"])
    assert missing.exit_code == 1
    report = json_of(missing.stdout)
    assert report["fresh"] is False and report["lock"] == "lab/env.lock"
    assert report["problems"] == ["lab/env.lock does not exist; run `imagesmith lock lab/env.toml`"]
    assert missing.stderr.startswith("error: lab/env.lock does not exist")

    lock = make_lock(example_dir / "env.toml")
    write_lock(lock, example_dir / "env.lock")
    fresh = runner.invoke(app, ["lock", "lab/env.toml", "--check", "--json"])
    assert fresh.exit_code == 0, fresh.output
    report = json_of(fresh.stdout)
    assert report["fresh"] is True and report["lock_hash"] == lock.lock_hash

    spec = example_dir / "env.toml"
    spec.write_text(spec.read_text().replace('"git", ', ""))
    stale = runner.invoke(app, ["lock", "lab/env.toml", "--check", "--json"])
    assert stale.exit_code == 1
    report = json_of(stale.stdout)
    assert report["fresh"] is False and "is stale" in report["problems"][0]
    assert stale.stderr.startswith("error: env.lock is stale")

    lock_path = example_dir / "env.lock"
    lock_path.write_text(lock_path.read_text().replace("2.2.6", "2.2.7"))
    damaged = runner.invoke(app, ["lock", "lab/env.toml", "--check", "--json"])
    assert damaged.exit_code == 2
    report = json_of(damaged.stdout)
    assert report["ok"] is False and "edited by hand" in report["problems"][0]


def test_render_manifest_and_sbatch_json(example_dir: Path) -> None:
    spec = pushed(example_dir / "env.toml")
    render = runner.invoke(app, ["render", str(spec), "--json"])
    assert render.exit_code == 0, render.output
    report = json_of(render.stdout)
    assert report["output"] is None and "\nFROM " in report["text"]
    assert report["text"] == runner.invoke(app, ["render", str(spec)]).stdout

    out = example_dir / "job.yaml"
    manifest = runner.invoke(app, ["manifest", str(spec), "--json", "-o", str(out)])
    assert manifest.exit_code == 0, manifest.output
    report = json_of(manifest.stdout)
    assert report["output"] == str(out) and "text" not in report
    assert report["image"] == f"registry.example.edu/lab/analysis@{DIGEST}"
    assert report["kind"] == "job" and f"image: {report['image']}" in out.read_text()

    sbatch = runner.invoke(app, ["sbatch", str(spec), "--json"])
    assert sbatch.exit_code == 0, sbatch.output
    report = json_of(sbatch.stdout)
    assert report["runtime"] == "podman" and "#SBATCH" in report["text"]


def test_manifest_json_failure_keeps_the_exit_code(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    result = runner.invoke(app, ["manifest", str(spec), "--json"])
    assert result.exit_code == 2
    report = json_of(result.stdout)
    assert report["command"] == "manifest" and report["exit_code"] == 2
    assert report["problems"][0].startswith("no image digest for this lock yet")


# -- --json, commands that need an engine: the objects they print -----------------------------


def test_engine_command_reports_match_their_schemas(example_dir: Path) -> None:
    lock = make_lock(example_dir / "env.toml")
    info = ImageInfo(id="sha256:" + "cd" * 32, labels={LOCK: embedded_lock(lock)})
    report = check_schema(reports.inspect_report("lab-analysis:1.0.0", info, lock))
    assert report["name"] == "lab-analysis" and report["lock_hash"] == lock.lock_hash
    assert report["spec"]["name"] == "lab-analysis"
    pinned = f"registry.example.edu/lab/analysis@{DIGEST}"
    report = check_schema(reports.pull_report(pinned, engine="podman", info=info, lock=lock))
    assert report["pinned"] == pinned and report["image_id"] == info.id

    record = PushRecord(
        "registry.example.edu/lab/analysis", DIGEST, ("1.0.0",), lock.lock_hash, 1, 1
    )
    assert check_schema(reports.push_report(record))["pinned"] == pinned

    result = BuildResult(
        info.id, DIGEST, ("lab-analysis:1.0.0",), "docker", 1.5, 10, lock.lock_hash, False
    )
    report = check_schema(reports.build_report(result, pushed=pinned))
    assert report["digest"] == DIGEST and report["pushed"] == pinned

    locked = reports.lock_report(
        lock,
        path=example_dir / "env.lock",
        written=True,
        changes=["numpy 2.2.6 → 2.3.5"],
        seconds=7.9,
    )
    assert check_schema(locked)["changes"] == ["numpy 2.2.6 → 2.3.5"] and not locked["check"]

    same = check_schema(reports.verify_report(Verdict(DIGEST, DIGEST, ())))
    assert same["ok"] and same["identical"] and same["exit_code"] == 0
    other = "sha256:" + "ef" * 32
    differs = check_schema(
        reports.verify_report(Verdict(DIGEST, other, ("layer 2: x: only in b",)))
    )
    assert differs["exit_code"] == 1 and not differs["identical"]
    assert differs["problems"][1] == "layer 2: x: only in b"


def test_a_report_with_an_unknown_field_or_a_wrong_exit_code_is_refused() -> None:
    with pytest.raises(jsonschema.ValidationError):
        check_schema({**reports.envelope("validate"), "surprise": 1})
    with pytest.raises(jsonschema.ValidationError):
        check_schema(reports.failure("validate", 0, ["x"]))


# -- colour --------------------------------------------------------------------------------------


class FakeTerminal:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert colour_wanted(FakeTerminal(True))  # type: ignore[arg-type]
    assert not colour_wanted(FakeTerminal(False))  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not colour_wanted(FakeTerminal(True))  # type: ignore[arg-type]


def _run_in_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The command's output when it runs on a real pseudo-terminal, as a person would."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", "from imagesmith.cli import main; main()", *args],
            stdin=follower,
            stdout=follower,
            stderr=follower,
            env=env,
            timeout=60,
            check=False,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
    assert proc.returncode == 2
    return b"".join(chunks).decode()


def test_errors_are_red_on_a_terminal_plain_with_no_color_and_in_a_pipe(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in {"NO_COLOR", "CI"}}
    env["TERM"] = "xterm"
    missing = str(tmp_path / "env.toml")
    red = _run_in_a_terminal(["validate", missing], env)
    assert "\x1b[31m" in red and "no such file" in red
    plain = _run_in_a_terminal(["validate", missing], {**env, "NO_COLOR": "1"})
    assert "\x1b[" not in plain and "no such file" in plain
    piped = runner.invoke(app, ["validate", missing])
    assert piped.exit_code == 2 and "\x1b[" not in piped.stderr


# -- completion ----------------------------------------------------------------------------------


def test_shell_completion_completes_commands_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    # typer asks shellingham which shell runs it, from the process tree: none when the
    # suite runs detached (nohup, a CI agent). Say bash, as a user's terminal would.
    import shellingham

    monkeypatch.setattr(shellingham, "detect_shell", lambda: ("bash", "/bin/bash"))
    script = runner.invoke(app, ["--show-completion"])
    assert script.exit_code == 0 and "_imagesmith_completion" in script.stdout
    env = {
        "_IMAGESMITH_COMPLETE": "complete_bash",
        "COMP_WORDS": "imagesmith lo",
        "COMP_CWORD": "1",
    }
    words = runner.invoke(app, [], env=env, prog_name="imagesmith")
    assert words.stdout.split() == ["lock", "login"]
    env.update(COMP_WORDS="imagesmith lock --ch", COMP_CWORD="2")
    assert runner.invoke(app, [], env=env, prog_name="imagesmith").stdout.split() == ["--check"]


@pytest.mark.parametrize("command", ["render", "manifest", "sbatch"])
@pytest.mark.parametrize("target", ["env.toml", "env.lock"])
def test_output_over_the_spec_or_its_lock_is_refused(
    example_dir: Path, command: str, target: str
) -> None:
    """`-o env.toml` would replace the spec with what the command writes: exit 2, one line,
    both files as they were."""
    spec = pushed(example_dir / "env.toml")
    before = {name: (example_dir / name).read_bytes() for name in ("env.toml", "env.lock")}
    result = runner.invoke(app, [command, str(spec), "-o", str(example_dir / target)])
    assert result.exit_code == 2, result.output
    assert result.stderr == (
        f"error: --output {example_dir / target}: that is {target}, which this command "
        "reads; name another file\n"
    )
    assert {name: (example_dir / name).read_bytes() for name in before} == before


def test_inspect_given_a_spec_file_says_it_reads_an_image(example_dir: Path) -> None:
    """No engine is asked: a file is not an image, and the line says what to give instead."""
    result = runner.invoke(app, ["inspect", str(example_dir / "env.toml"), "--engine", "docker"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: {example_dir / 'env.toml'} is a file: inspect reads an image (NAME:TAG or a "
        "digest); the image `imagesmith build` made from a spec is the NAME:VERSION it printed"
    )
