"""`imagesmith --version`, `validate` and `render` answered without typer (`cli.quick`):
the same answer, on every stream and in the exit code, as the typer app gives; and any
command line that is not one of the plain forms left to typer, untouched."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.cli.quick import answer
from imagesmith.model.lock import write_lock
from tests.fixtures.make_lock import make_lock


def _main(cwd: Path, *args: str) -> tuple[int, str, str]:
    """`imagesmith ARGS` as a user runs it: main() in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-m", "imagesmith", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def _typer(*args: str) -> tuple[int, str, str]:
    """The same command line parsed and run by the typer app."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def lab(example_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The example spec with its lock, a broken spec, and a spec whose lock is stale; the
    test runs in that folder (relative paths mean the same to both runs)."""
    write_lock(make_lock(example_dir / "env.toml"), example_dir / "env.lock")
    text = (example_dir / "env.toml").read_text()
    broken = text.replace("[image]", "[image]\nbogus_key = 1\n", 1)  # two problems
    (example_dir / "broken.toml").write_text(broken.replace('name = "lab', 'name = "Lab', 1))
    stale = example_dir / "stale"
    stale.mkdir()
    (stale / "env.toml").write_text(text.replace('name = "', 'name = "other-', 1))
    write_lock(make_lock(example_dir / "env.toml"), stale / "env.lock")
    monkeypatch.chdir(example_dir)
    return example_dir


CASES = [
    ["--version"],
    ["validate"],
    ["validate", "env.toml"],
    ["validate", "--json", "env.toml"],
    ["validate", "broken.toml"],
    ["validate", "broken.toml", "--json"],
    ["validate", "missing.toml"],
    ["validate", "Containerfile.d"],  # a folder
    ["render"],
    ["render", "env.toml", "--json"],
    ["render", "stale/env.toml"],
    ["render", "--json", "stale/env.toml"],
    ["render", "broken.toml"],
]


@pytest.mark.parametrize("args", CASES, ids=" ".join)
def test_a_plain_command_line_is_answered_as_typer_answers_it(lab: Path, args: list[str]) -> None:
    ran = _main(lab, *args)
    assert ran == _typer(*args)
    assert "Traceback" not in ran[2]
    if "broken.toml" in args:
        assert ran[0] == 2 and "bogus_key" in ran[2] and "Lab-analysis" in ran[2]


@pytest.mark.parametrize(
    "options",
    [
        ["-o", "out/Containerfile"],
        ["--output", "out/Containerfile"],
        ["--output=out/Containerfile"],
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_render_to_a_file_writes_what_typer_writes(
    lab: Path, options: list[str], as_json: bool
) -> None:
    args = ["render", *options, "env.toml", *(["--json"] if as_json else [])]
    written = lab / "out" / "Containerfile"
    written.parent.mkdir()
    ran = _main(lab, *args)
    by_main = written.read_text()
    written.unlink()
    assert ran == _typer(*args)
    assert ran[0] == 0 and f"wrote {Path('out/Containerfile')}" in ran[2]
    assert by_main == written.read_text() == _typer("render", "env.toml")[1]


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--help"],
        ["--version", "render"],
        ["validate", "--help"],
        ["validate", "a.toml", "b.toml"],  # a second argument
        ["validate", "-o", "x"],  # render's option
        ["validate", "--json", "--json"],  # an option twice
        ["validate", ""],  # an empty argument
        ["validate", "--", "env.toml"],
        ["render", "--bogus"],
        ["render", "-o"],  # an option without its value
        ["render", "-o", "--json"],  # a value that looks like an option
        ["render", "--output="],
        ["render", "-oContainerfile"],
        ["render", "-o", "a", "-o", "b"],
        ["lock", "--check"],
        ["rendr"],
    ],
    ids=repr,
)
def test_anything_else_is_left_to_typer_untouched(
    lab: Path, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = sorted(lab.rglob("*"))
    assert answer(args) is False
    assert capsys.readouterr() == ("", "")
    assert sorted(lab.rglob("*")) == before


def test_shell_completion_is_left_to_typer(
    lab: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("_IMAGESMITH_COMPLETE", "complete_bash")
    assert answer(["validate"]) is False
    assert capsys.readouterr() == ("", "")


def test_a_typer_error_still_reaches_the_user_through_main(lab: Path) -> None:
    code, out, error = _main(lab, "render", "-o")
    assert (code, out) == (2, "")
    assert "Option '-o' requires an argument" in error


#: Words a command line for these commands is made of: theirs, typer's, and odd ones.
WORDS = [
    "validate",
    "render",
    "lock",
    "--version",
    "--json",
    "-o",
    "--output",
    "--output=written",
    "--output=",
    "-owritten",
    "written",
    "env.toml",
    "broken.toml",
    "missing.toml",
    "stale/env.toml",
    "",
    "-",
    "--",
    "--help",
    "-x",
]


def _in_process(run: Callable[[], object]) -> tuple[int, str, str]:
    out, error = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(error):
        try:
            run()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), error.getvalue()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.sampled_from(WORDS), max_size=5)
    | st.builds(
        lambda command, rest: [command, *rest],
        st.sampled_from(["validate", "render"]),
        st.lists(st.sampled_from(WORDS[4:15]), max_size=4),  # their options and files
    )
    | st.builds(  # the plain forms, in any order
        lambda command, parts, order: [
            command,
            *(word for part in order.sample(parts, len(parts)) for word in part),
        ],
        st.sampled_from(["validate", "render"]),
        st.lists(
            st.sampled_from(
                [
                    ("env.toml",),
                    ("broken.toml",),
                    ("stale/env.toml",),
                    ("--json",),
                    ("-o", "written"),
                    ("--output", "written"),
                    ("--output=written",),
                ]
            ),
            max_size=3,
            unique=True,
        ),
        st.randoms(use_true_random=False),
    )
)
def test_any_command_line_quick_answers_is_answered_as_typer_answers_it(
    lab: Path, args: list[str]
) -> None:
    # `-o FILE` may name any file of the folder (even env.toml): each run starts from it as
    # it was, and leaves it as the other run must leave it.
    files = {path: path.read_bytes() for path in lab.rglob("*") if path.is_file()}

    def folder_as_it_was() -> dict[Path, bytes]:
        now = {path: path.read_bytes() for path in lab.rglob("*") if path.is_file()}
        for path in now.keys() - files.keys():
            path.unlink()
        for path, data in files.items():
            path.write_bytes(data)
        return now

    answered: list[bool] = []  # stays empty when it answered with an exit (SystemExit)
    quick = _in_process(lambda: answered.append(answer(args)))
    event("left to typer" if answered == [False] else "answered by quick")
    after_quick = folder_as_it_was()
    if answered == [False]:
        assert quick == (0, "", "")
        assert after_quick == files
        return
    assert quick == _typer(*args), args
    assert folder_as_it_was() == after_quick


@pytest.mark.parametrize(
    "args", [["--version"], ["render"], ["render", "--json"], ["validate"], ["lock", "--check"]]
)
def test_a_reader_that_went_away_ends_the_command_with_exit_1_and_no_traceback(
    lab: Path, args: list[str]
) -> None:
    """`imagesmith render | head`: as click ends the typer commands (`lock --check`)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout fails: EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "imagesmith", *args],
            cwd=lab,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
