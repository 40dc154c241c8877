"""The documentation cannot name a command or option imagesmith does not have.

Every `imagesmith <command> ... --option` in README.md, docs/*.md, the recipes' READMEs and
examples/ci/ (code blocks, inline code, the README's command table, YAML and shell) is checked
against the CLI's real command tree (Typer's click group). docs/spec.md must be what
docs/gen_spec_reference.py makes from the schema today, and the CI examples must run the
same imagesmith commands as examples/ci/pipeline.sh, which tests/integration runs for real.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from imagesmith.cli import app
from tests.conftest import REPO

DOCS = REPO / "docs"
CI = REPO / "examples" / "ci"
MARKDOWN = sorted([REPO / "README.md", *DOCS.glob("*.md"), *(REPO / "recipes").glob("*/README.md")])


@dataclass(frozen=True)
class Invocation:
    where: str
    command: str
    options: tuple[str, ...]
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: imagesmith {' '.join(self.words)}"


def commands() -> dict[str, Any]:
    """The CLI's subcommands by name, from the click command tree Typer builds."""
    root = typer.main.get_command(app)
    found: dict[str, Any] = getattr(root, "commands", {})
    assert found, "imagesmith has no subcommands?"
    return found


def global_options() -> set[str]:
    return known_options(typer.main.get_command(app))


def known_options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(param.opts)
        names.update(param.secondary_opts)
    return names


# -- finding invocations ---------------------------------------------------------------------

_SEPARATORS = re.compile(r"&&|\|\||;|\$\(|(?<!\\)\||`|\)")
_LEADERS = re.compile(
    r"^(?:\$\s+|-\s+|run:\s*|script:\s*|(?:time|exec|then|else|do)\s+|\w+=\S*\s+)+"
)


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:
        return text.split()


def invocations_in(text: str, where: str) -> Iterator[Invocation]:
    """`imagesmith ...` commands in a piece of shell-like text (one or more lines)."""
    segments = [s for line in text.splitlines() for s in _SEPARATORS.split(line)]
    for segment in segments:
        segment = _LEADERS.sub("", segment.strip())
        words = _words(segment)
        if not words or Path(words[0]).name != "imagesmith":
            continue
        rest = words[1:]
        if not rest:
            continue
        if not re.match(r"^(?:[a-z][a-z-]*|--?[A-Za-z])", rest[0]):
            continue  # `imagesmith 0.1.0` (output), not a command
        command = "" if rest[0].startswith("-") else rest[0]
        options = []
        for word in rest if not command else rest[1:]:
            if word == "--":
                break
            word = word.strip("[](),.")
            if re.match(r"^--?[A-Za-z]", word):
                options.append(word.split("=", 1)[0])
        yield Invocation(where, command, tuple(options), tuple(rest))


def _code_texts(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, code) for fenced blocks, inline code and the README's command table."""
    fenced = False
    table_of_commands = False
    pending = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            pending = ""
            continue
        if fenced:
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            yield number, pending + line
            pending = ""
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cells and cells[0].lower() == "command":
                table_of_commands = True
                continue
            if table_of_commands and cells and cells[0].startswith("`"):
                yield number, "imagesmith " + cells[0].strip("`").replace("\\|", "|")
                continue
        else:
            table_of_commands = False
        for span in re.findall(r"`([^`]+)`", line):
            yield number, span


def markdown_invocations(path: Path) -> list[Invocation]:
    rel = path.relative_to(REPO)
    found: list[Invocation] = []
    for number, code in _code_texts(path):
        found += invocations_in(code, f"{rel}:{number}")
    return found


def file_invocations(path: Path) -> list[Invocation]:
    """Invocations in a shell script or YAML file, line by line (continuations joined)."""
    rel = path.relative_to(REPO)
    found: list[Invocation] = []
    pending, start = "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not pending:
            start = number
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        found += invocations_in(pending + line, f"{rel}:{start}")
        pending = ""
    return found


def all_invocations() -> list[Invocation]:
    found: list[Invocation] = []
    for path in MARKDOWN:
        found += markdown_invocations(path)
    for path in sorted(CI.glob("*")):
        found += file_invocations(path)
    return found


# -- the checks --------------------------------------------------------------------------------


def test_the_parser_finds_invocations_and_ignores_prose() -> None:
    text = (
        "imagesmith lock env.toml --check && imagesmith build env.toml --engine docker\n"
        "FROM imagesmith/debian:bookworm\n"
        "# Generated by imagesmith from env.toml\n"
        "imagesmith 0.1.0\n"
        "$ .venv/bin/imagesmith manifest env.toml -o job.yaml | head\n"
        "DIGEST=$(imagesmith build env.toml --json)\n"
    )
    found = [
        (i.command, i.options) for line in text.splitlines() for i in invocations_in(line, "x")
    ]
    assert found == [
        ("lock", ("--check",)),
        ("build", ("--engine",)),
        ("manifest", ("-o",)),
        ("build", ("--json",)),
    ]


def test_the_parser_reads_the_readme_command_table(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "| command | what it does |\n| --- | --- |\n"
        "| `lock env.toml [--check] [-P NAME]` | resolves |\n"
        "| `manifest env.toml [--kind pod\\|job]` | the Job |\n\n"
        "Prose with `imagesmith push --to X` inline.\n"
    )
    found = []
    for _, code in _code_texts(page):
        found += [(i.command, i.options) for i in invocations_in(code, "x")]
    assert found == [("lock", ("--check", "-P")), ("manifest", ("--kind",)), ("push", ("--to",))]


def problems_in(invocations: list[Invocation]) -> list[str]:
    """One line per command or option an invocation names that the CLI does not have."""
    subcommands = commands()
    problems = []
    for inv in invocations:
        if inv.command == "":
            allowed = global_options()
            problems += [f"{inv}: no global option {o}" for o in inv.options if o not in allowed]
            continue
        if inv.command not in subcommands:
            problems.append(f"{inv}: no command {inv.command!r}")
            continue
        options = known_options(subcommands[inv.command])
        for option in inv.options:
            if option not in options:
                problems.append(f"{inv}: `imagesmith {inv.command}` has no option {option}")
    return problems


def test_every_documented_command_and_option_exists() -> None:
    invocations = all_invocations()
    assert len(invocations) > 40, "the docs name far more commands than that: parser broken?"
    assert problems_in(invocations) == []


def test_a_missing_command_or_option_is_caught() -> None:
    text = "imagesmith build env.toml --bogus -e docker && imagesmith frobnicate && imagesmith -x"
    assert problems_in(list(invocations_in(text, "doc.md:1"))) == [
        "doc.md:1: imagesmith build env.toml --bogus -e docker: `imagesmith build` has no option --bogus",
        "doc.md:1: imagesmith frobnicate: no command 'frobnicate'",
        "doc.md:1: imagesmith -x: no global option -x",
    ]


def test_every_command_is_documented() -> None:
    documented = {inv.command for inv in all_invocations()}
    missing = sorted(set(commands()) - documented)
    assert missing == [], f"commands no document shows: {missing}"


# -- docs/spec.md ------------------------------------------------------------------------------


def _generator() -> Any:
    path = DOCS / "gen_spec_reference.py"
    loaded = importlib.util.spec_from_file_location("gen_spec_reference", path)
    assert loaded is not None and loaded.loader is not None
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


def test_spec_reference_is_up_to_date() -> None:
    generator = _generator()
    expected = generator.render()
    assert (DOCS / "spec.md").read_text(encoding="utf-8") == expected, (
        "docs/spec.md is out of date: run .venv/bin/python docs/gen_spec_reference.py"
    )
    assert generator.main(["--check"]) == 0


def test_spec_reference_names_every_schema_key() -> None:
    import json

    schema = json.loads((REPO / "schemas" / "env.schema.json").read_text())
    text = (DOCS / "spec.md").read_text()

    def keys(node: dict[str, Any]) -> Iterator[str]:
        for key, child in node.get("properties", {}).items():
            yield key
            yield from keys(child)
            if isinstance(child.get("items"), dict):
                yield from keys(child["items"])

    for key in keys(schema):
        assert f"| `{key}` |" in text or f"| `[{key}]` |" in text, key


# -- the CI examples ---------------------------------------------------------------------------


def _commands(invocations: list[Invocation]) -> list[tuple[str, tuple[str, ...]]]:
    """(command, its options) in order; `imagesmith --version` checks are left out."""
    return [(i.command, tuple(sorted(set(i.options)))) for i in invocations if i.command]


def _github_invocations() -> list[Invocation]:
    path = CI / "github-actions.yml"
    workflow = yaml.safe_load(path.read_text())
    assert isinstance(workflow, dict) and "jobs" in workflow
    found: list[Invocation] = []
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            script = step.get("run", "")
            found += invocations_in(
                script.replace("\\\n", " "), f"{path.name}: {step.get('name', '')}"
            )
    return found


def _gitlab_invocations() -> list[Invocation]:
    path = CI / "gitlab-ci.yml"
    pipeline = yaml.safe_load(path.read_text())
    assert isinstance(pipeline, dict) and "stages" in pipeline
    found: list[Invocation] = []
    jobs = [
        (name, job)
        for name, job in pipeline.items()
        if isinstance(job, dict) and "script" in job and not name.startswith(".")
    ]
    order = {stage: index for index, stage in enumerate(pipeline["stages"])}
    for name, job in sorted(jobs, key=lambda item: order[item[1]["stage"]]):
        for line in [*job.get("before_script", []), *job["script"]]:
            found += invocations_in(str(line).replace("\\\n", " "), f"{path.name}: {name}")
    return found


def test_ci_examples_parse_and_run_the_same_commands_as_pipeline_sh() -> None:
    script = _commands(file_invocations(CI / "pipeline.sh"))
    commands = [command for command, _ in script]
    for wanted in ("lock", "build", "verify", "push", "manifest"):
        assert wanted in commands, wanted
    assert ("lock", ("--check",)) in script
    assert _commands(_github_invocations()) == script
    assert _commands(_gitlab_invocations()) == script


@pytest.mark.parametrize("name", ["github-actions.yml", "gitlab-ci.yml"])
def test_ci_examples_take_registry_credentials_from_the_secret_store(name: str) -> None:
    text = (CI / name).read_text()
    for variable in ("IMAGESMITH_REGISTRY_USER", "IMAGESMITH_REGISTRY_PASSWORD"):
        assert variable in text
    assert "--password" not in text  # never on a command line
    if name == "github-actions.yml":
        assert "${{ secrets." in text and "actions/upload-artifact@" in text
    else:
        assert "artifacts:" in text
