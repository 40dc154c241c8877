"""Many specs in one `imagesmith build`: which specs a command line names, how they run
side by side, and what the command prints (lines and --json, checked against its schema).
The builds themselves run on the engines in tests/integration/test_catalogue_build.py."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from imagesmith import reports
from imagesmith.cli import app
from imagesmith.cli.local_builds import catalogue_line
from imagesmith.errors import InputError, OperationError
from imagesmith.model.labels import LOCK_HASH
from imagesmith.pipeline.build import BuildResult
from imagesmith.pipeline.catalogue import SKIPPED, Outcome, exit_code, run_all, spec_paths
from imagesmith.pipeline.substitute import NotSubstituted, Substitute, check_config
from tests.support import check_schema

runner = CliRunner()
DIGEST = "sha256:" + "ab" * 32
LOCK_HASH_VALUE = "sha256:" + "cd" * 32


def _spec(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "env.toml"
    path.write_text('name = "x"\n')
    return path


def test_a_folder_is_its_env_toml_and_those_one_level_down_sorted(tmp_path: Path) -> None:
    own = _spec(tmp_path)
    b = _spec(tmp_path / "b")
    a = _spec(tmp_path / "a")
    _spec(tmp_path / "a" / "deeper")  # two levels down: not taken
    (tmp_path / "c").mkdir()  # a folder without a spec: passed over
    assert spec_paths([tmp_path]) == [own, a, b]
    # Files as given, in order; a spec named twice (also through its folder) builds once.
    assert spec_paths([b, a, tmp_path / "b", b]) == [b, a]
    missing = tmp_path / "nowhere" / "env.toml"
    assert spec_paths([missing, a]) == [missing, a]  # its own failure, not the command's


def test_a_folder_with_no_specs_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="no specs in this folder"):
        spec_paths([tmp_path / "empty"])
    result = runner.invoke(app, ["build", str(tmp_path / "empty")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no specs in this folder" in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_jobs_must_be_one_or_more() -> None:
    result = runner.invoke(app, ["build", "a.toml", "b.toml", "--jobs", "0"])
    assert result.exit_code == 2
    with pytest.raises(InputError):
        run_all([Path("a")], str, jobs=0)


def _builder(fail: set[str], *, delay: float = 0.0) -> tuple[list[str], Callable[[Path], str]]:
    started: list[str] = []
    guard = threading.Lock()

    def build_one(path: Path) -> str:
        with guard:
            started.append(path.name)
        time.sleep(delay)
        if path.name in fail:
            raise OperationError(f"{path.name} does not build")
        return f"image of {path.name}"

    return started, build_one


def test_a_failed_spec_fails_only_itself() -> None:
    specs = [Path(n) for n in ("a", "bad", "c")]
    started, build_one = _builder({"bad"})
    outcomes = run_all(specs, build_one, jobs=1)
    assert started == ["a", "bad", "c"]
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].problems == ("bad does not build",) and outcomes[1].exit_code == 1
    assert outcomes[2].value == "image of c"
    assert exit_code(outcomes) == 1


def test_fail_fast_starts_nothing_after_a_failure() -> None:
    specs = [Path(n) for n in ("bad", "b", "c")]
    started, build_one = _builder({"bad"})
    heard: list[str] = []
    outcomes = run_all(
        specs,
        build_one,
        jobs=1,
        fail_fast=True,
        on_done=lambda o: heard.append(o.spec.name),
    )
    assert started == ["bad"]
    assert [o.skipped for o in outcomes] == [False, True, True]
    assert outcomes[1].problems == (SKIPPED,)
    assert sorted(heard) == ["b", "bad", "c"]
    assert exit_code(outcomes) == 1


def test_jobs_run_specs_side_by_side_and_keep_their_order() -> None:
    specs = [Path(str(n)) for n in range(4)]
    _, build_one = _builder(set(), delay=0.3)
    began = time.monotonic()
    outcomes = run_all(specs, build_one, jobs=4)
    assert time.monotonic() - began < 1.0  # 4 x 0.3 s one after the other would be 1.2 s
    assert [o.value for o in outcomes] == [f"image of {n}" for n in range(4)]
    assert exit_code(outcomes) == 0


def test_exit_code_is_2_only_when_every_failure_was_bad_input() -> None:
    bad: Outcome[int] = Outcome(Path("a"), exit_code=2, problems=("x",))
    broken: Outcome[int] = Outcome(Path("b"), exit_code=1, problems=("y",))
    fine = Outcome(Path("c"), value=1)
    assert exit_code([fine, bad]) == 2
    assert exit_code([bad, broken, fine]) == 1
    assert exit_code([fine]) == 0


def _result(*, substituted_from: str | None = None) -> BuildResult:
    return BuildResult(
        "sha256:" + "01" * 32,
        DIGEST,
        ("lab:1.0", "lab:lock-cdcdcdcdcdcdcdcd"),
        "podman",
        2.25,
        1000,
        LOCK_HASH_VALUE,
        False,
        substituted_from=substituted_from,
    )


def test_many_spec_json_is_one_object_with_specs_in_order_and_fits_the_schema() -> None:
    source = "127.0.0.1:5000/lab/x:lock-cdcdcdcdcdcdcdcd"
    Built = Outcome[tuple[BuildResult, str | None]]
    outcomes: list[Built] = [
        Outcome(Path("a/env.toml"), value=(_result(), None)),
        Outcome(Path("b/env.toml"), value=(_result(substituted_from=source), "r/x@" + DIGEST)),
        Outcome(Path("c/env.toml"), exit_code=2, problems=("c/env.toml: $.name: bad",)),
        Outcome(Path("d/env.toml"), exit_code=1, problems=(SKIPPED,), skipped=True),
    ]
    report = check_schema(reports.catalogue_report(outcomes, exit_code=exit_code(outcomes)))
    assert report["exit_code"] == 2 and not report["ok"]
    assert report["problems"] == ["c/env.toml: failed", "d/env.toml: not built"]
    a, b, c, d = report["specs"]
    assert (a["spec"], a["digest"], "substituted_from" in a) == ("a/env.toml", DIGEST, False)
    assert b["substituted_from"] == source and b["pushed"] == "r/x@" + DIGEST
    assert (c["ok"], c["exit_code"], c["problems"]) == (False, 2, ["c/env.toml: $.name: bad"])
    assert d["skipped"] is True
    # A many-spec object without its specs, or a spec object without `spec`, is refused.
    with pytest.raises(jsonschema.ValidationError):
        check_schema({**report, "specs": [{**a, "spec": None}]})
    with pytest.raises(jsonschema.ValidationError):
        check_schema({**report, "digest": DIGEST})


def test_one_spec_json_is_unchanged_unless_substituted() -> None:
    plain = check_schema(reports.build_report(_result(), pushed=None))
    assert set(plain) == {
        "command",
        "ok",
        "exit_code",
        "problems",
        "image_id",
        "digest",
        "tags",
        "engine",
        "seconds",
        "size",
        "lock_hash",
    }
    taken = check_schema(reports.build_report(_result(substituted_from="r/x:lock-cd"), pushed=None))
    assert taken["substituted_from"] == "r/x:lock-cd"


def test_one_line_per_spec() -> None:
    built = catalogue_line(Outcome(Path("a/env.toml"), value=(_result(), None)))
    assert built == f"ok      a/env.toml: built lab:1.0 with podman in 2.2 s, {DIGEST}"
    taken = catalogue_line(
        Outcome(Path("b/env.toml"), value=(_result(substituted_from="r/x:lock-cd"), "r/x@d"))
    )
    assert taken.startswith("ok      b/env.toml: substituted lab:1.0 from r/x:lock-cd in 2.2 s")
    assert taken.endswith(", pushed r/x@d")
    failed = catalogue_line(Outcome(Path("c/env.toml"), exit_code=1, problems=("boom", "more")))
    assert failed == "failed  c/env.toml: boom (exit 1)"
    skipped = catalogue_line(
        Outcome(Path("d/env.toml"), exit_code=1, problems=(SKIPPED,), skipped=True)
    )
    assert skipped == f"skipped d/env.toml: {SKIPPED}"
    for line in (built, taken, failed, skipped):
        assert "\n" not in line


def test_help_says_which_files_a_folder_stands_for() -> None:
    result = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "FOLDER/env.toml and FOLDER/*/env.toml (one level down, sorted)" in text
    for option in ("--jobs", "--fail-fast", "--substitute"):
        assert option in text


def test_an_image_of_another_lock_is_not_substituted() -> None:
    from imagesmith.model.reference import parse_reference

    found = Substitute(parse_reference("r.example/lab/x"), "lock-cd", DIGEST, "m", b"{}")

    class Lock:
        lock_hash = LOCK_HASH_VALUE

    check_config(found, {"config": {"Labels": {LOCK_HASH: LOCK_HASH_VALUE}}}, Lock())  # type: ignore[arg-type]
    with pytest.raises(NotSubstituted, match="was built from lock sha256:eeee"):
        check_config(found, {"config": {"Labels": {LOCK_HASH: "sha256:" + "ee" * 32}}}, Lock())  # type: ignore[arg-type]
    with pytest.raises(NotSubstituted, match="lock unknown"):
        check_config(found, {"config": {}}, Lock())  # type: ignore[arg-type]
    assert json.loads(found.manifest) == {}


@pytest.mark.parametrize(
    "manifest",
    [
        b"not json",
        b"[]",
        b"{}",
        b'{"config": {"digest": "sha256:a"}, "layers": [{"digest": 1, "size": 2}]}',
        b'{"config": {"digest": "sha256:a"}, "layers": [{"digest": "sha256:b", "size": -1}]}',
    ],
)
def test_a_malformed_manifest_in_the_registry_is_one_line_not_a_traceback(
    manifest: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build --push` reads the held image's manifest before asking for anything else: a
    manifest without a config digest or with malformed layers is refused in one line."""
    import imagesmith.pipeline.substitute as substitute
    from imagesmith.model.reference import parse_reference

    found = Substitute(parse_reference("r.example/lab/x"), "lock-cd", DIGEST, "m", manifest)
    monkeypatch.setattr(substitute, "find_substitute", lambda repository, lock: found)
    with pytest.raises(NotSubstituted, match=r"^r.example/lab/x:lock-cd is not a well-formed"):
        substitute.held_image("r.example/lab/x", object())  # type: ignore[arg-type]
