"""Start-up work of the `imagesmith` process (issue 18: `--version`, `validate`, `render`
within 0.1 s): `main()` builds only the command the command line names, and env.lock is
parsed once per command. Neither may change what any command does or prints."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib
from typer.testing import CliRunner

from imagesmith import __version__
from imagesmith.cli import COMMAND_MODULES, app, app_for, command_name
from imagesmith.errors import LockError
from imagesmith.model.lock import fresh_lock, read_lock, write_lock
from imagesmith.model.spec_loading import load_spec
from tests.fixtures.make_lock import make_lock

NAMES = [command_name(command) for command in app.registered_commands]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it: through `main()`, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "imagesmith", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_app_has_the_commands_the_docs_name() -> None:
    assert len(NAMES) == len(set(NAMES)) >= 18
    assert {"validate", "render", "lock", "build", "fetch-tool", "verify-provenance"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_each_command_alone_answers_as_in_the_whole_app(name: str) -> None:
    lean = app_for([name, "--help"])
    assert [command_name(command) for command in lean.registered_commands] == [name]
    assert len(app.registered_commands) == len(NAMES)  # the app itself is left whole
    alone = CliRunner().invoke(lean, [name, "--help"])
    whole = CliRunner().invoke(app, [name, "--help"])
    assert alone.exit_code == whole.exit_code == 0, alone.output
    assert alone.output == whole.output


def test_each_command_is_listed_with_the_module_defining_it() -> None:
    defined = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(
            f"imagesmith.cli.{module}"
        ).commands.registered_commands:
            defined[command_name(command)] = module
    assert defined == COMMAND_MODULES
    assert list(COMMAND_MODULES) == NAMES  # --help lists them in the table's order


def test_a_command_imports_only_the_module_defining_it() -> None:
    code = (
        "import sys\nfrom imagesmith.cli import main\n"
        "sys.argv = ['imagesmith', 'validate', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "print(*sorted(m for m in sys.modules if m.startswith('imagesmith.cli')), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.split() == [
        "imagesmith.cli",
        "imagesmith.cli.application",
        "imagesmith.cli.options",
        "imagesmith.cli.output",
        "imagesmith.cli.quick",
        "imagesmith.cli.spec_commands",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["render", "--bogus"],  # an option the command does not have
        ["validate", "a.toml", "b.toml"],  # one argument too many
        ["lock", "--check", "-P"],  # an option without its value
        ["init", "--list"],  # a command that runs, with no spec
    ],
    ids=["unknown-option", "extra-argument", "missing-value", "runs"],
)
def test_a_lean_app_fails_and_runs_as_the_whole_app(args: list[str]) -> None:
    alone = CliRunner().invoke(app_for(args), args)
    whole = CliRunner().invoke(app, args)
    assert (alone.exit_code, alone.output) == (whole.exit_code, whole.output)


@pytest.mark.parametrize(
    "args",
    [[], ["--help"], ["rendr"], ["RENDER"], ["--show-completion"], ["--", "render"]],
)
def test_anything_but_a_command_name_gets_the_whole_app(args: list[str]) -> None:
    assert app_for(args) is app


def test_shell_completion_gets_the_whole_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("_IMAGESMITH_COMPLETE", "complete_bash")
    assert app_for(["render"]) is app


def test_version_is_answered_without_building_any_command() -> None:
    assert app_for(["--version"]).registered_commands == []
    done = _run("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"imagesmith {__version__}\n", "")
    # Eager: as in the whole app, it answers whatever follows it.
    assert _run("--version", "render", "--bogus").stdout == f"imagesmith {__version__}\n"


def test_help_lists_every_command() -> None:
    done = _run("--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[1] for line in done.stdout.splitlines() if line.startswith("│ ")}
    assert set(NAMES) <= listed, set(NAMES) - listed


def test_an_unknown_command_is_clicks_error_with_a_suggestion() -> None:
    done = _run("rendr")
    assert done.returncode == 2
    assert "No such command 'rendr'" in done.stderr
    assert "Did you mean 'render'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_command_runs_through_main(example_dir: Path) -> None:
    write_lock(make_lock(example_dir / "env.toml"), example_dir / "env.lock")
    out = example_dir / "Containerfile"
    done = _run("render", str(example_dir / "env.toml"), "-o", str(out))
    assert done.returncode == 0, done.stderr
    whole = CliRunner().invoke(app, ["render", str(example_dir / "env.toml")])
    assert whole.exit_code == 0, whole.output
    assert out.read_text() == whole.output


#: Modules that a command reading only env.toml and env.lock has no use for: the engines'
#: clients and the resolver (0.1 s and more of imports), the schema and PEP 508 checkers
#: (an intact lock vouches for the spec), rich (only for help and errors), and for the
#: commands `quick` answers, typer and click.
HEAVY = (
    "docker",
    "requests",
    "jsonschema",
    "packaging",
    "imagesmith.locking.resolve",
    "imagesmith.engine",
    "imagesmith.pipeline.build",
    "rich",
    "click",
    "typer",
)


def _imports_of(example_dir: Path, args: list[str]) -> list[str]:
    """The HEAVY modules that `imagesmith ARGS` imports, run in example_dir (with its lock)."""
    write_lock(make_lock(example_dir / "env.toml"), example_dir / "env.lock")
    code = (
        "import sys\nfrom imagesmith.cli import main\n"
        f"sys.argv = ['imagesmith', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"print('imported:', *sorted({{h for m in sys.modules for h in {HEAVY!r} "
        "if m == h or m.startswith(h + '.')}), file=sys.stderr)"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(example_dir / "cache")}
    for _ in range(2):  # the first run checks [resources] ... once and notes it: see the second
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=example_dir,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    return done.stderr.splitlines()[-1].split()[1:]


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["validate", "env.toml"],
        ["validate", "--json"],
        ["render", "env.toml"],
        ["render", "--json", "-o", "Containerfile"],
        ["render", "--output=Containerfile"],
    ],
)
def test_quick_commands_import_nothing_heavy_not_even_typer(
    example_dir: Path, args: list[str]
) -> None:
    assert _imports_of(example_dir, args) == []


def test_other_commands_import_typer_but_nothing_heavy(example_dir: Path) -> None:
    assert _imports_of(example_dir, ["lock", "--check", "env.toml"]) == ["click", "typer"]


# -- env.lock parsed once per command -------------------------------------------------------


@pytest.fixture
def lock_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts of every lock that tomllib parses from now on (specs are not counted)."""
    parsed: list[str] = []
    real = tomllib.loads

    def counting(text: str, **kwargs: Any) -> dict[str, Any]:
        if "lock_hash" in text:
            parsed.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(tomllib, "loads", counting)
    return parsed


def test_a_command_parses_env_lock_once(example_dir: Path, lock_parses: list[str]) -> None:
    spec_path, lock_path = example_dir / "env.toml", example_dir / "env.lock"
    made = make_lock(spec_path)
    write_lock(made, lock_path)
    lock_parses.clear()
    the_lock = fresh_lock(load_spec(spec_path))  # what render, manifest, push ... do
    assert len(lock_parses) == 1
    assert the_lock == made == read_lock(lock_path)  # the next read parses again
    assert len(lock_parses) == 2


def test_a_lock_changed_after_the_spec_was_read_is_read_anew(
    example_dir: Path, lock_parses: list[str]
) -> None:
    spec_path, lock_path = example_dir / "env.toml", example_dir / "env.lock"
    write_lock(make_lock(spec_path), lock_path)
    spec = load_spec(spec_path)
    lock_path.write_text(lock_path.read_text().replace('version = "2.2.6"', 'version = "2.3.0"'))
    with pytest.raises(LockError, match="edited by hand or is damaged"):
        read_lock(lock_path)
    assert len(lock_parses) == 2
    write_lock(make_lock(spec_path), lock_path)
    assert fresh_lock(spec).spec_hash == spec.spec_hash


def test_a_hand_edited_lock_is_still_caught_when_load_spec_parsed_it(example_dir: Path) -> None:
    spec_path, lock_path = example_dir / "env.toml", example_dir / "env.lock"
    write_lock(make_lock(spec_path), lock_path)
    lock_path.write_text(lock_path.read_text().replace('version = "2.2.6"', 'version = "2.3.0"'))
    spec = load_spec(spec_path)  # checks the spec itself: the lock no longer vouches for it
    with pytest.raises(LockError, match="edited by hand or is damaged"):
        fresh_lock(spec)
