"""The documentation cannot name a command or option imagesmith does not have.

Every `imagesmith <command> ... --option` in README.md, docs/*.md, the recipes' READMEs and
examples/ci/ (code blocks, inline code, the README's command table, YAML and shell) is checked
against the CLI's real command tree (Typer's click group). docs/spec.md must be what
docs/gen_spec_reference.py makes from the schema today, and the CI examples must run the
same imagesmith commands as examples/ci/pipeline.sh, which tests/integration runs for real.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
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


# -- the commands the docs show, run ----------------------------------------------------------
#
# Every `imagesmith` command in a fenced block of the docs that needs no engine is run here,
# in a folder set up as the page describes (the spec and scripts the page shows; a lock and
# a push record stand in for `lock` and `push`, which need an engine and a registry), and its
# exit code and output are compared with what the page says. RUN_HERE lists them (`run`
# refuses any other), NEEDS_AN_ENGINE the ones that need an engine; a command the docs
# show in neither list fails test_every_engine_free_command_in_the_docs_is_run.

from typer.testing import CliRunner  # noqa: E402

from imagesmith.model.lock import write_lock  # noqa: E402
from imagesmith.model.records import PushRecord, push_record_path, write_record  # noqa: E402
from tests.fixtures.make_lock import make_lock  # noqa: E402

runner = CliRunner()
PUSHED = "sha256:" + "7e" * 32
ENGINE_FREE = {"validate", "init", "render", "manifest", "sbatch", ""}
NEEDS_AN_ENGINE = {
    "README.md: imagesmith lock lab/env.toml",
    "docs/lock.md: imagesmith lock env.toml",  # in the lock's own header comment
    "docs/slurm-to-kubernetes.md: imagesmith lock env.toml --engine docker",
}
RUN_HERE = {
    "README.md: imagesmith init lab/ --recipe lab-analysis",
    "README.md: imagesmith validate lab/env.toml",
    "README.md: imagesmith manifest lab/env.toml -o job.yaml",
    "docs/ci.md: imagesmith lock env.toml --check --json",
    "docs/reproducibility.md: imagesmith lock env.toml --check",
    "docs/slurm-to-kubernetes.md: imagesmith validate env.toml",
    "docs/slurm-to-kubernetes.md: imagesmith manifest env.toml --from-sbatch bad-mem.sh",
    "docs/slurm-to-kubernetes.md: imagesmith manifest env.toml --from-sbatch fit.sh -o job.yaml",
    "docs/slurm-to-kubernetes.md: imagesmith manifest env.toml --from-sbatch fit.sh --kind pod "
    "--for-podman -o pod.yaml 2>/dev/null",
    "docs/slurm-to-kubernetes.md: imagesmith sbatch env.toml --runtime apptainer",
    "recipes/jupyter/README.md: imagesmith manifest env.toml -o jupyter.yaml",
}


def fenced_blocks(path: Path) -> list[tuple[str, list[str]]]:
    """(language, lines) of each fenced block of a page."""
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    language = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            if current is None:
                language, current = line.strip()[3:], []
            else:
                blocks.append((language, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def engine_free_invocations() -> set[str]:
    found = set()
    for path in MARKDOWN:
        for _, lines in fenced_blocks(path):
            for line in lines:
                for inv in invocations_in(line, ""):
                    engine_free = inv.command in ENGINE_FREE or "--help" in inv.options
                    if inv.command == "lock" and "--check" in inv.options:
                        engine_free = True
                    if engine_free or inv.command == "lock":
                        found.add(f"{path.relative_to(REPO)}: imagesmith {' '.join(inv.words)}")
    return found


def run(where: str, command: str, *, folder: Path) -> Any:
    """Run `imagesmith COMMAND` (as the page writes it) in `folder`."""
    assert f"{where}: imagesmith {command}" in RUN_HERE, "add it to RUN_HERE"
    words = shlex.split(command.split(" 2>")[0])
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        return runner.invoke(app, words)
    finally:
        os.chdir(cwd)


def transcript(path: Path, command: str) -> list[str]:
    """The lines a page shows after `$ imagesmith COMMAND`, up to the next `$ ` line."""
    for _, lines in fenced_blocks(path):
        for index, line in enumerate(lines):
            if line == f"$ imagesmith {command}":
                rest = lines[index + 1 :]
                end = next((i for i, x in enumerate(rest) if x.startswith("$ ")), len(rest))
                return rest[:end]
    raise AssertionError(f"{path.name} shows no `$ imagesmith {command}`")


def block_after(path: Path, marker: str, language: str = "") -> str:
    """The first fenced block (of `language`) after the line `marker` on a page."""
    text = path.read_text(encoding="utf-8")
    start = text.index(marker)
    fence = "```" + language + "\n"
    begin = text.index(fence, start) + len(fence)
    return text[begin : text.index("```", begin)]


def stand_in_for_lock_and_push(spec: Path, *, uid: int = 10001) -> str:
    """A lock and a push record for `spec`, as `lock` and `push` would leave them."""
    import tomllib

    lock = make_lock(spec)
    write_lock(lock, spec.with_suffix(".lock"))
    data = tomllib.loads(spec.read_text())
    repository = data.get("registry", {}).get("repository", "registry.example.edu/lab/x")
    record = PushRecord(repository, PUSHED, ("1.0.0",), lock.lock_hash, uid, uid)
    write_record(push_record_path(spec), record)
    return lock.lock_hash


def as_the_page_writes_it(text: str, lock_hash: str) -> str:
    """Generated text with the values the pages show as placeholders put back."""
    return (
        text.replace(lock_hash, "sha256:<lock-hash>")
        .replace(lock_hash[7:70], "<lock-hash: its first 63 hex digits>")
        .replace(PUSHED, "sha256:<digest>")
        .replace(PUSHED.replace(":", "-"), "sha256-<digest>")
    )


def test_the_readme_tour_runs(tmp_path: Path) -> None:
    where = "README.md"
    init = run(where, "init lab/ --recipe lab-analysis", folder=tmp_path)
    assert init.exit_code == 0, init.output
    assert (tmp_path / "lab" / "env.toml").is_file() and (tmp_path / "lab" / "README.md").is_file()
    valid = run(where, "validate lab/env.toml", folder=tmp_path)
    assert valid.exit_code == 0 and valid.stdout.startswith("lab/env.toml: valid (lab-analysis")
    stand_in_for_lock_and_push(tmp_path / "lab" / "env.toml")
    manifest = run(where, "manifest lab/env.toml -o job.yaml", folder=tmp_path)
    assert manifest.exit_code == 0, manifest.output
    job = (tmp_path / "job.yaml").read_text()
    assert f"@{PUSHED}" in job
    # The reference spec's Job runs as shipped: the script it copies in, and no GPU.
    assert "- /opt/lab/train.py" in job and "gpu" not in job


@pytest.fixture
def fit_model(tmp_path: Path) -> tuple[Path, str]:
    """The worked example of slurm-to-kubernetes.md: its env.toml, fit.sh and bad-mem.sh."""
    page = DOCS / "slurm-to-kubernetes.md"
    (tmp_path / "env.toml").write_text(block_after(page, "`env.toml` (on the local Debian", "toml"))
    script = block_after(page, "### 2. The script, made container-ready", "bash")
    (tmp_path / "fit.sh").write_text(script)
    # bad-mem.sh is not shown; the page quotes the error for its third line
    (tmp_path / "bad-mem.sh").write_text("#!/bin/bash\n#SBATCH -J bad\n#SBATCH --mem=lots\ntrue\n")
    return tmp_path, stand_in_for_lock_and_push(tmp_path / "env.toml")


def test_slurm_to_kubernetes_commands_print_what_the_page_shows(
    fit_model: tuple[Path, str],
) -> None:
    folder, lock_hash = fit_model
    page = DOCS / "slurm-to-kubernetes.md"
    where = "docs/slurm-to-kubernetes.md"

    valid = run(where, "validate env.toml", folder=folder)
    assert valid.stdout.splitlines() == transcript(page, "validate env.toml")

    bad = run(where, "manifest env.toml --from-sbatch bad-mem.sh", folder=folder)
    assert bad.exit_code == 2
    assert bad.stderr.splitlines() == transcript(page, "manifest env.toml --from-sbatch bad-mem.sh")

    command = "manifest env.toml --from-sbatch fit.sh -o job.yaml"
    job = run(where, command, folder=folder)
    assert job.exit_code == 0, job.output
    assert job.stderr.splitlines() == transcript(page, command)
    shown = block_after(page, "`job.yaml`, as written:", "yaml")
    assert as_the_page_writes_it((folder / "job.yaml").read_text(), lock_hash) == shown

    pod = "manifest env.toml --from-sbatch fit.sh --kind pod --for-podman -o pod.yaml 2>/dev/null"
    assert run(where, pod, folder=folder).exit_code == 0
    assert "kind: Pod" in (folder / "pod.yaml").read_text()

    sbatch = run(where, "sbatch env.toml --runtime apptainer", folder=folder)
    assert sbatch.exit_code == 0, sbatch.output
    expected = transcript(page, "sbatch env.toml --runtime apptainer")
    assert as_the_page_writes_it(sbatch.stdout, lock_hash).splitlines() == expected


def test_lock_check_prints_what_the_pages_show(fit_model: tuple[Path, str]) -> None:
    folder, _ = fit_model
    check = run("docs/reproducibility.md", "lock env.toml --check", folder=folder)
    assert check.exit_code == 0, check.output
    assert check.stdout.splitlines() == transcript(
        DOCS / "reproducibility.md", "lock env.toml --check"
    )
    as_json = run("docs/ci.md", "lock env.toml --check --json", folder=folder)
    assert as_json.exit_code == 0 and '"fresh": true' in as_json.stdout


def test_recipe_readmes_commands_run(tmp_path: Path) -> None:
    init = run("README.md", "init lab/ --recipe lab-analysis", folder=tmp_path)
    assert init.exit_code == 0
    jupyter = tmp_path / "jupyter"
    assert runner.invoke(app, ["init", str(jupyter), "--recipe", "jupyter"]).exit_code == 0
    stand_in_for_lock_and_push(jupyter / "env.toml")
    result = run("recipes/jupyter/README.md", "manifest env.toml -o jupyter.yaml", folder=jupyter)
    assert result.exit_code == 0, result.output
    assert "JUPYTER_TOKEN" in (jupyter / "jupyter.yaml").read_text()


def test_every_engine_free_command_in_the_docs_is_run() -> None:
    shown = engine_free_invocations()
    missing = sorted(shown - RUN_HERE - NEEDS_AN_ENGINE)
    assert missing == [], f"commands the docs show that no test runs: {missing}"
    gone = sorted((RUN_HERE | NEEDS_AN_ENGINE) - shown)
    assert gone == [], f"commands no page shows any more: {gone}"


# -- every --flag the docs name ----------------------------------------------------------------

#: Flags the pages name that belong to other programs (sbatch, kubectl, pip, apt...).
OTHER_PROGRAMS_FLAGS = {
    "--containall",
    "--container-env",
    "--container-workdir",
    "--env",
    "--nv",
    "--rocm",
    "--no-config",
    "--array",
    "--cpus-per-task",
    "--error",
    "--gpus",
    "--gpus-per-node",
    "--gpus-per-task",
    "--gres",
    "--job-name",
    "--mail-type",
    "--mem",
    "--mem-per-cpu",
    "--mem-per-gpu",
    "--nodes",
    "--ntasks",
    "--ntasks-per-node",
    "--output",
    "--partition",
    "--time",
    "--no-install-recommends",
    "--strict",
    "--generate-hashes",
    "--hash",  # pip's, in a requirements file
    "--index-url",
    "--network",
    "--privileged",
    "--timestamp",
    "--format",
    "--skip-download",
    "--framework",
    "--from-literal",
    "--for",
    "--timeout",
    "--cleanenv",
    "--pwd",
    "--python-version",
    "--python-platform",
    "--password",
    "--variant",
    "--isolation",
    "--tls-verify",
    "--storage-driver",
    "--rm",
    "--all",
    "--no-trunc",
    "--quiet",
}


def flags_named_in_the_docs() -> set[str]:
    """Every `--flag` that stands alone in inline code (`--relock`, `--kind pod`)."""
    found = set()
    for path in MARKDOWN:
        for line in path.read_text(encoding="utf-8").splitlines():
            for span in re.findall(r"`([^`]+)`", line):
                match = re.match(r"^(--[a-z][a-z0-9-]*)(?:[ =]|$)", span)
                if match:
                    found.add(match.group(1))
    return found


def test_every_flag_the_docs_name_exists() -> None:
    ours = set().union(*(known_options(c) for c in commands().values()), global_options())
    named = flags_named_in_the_docs()
    assert {"--relock", "--check", "--json", "--for-podman"} <= named, "parser broken?"
    unknown = sorted(named - ours - OTHER_PROGRAMS_FLAGS)
    assert unknown == [], f"the docs name flags no imagesmith command has: {unknown}"


# -- the example lock in docs/lock.md ----------------------------------------------------------


def test_the_example_lock_in_lock_md_is_read_by_the_current_code(tmp_path: Path) -> None:
    """The page's lock is shortened (its `# ...` lines), so its lock_hash is made anew for the
    cut content; everything else goes through the schema and the parser as written, and it
    is in the format this imagesmith writes, locked from the worked example's env.toml."""
    import jsonschema
    import tomllib

    from imagesmith import __version__
    from imagesmith.model.lock import (
        LOCK_FORMAT,
        content_hash,
        format_problem,
        lock_schema,
        parse_lock,
    )
    from imagesmith.model.spec_loading import load_spec

    text = block_after(DOCS / "lock.md", "A real lock, shortened", "toml")
    data = tomllib.loads(text)
    jsonschema.Draft202012Validator(lock_schema()).validate(data)
    stored = data.pop("lock_hash")
    text = text.replace(stored, content_hash(data))
    lock = parse_lock(text, path=Path("env.lock"))
    assert lock.base.local and lock.spec_data["name"] == "fit-model"
    python3 = [p for p in lock.apt.packages if p.name == "python3"]
    assert python3 and python3[0].requested, "lock.md says the python3 it adds is requested"
    assert lock.python is not None and lock.python.packages[0].name == "numpy"
    # The current format and version: what `imagesmith lock` writes today, and builds.
    assert (lock.format, lock.imagesmith_version) == (LOCK_FORMAT, __version__)
    assert format_problem(lock, subject="env.lock") is None
    # Locked from the worked example of slurm-to-kubernetes.md, as the page says.
    page = DOCS / "slurm-to-kubernetes.md"
    (tmp_path / "env.toml").write_text(block_after(page, "`env.toml` (on the local Debian", "toml"))
    spec = load_spec(tmp_path / "env.toml")
    assert lock.spec_hash == spec.spec_hash and dict(lock.spec_data) == spec.image_data
    # The packages the spec asks for, and the python3 and python3-venv a [python] table adds,
    # carry requested = true; the rest of the closure has no requested key.
    requested = {p["name"] for p in data["apt"]["packages"] if p.get("requested")}
    assert requested == {"python3", "python3-venv"}


# -- the reference recipe shows every key ------------------------------------------------------


def test_the_reference_recipe_shows_every_key_and_its_commented_keys_are_valid(
    tmp_path: Path,
) -> None:
    """README.md and docs/spec.md say recipes/lab-analysis/env.toml shows every key: with
    its commented-out keys switched on, it names every key of the schema and validates."""
    import json

    from imagesmith.model.spec_loading import load_spec

    text = (REPO / "recipes" / "lab-analysis" / "env.toml").read_text()
    on = re.sub(r"(?m)^# ((?:[a-z0-9_]+|[A-Z_]+) = |\[\[?[a-z_.]+\]\]?)", r"\1", text)
    (tmp_path / "requirements.txt").write_text("idna\n")
    shutil.copy(REPO / "recipes" / "lab-analysis" / "train.py", tmp_path / "train.py")
    (tmp_path / "cran.asc").write_bytes(
        (REPO / "tests" / "fixtures" / "keys" / "lab.asc").read_bytes()
    )
    # [apt] snapshot and mirror exclude each other: each is valid with all the rest.
    specs = []
    for left_out in ("snapshot", "mirror"):
        (tmp_path / "env.toml").write_text(re.sub(rf"(?m)^{left_out} = .*$", "", on))
        specs.append(load_spec(tmp_path / "env.toml"))
    spec = specs[0]

    def keys(node: dict[str, Any], data: Any, path: str) -> Iterator[str]:
        for key, child in node.get("properties", {}).items():
            if key not in data:
                yield f"{path}.{key}"
                continue
            value = data[key]
            items = child.get("items")
            if isinstance(items, dict) and isinstance(value, list) and value:
                # A list of tables shows each key in one of its items.
                value = {k: v for item in value if isinstance(item, dict) for k, v in item.items()}
                child = items
            if isinstance(value, dict):
                yield from keys(child, value, f"{path}.{key}")

    schema = json.loads((REPO / "schemas" / "env.schema.json").read_text())
    missing = [set(keys(schema, each.data, "$")) for each in specs]
    assert missing[0] & missing[1] == set()
    assert spec.data["job"]["secret_env"]["API_TOKEN"] == {"secret": "lab-api", "key": "token"}
