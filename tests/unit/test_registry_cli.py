"""`push` and `pull` refusing what they cannot do, through the CLI: one line, the right exit
code, nothing written, and no engine or registry contacted (none is reachable here: an
attempt would fail with another message)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.model.lock import write_lock
from imagesmith.model.records import push_record_path
from tests.fixtures.make_lock import make_lock

runner = CliRunner()
DIGEST = "sha256:" + "3" * 64


def only_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(autouse=True)
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing an engine fails loudly: these refusals must come before one is needed."""

    def refuse(*_: object) -> None:
        raise AssertionError("an engine was chosen")

    monkeypatch.setattr("imagesmith.engine.choose_engine", refuse)


@pytest.mark.parametrize(
    "reference",
    ["127.0.0.1:5000/lab/analysis:1.0.0", "127.0.0.1:5000/lab/analysis"],
    ids=["tag", "no-tag"],
)
def test_pull_refuses_a_tag(reference: str) -> None:
    result = runner.invoke(app, ["pull", reference])
    assert result.exit_code == 2, result.output
    assert only_line(result.stderr) == (
        f"error: {reference}: pull by digest (NAME@sha256:...), never by a mutable tag"
    )


def test_pull_refuses_a_short_digest() -> None:
    result = runner.invoke(app, ["pull", "127.0.0.1:5000/lab/analysis@sha256:abc"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.splitlines()) == 1


def test_push_without_a_build_record_says_to_build(
    example_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    monkeypatch.chdir(example_dir.parent)
    result = runner.invoke(app, ["push", "lab/env.toml"])
    assert result.exit_code == 2, result.output
    assert only_line(result.stderr) == (
        "error: no image built from this env.lock yet: run `imagesmith build lab/env.toml` "
        "(or `imagesmith build lab/env.toml --push`)"
    )
    assert not push_record_path(spec).exists()


def test_push_without_a_repository_says_where_to_name_one(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    text = spec.read_text()
    spec.write_text(
        text.replace('[registry]\nrepository = "registry.example.edu/lab/analysis"\n', "")
    )
    assert "[registry]" not in spec.read_text()
    write_lock(make_lock(spec), example_dir / "env.lock")
    result = runner.invoke(app, ["push", str(spec)])
    assert result.exit_code == 2, result.output
    assert only_line(result.stderr) == (
        "error: env.toml has no [registry] repository; add one or pass --to REGISTRY/PATH"
    )
    assert not push_record_path(spec).exists()


def test_push_to_a_digest_is_refused(example_dir: Path) -> None:
    spec = example_dir / "env.toml"
    write_lock(make_lock(spec), example_dir / "env.lock")
    result = runner.invoke(app, ["push", str(spec), "--to", f"127.0.0.1:5000/lab/x@{DIGEST}"])
    assert result.exit_code == 2, result.output
    assert only_line(result.stderr) == (
        f"error: --to 127.0.0.1:5000/lab/x@{DIGEST}: name a repository or a tag, not a digest"
    )
