"""The `imagesmith` command. Only this module reads argv and turns errors into exit codes."""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import click
import typer
from click.core import ParameterSource
from typer.models import CommandInfo

from imagesmith import __version__
from imagesmith.errors import ImagesmithError, InputError, NoLocalImageError, OperationError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.engine.base import Engine, ImageInfo
    from imagesmith.model.lock import Lock
    from imagesmith.model.records import PushRecord
    from imagesmith.model.spec import Spec
    from imagesmith.pipeline.build import BuildResult
    from imagesmith.pipeline.catalogue import Outcome
    from imagesmith.reports import Report

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="imagesmith",
    help=(
        "Turn a lab's env.toml into a container image anyone can rebuild bit for bit, "
        "and into the Kubernetes or Slurm job that runs it."
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    # Rich help: argument help shown, paragraphs reflowed, colour on a terminal only.
    # Help texts go through rich markup, so a literal [ is written \\[ ("\\[registry]").
    rich_markup_mode="markdown",
)

SpecArg = Annotated[
    Path,
    typer.Argument(help="The lab's env.toml.", show_default=True),
]


#: `scheme://user:password@`: what a tool's message may quote of a proxy or index URL.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]+@")


def redacted(line: str) -> str:
    """`line` with the user and password of every URL in it replaced by `***`: a message
    quoted from pip, uv or an engine must not put a host credential in a log."""
    return _URL_USERINFO.sub(r"\1***@", line)


# -- what the user reads: plain lines, colour on a terminal, JSON for CI ----------------------


def colour_wanted(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def err(line: str, *, colour: str | None = None) -> None:
    """One line on standard error, in `colour` when that is wanted there."""
    use = colour is not None and colour_wanted(click.get_text_stream("stderr"))
    line = redacted(line)
    typer.echo(typer.style(line, fg=colour) if use else line, err=True, color=use)


def warn(line: str) -> None:
    err(f"warning: {line}", colour="yellow")


def print_json(report: Report) -> None:
    typer.echo(json.dumps(report, sort_keys=True, default=str))


def report_problems(command: str, exc: ImagesmithError, *, as_json: bool) -> None:
    """The problems on standard error (red, `error: ` before a single one); JSON if asked."""
    lines = exc.lines()
    prefix = "error: " if not isinstance(exc, InputError) or len(lines) == 1 else ""
    for index, line in enumerate(lines):
        err(_shortened(f"{prefix if index == 0 else ''}{line}"), colour="red")
    if as_json:
        from imagesmith.reports import failure

        print_json(failure(command, exc.exit_code, lines))


#: A problem line quotes the input it is about; past this it is cut (a 4 MB line helps no one).
MAX_LINE = 1000


def _shortened(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 4] + " ..."


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print an expected failure as one line per problem and exit with its code.

    With `--json` (a keyword `as_json`), the failure is also one JSON object on stdout.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json"))
        try:
            return command(*args, **kwargs)
        except ImagesmithError as exc:
            if isinstance(exc, NoLocalImageError):
                from imagesmith.engine import look_in_the_other_engine

                exc = look_in_the_other_engine(exc)
            report_problems(command.__name__, exc, as_json=as_json)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted; nothing was left half-done")
            raise typer.Exit(130) from None

    return wrapper


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout (schemas/cli/COMMAND.json); failures too.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imagesmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Turn a lab's env.toml into a reproducible image and the job that runs it."""


@app.command()
@reports_errors
def validate(spec_path: SpecArg = Path("env.toml"), as_json: JsonOpt = False) -> None:
    """Check env.toml and list every problem in it, one per line (exit 2 if any)."""
    from imagesmith.model.spec import load_spec
    from imagesmith.reports import validate_report

    spec = load_spec(spec_path)
    if as_json:
        print_json(validate_report(spec))
        return
    python = len(spec.python.requirements) if spec.python else 0
    typer.echo(
        f"{spec_path}: valid ({spec.name}:{spec.version}, {len(spec.apt_packages)} apt packages, "
        f"{python} Python requirements)"
    )


@app.command()
@reports_errors
def render(
    spec_path: SpecArg = Path("env.toml"),
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the Containerfile here instead of printing it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the Containerfile that env.lock pins (needs an up-to-date lock; no engine)."""
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec import load_spec
    from imagesmith.render.containerfile import render as render_lock
    from imagesmith.reports import render_report

    lock = fresh_lock(load_spec(spec_path))
    text = render_lock(lock)
    _emit(text, output, report=render_report(lock, output=output, text=text) if as_json else None)


@app.command()
@reports_errors
def init(
    recipe: Annotated[
        str, typer.Option("--recipe", "-r", help="The recipe to start from (see --list).")
    ] = "python-minimal",
    directory: Annotated[
        Path, typer.Argument(help="Folder to copy the recipe into (env.toml, README.md, ...).")
    ] = Path("."),
    list_recipes: Annotated[
        bool, typer.Option("--list", help="List the recipes and exit.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite files of the recipe that exist already.")
    ] = False,
) -> None:
    """Copy one of the ready recipes into a folder: its env.toml, README.md and other files."""
    from imagesmith.recipebook import available_recipes, copy_recipe

    if list_recipes:
        for name, summary in available_recipes().items():
            typer.echo(f"{name:16} {summary}")
        return

    made = _make_folders(directory)
    try:
        copied = copy_recipe(recipe, directory, force=force)
    except BaseException as exc:
        for folder in reversed(made):  # leave nothing behind: only the folders made here
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(exc, OSError):
            from imagesmith.model.lock import write_error

            raise write_error(Path(exc.filename or directory), exc) from None
        raise
    from imagesmith.cluster.kube_build import BUILDER_RECIPE, write_wheel

    if recipe == BUILDER_RECIPE:  # the builder installs the imagesmith that made it
        copied.append(write_wheel(directory))
    written = [as_typed(path.resolve()) for path in copied]
    typer.echo(f"wrote {', '.join(written)} from recipe {recipe}")
    readme = [path for path in written if path.endswith("README.md")]
    typer.echo(
        f"  next: {'read ' + readme[0] + ', then ' if readme else ''}imagesmith build {written[0]}"
    )


def _make_folders(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; the folders made, outermost first."""
    missing = [folder for folder in (directory, *directory.parents) if not os.path.lexists(folder)]
    missing.reverse()
    for folder in missing:
        try:
            folder.mkdir()
        except OSError as exc:
            for made in reversed(missing[: missing.index(folder)]):
                with contextlib.suppress(OSError):
                    made.rmdir()
            if exc.errno == errno.ENOTDIR:
                raise InputError(
                    f"cannot create {folder}: {folder.parent} is not a folder"
                ) from None
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENOENT:
                reason = f"{folder.parent} does not take new folders ({reason})"
            raise OperationError(f"cannot create {folder}: {reason}") from None
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    return missing


EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        "-e",
        metavar="ENGINE",
        help=(
            "docker, podman, auto (Docker if a daemon answers, else podman), or an engine "
            "a package registers (entry points: imagesmith.engines)."
        ),
        envvar="IMAGESMITH_ENGINE",
    ),
]
PlatformOpt = Annotated[
    str,
    typer.Option(
        "--platform",
        metavar="OS/ARCH",
        help="Target platform of the image (linux/amd64, linux/arm64).",
    ),
]


def chosen_engine(name: str) -> Engine:
    """The engine `name` names, said once on stderr with why: `engine: podman (--engine)`."""
    from imagesmith.engine import choose_engine

    engine, why = choose_engine(name)
    if not why:
        context = click.get_current_context(silent=True)
        source = context.get_parameter_source("engine") if context is not None else None
        why = "IMAGESMITH_ENGINE" if source is ParameterSource.ENVIRONMENT else "--engine"
    err(f"engine: {engine.name} ({why})")
    return engine


def _engine_factory(name: str) -> Callable[[], Engine]:
    """The engine, chosen only when the command needs one (an unchanged lock does not)."""
    return functools.cache(lambda: chosen_engine(name))


@app.command()
@reports_errors
def lock(
    spec_path: SpecArg = Path("env.toml"),
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help=(
                "Only check that env.lock matches env.toml (for CI): exit 0 if it does, "
                "1 if it is stale or missing, 2 if it cannot be read."
            ),
        ),
    ] = False,
    upgrade: Annotated[
        bool, typer.Option("--upgrade", help="Re-resolve everything to the newest the spec allows.")
    ] = False,
    upgrade_package: Annotated[
        list[str] | None,
        typer.Option(
            "--upgrade-package",
            "-P",
            metavar="NAME",
            help="Re-resolve this Python package only (repeatable).",
        ),
    ] = None,
    engine: EngineOpt = "auto",
    platform: PlatformOpt = "linux/amd64",
    as_json: JsonOpt = False,
) -> None:
    """Pin everything the build will read into env.lock: base digest, apt closure, Python hashes.

    Re-running on an unchanged spec changes nothing and needs no network.
    """
    from imagesmith.model.spec import load_spec

    spec = load_spec(spec_path)
    lock_path = spec.lock_path
    if check:
        check_lock(spec, as_json=as_json)
        return
    # Only now: resolving needs the engines' modules, which --check (CI's check) does not.
    from imagesmith.locking.resolve import lock_spec
    from imagesmith.model.lock import pins_to_keep, read_lock, write_lock
    from imagesmith.reports import lock_report

    previous = pins_to_keep(read_lock(lock_path) if lock_path.exists() else None, platform)
    started = time.monotonic()
    new = lock_spec(
        spec,
        engine=_engine_factory(engine),
        platform=platform,
        previous=previous,
        upgrade=upgrade,
        upgrade_packages=upgrade_package or (),
        on_line=err,
    )
    changed = write_lock(new, lock_path)
    changes = lock_diff(previous, new)
    if previous is not None and previous.format != new.format:
        changes.insert(
            0,
            f"lock format {previous.format or 'none'} (imagesmith {previous.imagesmith_version})"
            f" → {new.format} (imagesmith {new.imagesmith_version}): the image gets a new digest",
        )
    seconds = time.monotonic() - started
    if as_json:
        print_json(
            lock_report(new, path=lock_path, written=changed, changes=changes, seconds=seconds)
        )
        return
    for line in changes:
        typer.echo(line)
    python = len(new.python.packages) if new.python else 0
    verb = "wrote" if changed else "unchanged:"
    typer.echo(
        f"{verb} {as_typed(lock_path)} ({len(new.apt.packages)} apt packages, {python} Python "
        f"distributions, {seconds:.1f} s)"
    )


def check_lock(spec: Spec, *, as_json: bool) -> None:
    """`lock --check`: exit 0 when the lock matches the spec, 1 when stale or missing.

    A lock that cannot be read at all (hand-edited, damaged, another format) is a LockError:
    exit 2, like every other command that reads it.
    """
    from imagesmith.errors import LockFormatError
    from imagesmith.model.lock import check_format, read_lock, stale_reason
    from imagesmith.reports import lock_check_report

    lock_path = spec.lock_path
    the_lock = read_lock(lock_path) if lock_path.exists() else None
    fix = f"run `imagesmith lock {as_typed(spec.path)}`"
    if the_lock is None:
        problem: str | None = f"{as_typed(lock_path)} does not exist; {fix}"
    else:
        try:
            check_format(the_lock, spec)
            reason = stale_reason(spec, the_lock)
            problem = f"{reason}; {fix}" if reason else None
        except LockFormatError as exc:
            problem = str(exc)
    if problem is not None:
        err(f"error: {problem}", colour="red")
    if as_json:
        print_json(lock_check_report(path=lock_path, problem=problem, lock=the_lock))
    elif problem is None:
        typer.echo(f"{lock_path.name} matches {spec.path.name}")
    if problem is not None:
        raise typer.Exit(1)


def lock_diff(old: Lock | None, new: Lock) -> list[str]:
    """`numpy 2.2.6 → 2.3.5`, `+ libfoo 1.2-3`, `- bar 1.0` lines between two locks."""
    if old is None:
        return []
    lines = []
    if old.base.digest != new.base.digest:
        lines.append(f"base {old.base.digest[:19]} → {new.base.digest[:19]}")

    def versions(lock: Lock) -> dict[str, str]:
        found = {f"{p.name}": p.version for p in lock.apt.packages}
        if lock.python:
            found.update({f"{p.name} (python)": p.version for p in lock.python.packages})
        return found

    before, after = versions(old), versions(new)
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            lines.append(f"+ {name} {after[name]}")
        elif name not in after:
            lines.append(f"- {name} {before[name]}")
        elif before[name] != after[name]:
            lines.append(f"{name} {before[name]} → {after[name]}")
    return lines


NoInputsOpt = Annotated[
    bool,
    typer.Option(
        "--no-inputs",
        help="Push the image only, without the input archive (lock-HASH.inputs) it builds from.",
    ),
]


class Progress:
    """Build progress: a live status line on a terminal, plain lines in CI or a pipe."""

    def __init__(self) -> None:
        self.plain = (
            os.environ.get("CI", "").lower() in {"1", "true", "yes"} or not sys.stderr.isatty()
        )
        self._status: Any = None
        if not self.plain:
            from rich.console import Console

            self._status = Console(stderr=True).status("starting")
            self._status.start()

    def __call__(self, line: str) -> None:
        line = redacted(line)
        if self._status is None:
            err(line)
        elif line.startswith(
            (
                "STEP",
                "Step",
                "lock",
                "base",
                "apt",
                "python",
                "canonical",
                "cache",
                "substitut",
                "push",
            )
        ):
            self._status.console.print(line, markup=False, highlight=False)
            self._status.update(line[:100])
        else:
            self._status.update(line[:100])

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()


SpecsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="env.toml files, or folders: a folder stands for FOLDER/env.toml and "
        "FOLDER/*/env.toml (one level down, sorted). Default: env.toml.",
        show_default=False,
    ),
]


@app.command()
@reports_errors
def build(
    spec_paths: SpecsArg = None,
    engine: EngineOpt = "auto",
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="REF", help="Another tag for the image (repeatable)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every step.")] = False,
    relock: Annotated[
        bool, typer.Option("--relock", help="Re-lock first when env.toml changed since env.lock.")
    ] = False,
    as_json: JsonOpt = False,
    platform: PlatformOpt = "linux/amd64",
    then_push: Annotated[
        bool,
        typer.Option(
            "--push",
            help="Push to \\[registry] repository after the build; takes the image from there "
            "instead of building when the registry holds it already (as --substitute).",
        ),
    ] = False,
    substitute: Annotated[
        bool,
        typer.Option(
            "--substitute",
            help="When \\[registry] repository holds this lock's image (tag lock-HASH), "
            "pull it by digest instead of building; else take its system stage from there "
            "when it holds that (tag system-KEY), or build the stage apart for push to store "
            "(docs/catalogue.md: what that trusts).",
        ),
    ] = False,
    no_inputs: NoInputsOpt = False,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs", "-j", min=1, metavar="N", help="Build N specs at once (many specs only)."
        ),
    ] = 1,
    fail_fast: Annotated[
        bool,
        typer.Option("--fail-fast", help="Many specs: after a failure, start no further spec."),
    ] = False,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            metavar="slurm|kubernetes",
            help="Build where the jobs run: `slurm` submits one sbatch job array, one task per "
            "spec, each building with podman on its node and pushing by digest; `kubernetes` "
            "stores each spec's build context in its registry and writes the Job that builds "
            "them (docs/catalogue.md).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="--on kubernetes: write the build Job here (default: stdout).",
        ),
    ] = None,
    builder: Annotated[
        str | None,
        typer.Option(
            "--builder",
            metavar="REF|SPEC",
            help="--on kubernetes: the builder image the pods run (REPO@sha256:...), or the "
            "env.toml of a builder recipe to build and push first; default: imagesmith builds "
            "recipes/imagesmith-builder and pushes it beside the first spec's repository.",
        ),
    ] = None,
    registry_secret: Annotated[
        str | None,
        typer.Option(
            "--registry-secret",
            metavar="NAME",
            help="--on kubernetes: the Secret (kubernetes.io/dockerconfigjson) holding the "
            "registry's credentials: the pods pull the builder and push with it.",
        ),
    ] = None,
    partition: Annotated[
        str | None,
        typer.Option("--partition", "-p", metavar="P", help="--on slurm: the Slurm partition."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="--on slurm: follow the tasks, print each spec's digest, exit non-zero when "
            "one failed.",
        ),
    ] = False,
) -> None:
    """Build the lab's image: lock (if there is no lock yet), render, build, make canonical, tag.

    Prints the image's tags and digest; the digest depends on env.lock alone. Given many
    specs (or a folder), builds each of them, with one line per spec, and exits 0 only when
    all succeeded. With `--on slurm`, the specs build as Slurm array tasks instead; with
    `--on kubernetes`, as the pods of a Job this writes (apply it with `kubectl apply -f`).
    """
    from imagesmith.pipeline.catalogue import spec_paths as named_specs

    arguments = spec_paths or [Path("env.toml")]
    kubernetes_only = {
        "--output": output is not None,
        "--builder": builder is not None,
        "--registry-secret": registry_secret is not None,
    }
    if on == "kubernetes":
        _build_on_kubernetes(
            arguments,
            engine=engine,
            output=output,
            builder=builder,
            registry_secret=registry_secret,
            relock=relock,
            platform=platform,
            no_inputs=no_inputs,
            as_json=as_json,
            refused={
                "--partition": partition is not None,
                "--wait": wait,
                "--jobs": jobs != 1,
                "--fail-fast": fail_fast,
                "--tag": bool(tag),
                "--no-cache": no_cache,
                "--json": as_json and output is None,
            },
        )
        return
    if any(kubernetes_only.values()):
        names = " and ".join(name for name, given in kubernetes_only.items() if given)
        raise InputError(f"{names}: these go with --on kubernetes")
    if on is not None or partition is not None or wait:
        _build_on_slurm(
            arguments,
            on=on,
            partition=partition,
            wait=wait,
            as_json=as_json,
            engine=engine,
            jobs=jobs,
            fail_fast=fail_fast,
            substitute=substitute,
            build_options=[
                *(f"--tag={t}" for t in tag or ()),
                *(["--no-cache"] if no_cache else []),
                *(["--relock"] if relock else []),
                f"--platform={platform}",
                *(["--no-inputs"] if no_inputs else []),
            ],
        )
        return
    if len(arguments) > 1 or arguments[0].is_dir():
        specs = named_specs(arguments)
        _build_many(
            specs,
            engine=chosen_engine(engine),
            extra_tags=tag or (),
            no_cache=no_cache,
            relock=relock,
            platform=platform,
            then_push=then_push,
            substitute=substitute or then_push,
            no_inputs=no_inputs,
            jobs=jobs,
            fail_fast=fail_fast,
            as_json=as_json,
        )
        return
    _build_one(
        arguments[0],
        engine=chosen_engine(engine),
        extra_tags=tag or (),
        no_cache=no_cache,
        relock=relock,
        platform=platform,
        then_push=then_push,
        substitute=substitute or then_push,
        no_inputs=no_inputs,
        as_json=as_json,
    )


def _build_and_push(
    spec_path: Path,
    the_engine: Engine,
    *,
    extra_tags: list[str] | tuple[str, ...],
    no_cache: bool,
    relock: bool,
    platform: str,
    then_push: bool,
    substitute: bool,
    no_inputs: bool,
    on_line: Callable[[str], None],
) -> tuple[BuildResult, str | None]:
    """Build one spec (and push it with `then_push`): the result and the pinned reference.

    An image taken from the registry is there already, with the input archive and the
    attestations of the push that put it there: only its tags and the push record are
    written then.
    """
    from imagesmith.model.spec import load_spec
    from imagesmith.pipeline.build import build as run_build

    spec = load_spec(spec_path)
    result = run_build(
        spec,
        the_engine,
        extra_tags=extra_tags,
        no_cache=no_cache,
        relock=relock,
        platform=platform,
        on_line=on_line,
        substitute=substitute,
    )
    if not then_push:
        return result, None
    from imagesmith.model.lock import read_lock
    from imagesmith.pipeline.push import push as run_push

    taken = result.substituted_from is not None
    pushed = run_push(
        spec,
        read_lock(spec.lock_path),
        inputs=not no_inputs and not taken,
        attestations=not taken,
        on_line=on_line,
    ).pinned
    on_line(f"pushed {pushed}")
    return result, pushed


def _build_one(spec_path: Path, *, engine: Engine, as_json: bool, **options: Any) -> None:
    progress = Progress()
    try:
        result, pushed = _build_and_push(spec_path, engine, on_line=progress, **options)
    finally:
        progress.stop()
    if as_json:
        from imagesmith.reports import build_report

        print_json(build_report(result, pushed=pushed))
        return
    if result.substituted_from is not None:
        typer.echo(
            f"substituted from {result.substituted_from} into {result.engine} "
            f"in {result.seconds:.1f} s (no build step)"
        )
    else:
        typer.echo(f"built {result.tags[0]} with {result.engine} in {result.seconds:.1f} s")
    typer.echo(f"  digest: {result.digest}")
    typer.echo(f"  image:  {result.image_id}")
    typer.echo(f"  tags:   {', '.join(result.tags)}")
    typer.echo(f"  size:   {result.size / 1e6:.1f} MB")
    typer.echo(f"  run it: {result.engine} run --rm -it {result.tags[0]}")


def _build_many(
    specs: list[Path],
    *,
    engine: Engine,
    jobs: int,
    fail_fast: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Build each spec (`jobs` at once); one line per spec on stdout as each ends, the
    progress on stderr prefixed with the spec; exit 0 only when every spec succeeded."""
    import threading

    from imagesmith.engine import get_engine
    from imagesmith.pipeline.catalogue import exit_code, run_all

    said = threading.Lock()

    def build_spec(path: Path) -> tuple[BuildResult, str | None]:
        label = as_typed(path)

        def on_line(line: str) -> None:
            with said:
                err(f"[{label}] {redacted(line)}")

        # An engine of its own per spec: docker-py's client is not shared across threads.
        mine = get_engine(engine.name) if jobs > 1 else engine
        return _build_and_push(path, mine, on_line=on_line, **options)

    def done(outcome: Outcome[tuple[BuildResult, str | None]]) -> None:
        with said:
            if not outcome.ok and not outcome.skipped:
                for line in outcome.problems:
                    err(_shortened(f"[{as_typed(outcome.spec)}] error: {line}"), colour="red")
            if not as_json:
                typer.echo(catalogue_line(outcome))

    outcomes = run_all(specs, build_spec, jobs=jobs, fail_fast=fail_fast, on_done=done)
    code = exit_code(outcomes)
    built = sum(o.ok for o in outcomes)
    err(
        f"{len(outcomes)} specs: {built} built, {sum(o.skipped for o in outcomes)} not started, "
        f"{len(outcomes) - built - sum(o.skipped for o in outcomes)} failed"
    )
    if as_json:
        from imagesmith.reports import catalogue_report

        print_json(catalogue_report(outcomes, exit_code=code))
    if code:
        raise typer.Exit(code)


def _build_on_slurm(
    arguments: list[Path],
    *,
    on: str | None,
    partition: str | None,
    wait: bool,
    as_json: bool,
    engine: str,
    jobs: int,
    fail_fast: bool,
    substitute: bool,
    build_options: list[str],
) -> None:
    """`build --on slurm`: refuse what cannot work (one line each), then submit one array;
    with `wait`, follow it and exit as a many-spec build does."""
    from imagesmith.cluster import slurm_build
    from imagesmith.pipeline.catalogue import exit_code
    from imagesmith.pipeline.catalogue import spec_paths as named_specs

    usage = []
    if on != "slurm":
        usage.append(
            f"--on {on}: not a place imagesmith builds; give --on slurm or --on kubernetes"
            if on is not None
            else "--partition and --wait go with --on slurm"
        )
    context = click.get_current_context(silent=True)
    typed = context is not None and context.get_parameter_source("engine") in (
        ParameterSource.COMMANDLINE,
        None,
    )
    if engine not in ("auto", "podman") and typed:  # IMAGESMITH_ENGINE is for local builds
        usage.append(f"--engine {engine}: --on slurm builds with podman on the nodes")
    if jobs != 1 or fail_fast:
        usage.append("--jobs and --fail-fast: with --on slurm, Slurm decides what runs at once")
    if as_json and not wait:
        usage.append("--json with --on slurm needs --wait (the results come as the tasks end)")
    if usage:
        raise InputError("\n".join(usage))
    del substitute  # every task pushes, so every task substitutes
    sbatch_path = slurm_build.sbatch_program()
    paths = named_specs(arguments)
    specs, problems = _load_specs(paths)
    problems += slurm_build.refusals(specs)
    if problems:
        raise InputError("\n".join(problems))
    resources = slurm_build.TaskResources.for_specs(specs)
    run_folder = Path.cwd() / slurm_build.RUN_FOLDER
    script = slurm_build.render_array(
        [spec.path for spec in specs],
        resources=resources,
        run_folder=run_folder,
        partition=partition,
        imagesmith=slurm_build.imagesmith_command(),
        build_options=build_options,
    )
    submitted = slurm_build.submit(script, run_folder=run_folder, sbatch=sbatch_path, on_line=err)
    job = submitted.job_id
    err(f"{len(specs)} specs as tasks 0-{len(specs) - 1}; {resources.describe()}")
    if not wait:
        typer.echo(f"submitted Slurm job {job}: {len(specs)} specs, one array task each")
        for task, path in enumerate(paths):
            typer.echo(f"  task {task}: {as_typed(path)}")
        typer.echo(f"  script:  {as_typed(submitted.script)}")
        typer.echo(
            f"  logs:    {as_typed(run_folder)}/{job}_TASK.log, "
            f"results: {as_typed(run_folder)}/{job}_TASK.json"
        )
        typer.echo(f"  follow:  squeue --jobs {job}   (or submit with --wait)")
        return

    def done(task: int, outcome: Outcome[dict[str, Any]]) -> None:
        if not as_json:
            typer.echo(slurm_build.outcome_line(task, outcome))
        if not outcome.ok:
            for line in outcome.problems:
                err(_shortened(f"[{as_typed(outcome.spec)}] error: {line}"), colour="red")

    try:
        outcomes = slurm_build.follow(submitted, paths, on_done=done)
    except KeyboardInterrupt:
        err(f"stopped following; job {job} goes on (squeue --jobs {job}, scancel {job})")
        raise typer.Exit(130) from None
    code = exit_code(outcomes)
    built = sum(o.ok for o in outcomes)
    err(f"{len(outcomes)} specs: {built} built, {len(outcomes) - built} failed (job {job})")
    if as_json:
        from imagesmith.reports import envelope, failure

        reports = [
            {
                **(o.value if o.value is not None else failure("build", o.exit_code, o.problems)),
                "spec": as_typed(o.spec),
            }
            for o in outcomes
        ]
        failed = [f"{r['spec']}: failed" for r in reports if not r["ok"]]
        print_json({**envelope("build", exit_code=code, problems=failed), "specs": reports})
    if code:
        raise typer.Exit(code)


def _load_specs(paths: Sequence[Path]) -> tuple[list[Spec], list[str]]:
    """The specs that load, and one line per problem of those that do not, each line
    starting with the spec's path as the user typed it."""
    from imagesmith.model.spec import load_spec

    specs, problems = [], []
    for path in paths:
        try:
            specs.append(load_spec(path))
        except ImagesmithError as exc:
            label = as_typed(path)
            for line in exc.lines():
                for said in (f"{path.name}: ", f"{path}: "):
                    line = line.removeprefix(said)
                problems.append(f"{label}: {line}")
    return specs, problems


def _build_on_kubernetes(
    arguments: list[Path],
    *,
    engine: str,
    output: Path | None,
    builder: str | None,
    registry_secret: str | None,
    relock: bool,
    platform: str,
    no_inputs: bool,
    as_json: bool,
    refused: Mapping[str, bool],
) -> None:
    """`build --on kubernetes`: lock each spec here, store its build context (and the
    inputs and local base a pod needs) in its registry, make sure of the builder image,
    then write the Job. Nothing is built here but the builder, when it must be."""
    from imagesmith.cluster import kube_build
    from imagesmith.inputs.archive import collect_inputs, inputs_tag, push_inputs, push_local_base
    from imagesmith.pipeline.build import ensure_lock
    from imagesmith.pipeline.catalogue import spec_paths as named_specs
    from imagesmith.registry.client import RegistryClient

    why = {
        "--partition": "--partition: not with --on kubernetes (a Slurm option)",
        "--wait": "--wait: not with --on kubernetes (apply the Job, then `kubectl wait`)",
        "--jobs": "--jobs: not with --on kubernetes (the Job runs one pod per spec, all at once)",
        "--fail-fast": "--fail-fast: not with --on kubernetes (each pod builds its spec alone)",
        "--tag": "--tag: not with --on kubernetes (each pod pushes by digest, tags lock-HASH)",
        "--no-cache": "--no-cache: not with --on kubernetes (each pod starts with empty storage)",
        "--json": "--json with --on kubernetes needs -o FILE (the JSON goes to standard output)",
    }
    usage = [why[name] for name, given in refused.items() if given]
    if usage:
        raise InputError("\n".join(usage))
    paths = named_specs(arguments)
    specs, problems = _load_specs(paths)
    problems += kube_build.refusals(specs)
    if registry_secret is not None:
        problems += kube_build.secret_problems(registry_secret)
    if problems:
        raise InputError("\n".join(problems))
    problems = kube_build.unreachable(specs)
    if problems:
        raise OperationError("\n".join(problems))
    the_engine = chosen_engine(engine)
    image = _builder_image(builder, specs[0], the_engine, platform=platform)
    targets = []
    for spec in specs:
        label = as_typed(spec.path)

        def on_line(line: str, label: str = label) -> None:
            err(f"[{label}] {redacted(line)}")

        lock, _ = ensure_lock(spec, the_engine, relock=relock, platform=platform, on_line=on_line)
        repository = kube_build.repository_of(spec)
        push_local_base(the_engine, lock, repository, on_line=on_line)
        client = RegistryClient(repository.registry)
        if not no_inputs and not client.has_manifest(repository.path, inputs_tag(lock)):
            files = collect_inputs(lock, on_line=on_line)
            push_inputs(
                files, repository, lock=lock, subject_digest=None, subject_size=0, on_line=on_line
            )
        context = kube_build.push_context(spec, lock, on_line=on_line)
        on_line(f"context: {context}")
        targets.append(kube_build.BuildTarget(spec, context))
    job = kube_build.render_job(targets, builder=image, registry_secret=registry_secret)
    report = None
    if as_json:
        from imagesmith.reports import envelope

        report = {
            **envelope("build"),
            "job": job["metadata"]["name"],
            "indexed": len(targets) > 1,
            "builder": image,
            "output": as_typed(output) if output is not None else "",
            "specs": [
                {"spec": as_typed(t.spec.path), "context": t.context, "index": index}
                for index, t in enumerate(targets)
            ],
        }
    _emit(kube_build.job_yaml(job, targets), output, report=report)
    where = as_typed(output) if output is not None else "FILE"
    kind = "Indexed Job" if len(targets) > 1 else "Job"
    err(f"{kind} {job['metadata']['name']}: {len(targets)} spec(s), builder {image}")
    err(f"  apply it: kubectl apply -f {where}")


def _builder_image(given: str | None, first: Spec, engine: Engine, *, platform: str) -> str:
    """The builder image the pods run, pinned by digest: `given` as a reference, or built
    and pushed from `given` as a builder spec, or from the packaged recipe."""
    from imagesmith.cluster import kube_build
    from imagesmith.inputs.context import cache_dir

    if given is not None and not (given.endswith(".toml") or Path(given).is_dir()):
        return kube_build.pinned_builder(given)
    if given is None:
        folder = cache_dir() / "builder" / __version__
        with kube_build.builder_lock(folder):
            spec_path = kube_build.prepare_builder(
                folder, repository=kube_build.builder_repository(first)
            )
            return _built_builder(spec_path, engine, platform=platform)
    else:
        spec_path = Path(given) / "env.toml" if Path(given).is_dir() else Path(given)
        if not spec_path.is_file():
            raise InputError(f"--builder {given}: no such builder spec")
        from imagesmith.model.spec import load_spec

        if load_spec(spec_path).registry_repository is None:
            raise InputError(
                f"--builder {given}: set [registry] repository in it (the pods pull the "
                "builder from there)"
            )
        kube_build.write_wheel(spec_path.parent)
    return _built_builder(spec_path, engine, platform=platform)


def _built_builder(spec_path: Path, engine: Engine, *, platform: str) -> str:
    """Build (or take from the registry) and push the builder spec; its pinned reference."""
    err(f"builder: {as_typed(spec_path)}")

    def on_line(line: str) -> None:
        err(f"[builder] {redacted(line)}")

    _, pushed = _build_and_push(
        spec_path,
        engine,
        extra_tags=(),
        no_cache=False,
        relock=True,  # the wheel in it is this imagesmith's: its lock follows
        platform=platform,
        then_push=True,
        substitute=True,
        no_inputs=False,
        on_line=on_line,
    )
    assert pushed is not None, "then_push gives the pinned reference"
    return pushed


def catalogue_line(outcome: Outcome[tuple[BuildResult, str | None]]) -> str:
    """The one line a spec gets in a many-spec build's output."""
    spec = as_typed(outcome.spec)
    if outcome.skipped:
        return f"skipped {spec}: {outcome.problems[0]}"
    if outcome.value is None:
        first = outcome.problems[0] if outcome.problems else "failed"
        return _shortened(f"failed  {spec}: {first} (exit {outcome.exit_code})")
    result, pushed = outcome.value
    how = f"from {result.substituted_from}" if result.substituted_from else f"with {result.engine}"
    verb = "substituted" if result.substituted_from else "built"
    line = (
        f"ok      {spec}: {verb} {result.tags[0]} {how} in {result.seconds:.1f} s, {result.digest}"
    )
    return line + (f", pushed {pushed}" if pushed else "")


@app.command()
@reports_errors
def base(
    suite: Annotated[
        str, typer.Option("--suite", metavar="SUITE", help="Debian suite to bootstrap.")
    ] = "bookworm",
    engine: EngineOpt = "auto",
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="REF",
            help="Tag for the image (default imagesmith/debian:SUITE).",
        ),
    ] = None,
    mirror: Annotated[
        str | None, typer.Option("--mirror", help="Debian mirror URL (default deb.debian.org).")
    ] = None,
    epoch: Annotated[
        int | None,
        typer.Option(
            "--epoch",
            help="SOURCE_DATE_EPOCH of the root filesystem (default: the suite's release date).",
        ),
    ] = None,
) -> None:
    """Make a Debian base image from Debian's own packages, without any registry.

    Runs mmdebstrap (deterministic with SOURCE_DATE_EPOCH) and imports the root
    filesystem with Containerfile.base; specs can then use it as base.image.
    """
    from imagesmith.model.spec import url_has_credentials
    from imagesmith.pipeline.debian_base import make_base

    if mirror is not None and url_has_credentials(mirror):
        raise InputError(
            "--mirror holds a user name or password, which would stay in the image's apt "
            "sources; serve the mirror without them (or on a network that needs none)"
        )
    the_engine = chosen_engine(engine)
    progress = Progress()
    try:
        made = make_base(
            the_engine, suite=suite, tag=tag, mirror=mirror, epoch=epoch, on_line=progress
        )
    finally:
        progress.stop()
    typer.echo(f"made {made.ref} with {the_engine.name}")
    typer.echo(f"  image: {made.image_id}")
    typer.echo(f'  use it in env.toml: [base] image = "{made.ref}"')


@app.command()
@reports_errors
def inspect(
    image: Annotated[str, typer.Argument(help="An image imagesmith built (name:tag or ID).")],
    engine: EngineOpt = "auto",
    show: Annotated[
        str, typer.Option("--show", help="What to print: spec, lock, or summary.")
    ] = "summary",
    as_json: JsonOpt = False,
) -> None:
    """Summarise the spec and lock an image was built from (they travel inside it).

    --show spec / --show lock print them in full; --json gives the summary and the spec.
    Also shows, as information only, the run-time settings ([resources], [job],
    [registry]) the image was first pushed with: kept on the machine that pushed it and
    beside the image in its registry (tag lock-HASH.run), never in the image or its digest.
    """
    import tomli_w

    from imagesmith.reports import inspect_report

    if show not in {"spec", "lock", "summary"}:
        raise InputError(f"--show must be spec, lock or summary, not {show!r}")
    info, the_lock, lock_text = read_image(chosen_engine(engine), image)
    if show == "lock" and not as_json:
        sys.stdout.write(lock_text)
        return
    if show == "spec" and not as_json:
        sys.stdout.write(tomli_w.dumps(dict(the_lock.spec_data)))
        return
    from imagesmith.pipeline.run_settings import describe, find

    first, source = find(the_lock.lock_hash, info.repo_digests)
    if as_json:
        print_json(inspect_report(image, info, the_lock, run_settings=(first, source)))
        return
    print_summary(image, info, the_lock)
    for line in describe(first, source):
        typer.echo(line)


@app.command()
@reports_errors
def unpack(
    image: Annotated[str, typer.Argument(help="An image imagesmith built (name:tag or ID).")],
    directory: Annotated[
        Path, typer.Argument(help="Write the spec and its files here (made if missing).")
    ] = Path("."),
    engine: EngineOpt = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Replace files that are already there.")
    ] = False,
) -> None:
    """Take out of an image everything that rebuilds it: env.toml, env.lock, the requirements
    file and the files [image] copy put in it (checked against the lock's tree hashes).

    `imagesmith build DIR/env.toml` then gives the image's digest again. Add back the
    run-time tables ([resources], [job], [registry]) before manifest, sbatch or push: they
    are not part of the image. Nothing is written unless everything could be restored.
    """
    from imagesmith.pipeline.unpack import unpack as run_unpack

    written = run_unpack(chosen_engine(engine), image, directory, force=force, on_line=err)
    for path in written:
        typer.echo(f"wrote {as_typed(path.resolve())}")
    typer.echo(f"  next: imagesmith build {as_typed((directory / 'env.toml').resolve())}")


def read_image(engine: Engine, image: str) -> tuple[ImageInfo, Lock, str]:
    """The engine's facts about `image`, the lock it carries, and that lock's text."""
    from imagesmith.render.containerfile import lock_in_image

    info = engine.inspect_image(image)
    lock_text, the_lock = lock_in_image(image, info.labels, path=Path("env.lock"))
    return info, the_lock, lock_text


def print_summary(image: str, info: ImageInfo, the_lock: Lock) -> None:
    spec = the_lock.spec
    typer.echo(f"{image}: {spec.name}:{spec.version}, image {info.id}")
    typer.echo(f"  lock:  {the_lock.lock_hash}")
    typer.echo(f"  base:  {the_lock.base.reference} ({the_lock.base.digest})")
    python = len(the_lock.python.packages) if the_lock.python else 0
    typer.echo(f"  pins:  {len(the_lock.apt.packages)} apt packages, {python} Python distributions")
    from imagesmith.attest.inventory import inventory as sbom_inventory

    listed = sbom_inventory(the_lock).components
    unknown = sum(1 for c in listed if c.license is None)
    typer.echo(
        f"  sbom:  {len(listed)} packages, {unknown} licenses unknown "
        "(from the lock; `imagesmith sbom IMAGE` also reads the image)"
    )
    typer.echo("  --show spec / --show lock print them in full")


def _image_for(spec: Spec, the_lock: Lock) -> tuple[str, int, int]:
    """(repository@digest, uid, gid) of the lock's image: pushed if it was, else built here."""
    from imagesmith.model.records import read_build_record, read_push_record

    pushed = read_push_record(spec.path, the_lock.lock_hash)
    if pushed is not None:
        return pushed.pinned, pushed.uid, pushed.gid
    built = read_build_record(spec.path, the_lock.lock_hash)
    if built is not None:
        repository = spec.registry_repository or spec.name
        warn(
            f"{spec.path.name}'s image was built here but not pushed; a cluster cannot "
            f"pull it until `imagesmith push {as_typed(spec.path)}` has run"
        )
        return f"{repository}@{built.digest}", built.uid, built.gid
    raise InputError(
        f"no image digest for this lock yet: run `imagesmith build {as_typed(spec.path)}` "
        f"and `imagesmith push {as_typed(spec.path)}` first"
    )


def _emit(text: str, output: Path | None, *, report: Report | None = None) -> None:
    """`text` to `output` (or stdout); with --json, `report` is what goes to stdout."""
    from imagesmith.model.lock import write_atomically

    if output is not None:
        write_atomically(output, text)
        err(f"wrote {output}")
    if report is not None:
        print_json(report)
    elif output is None:
        sys.stdout.write(text)


def _mapping(
    pairs: list[str] | None, option: str, what: str, problems: list[str]
) -> dict[str, str]:
    """NAME=VALUE options as a mapping (a later NAME wins); each malformed one, a problem."""
    import re

    name_ok = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    value_ok = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
    found: dict[str, str] = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name_ok.match(name) or not value_ok.match(value):
            problems.append(
                f"{option} {pair!r}: expected NAME={what.upper()} (letters, digits, '-', '_' "
                f"and '.'; the {what} at most 63 characters)"
            )
            continue
        found[name] = value
    return found


OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write to this file instead of printing."),
]


@app.command()
@reports_errors
def manifest(
    spec_path: SpecArg = Path("env.toml"),
    kind: Annotated[
        str | None, typer.Option("--kind", help="pod or job (default: \\[job] kind, else job).")
    ] = None,
    output: OutputOpt = None,
    from_sbatch: Annotated[
        Path | None,
        typer.Option(
            "--from-sbatch",
            help="Take resources, time and command from this Slurm script's #SBATCH lines.",
        ),
    ] = None,
    for_podman: Annotated[
        bool,
        typer.Option(
            "--for-podman", help="Leave out long annotations podman kube play < 5 refuses."
        ),
    ] = False,
    as_json: JsonOpt = False,
    queue_map: Annotated[
        list[str] | None,
        typer.Option(
            "--queue-map",
            metavar="PARTITION=QUEUE",
            help="With --from-sbatch: the Kueue LocalQueue for a Slurm partition (-p); "
            "repeat for more; adds to [job.queue_map].",
        ),
    ] = None,
    gpu_map: Annotated[
        list[str] | None,
        typer.Option(
            "--gpu-map",
            metavar="MODEL=VALUE",
            help="The GPU node label value for a Slurm GPU model (a100=NVIDIA-A100-SXM4-80GB); "
            "repeat for more; adds to [resources.gpu_map].",
        ),
    ] = None,
    gpu_label: Annotated[
        str,
        typer.Option("--gpu-label", help="The node label a mapped GPU model selects nodes by."),
    ] = "nvidia.com/gpu.product",
    spec_gpu: Annotated[
        bool,
        typer.Option(
            "--spec-gpu",
            help="With --from-sbatch: keep the spec's GPUs for a script that asks for none.",
        ),
    ] = False,
) -> None:
    """Write the Kubernetes Job (or Pod) that runs the image by digest, sized as the spec says.

    Requests equal limits (Guaranteed QoS), and the Pod passes the "restricted" Pod
    Security Standard. The digest comes from `imagesmith push` (or a local build).
    """
    import dataclasses

    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec import load_spec, read_input_text
    from imagesmith.outputs.kubernetes import manifest_warnings, render_manifest
    from imagesmith.outputs.names import label_key_problem
    from imagesmith.outputs.sbatch_parse import parse_sbatch
    from imagesmith.reports import manifest_report

    if kind is not None and kind not in {"pod", "job"}:
        raise InputError(f"--kind must be pod or job, not {kind!r}")
    problems: list[str] = []
    queues = _mapping(queue_map, "--queue-map", "queue", problems)
    gpus = _mapping(gpu_map, "--gpu-map", "value", problems)
    label_problem = label_key_problem(gpu_label)
    if label_problem:
        problems.append(f"--gpu-label {gpu_label!r}: {label_problem}")
    if problems:
        raise InputError("\n".join(problems))
    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    if gpus:
        resources = dataclasses.replace(
            spec.resources, gpu_map=dict(sorted({**spec.resources.gpu_map, **gpus}.items()))
        )
        spec = dataclasses.replace(spec, resources=resources)
    overrides = None
    if from_sbatch is not None:
        try:
            script = read_input_text(from_sbatch)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{from_sbatch}: cannot read it ({exc})") from None
        overrides = parse_sbatch(
            script, source=from_sbatch.name, queue_map={**spec.job.queue_map, **queues}
        )
        for warning in overrides.warnings:
            warn(warning)
    elif queues:
        raise InputError("--queue-map maps the partitions of a script: use it with --from-sbatch")
    for warning in manifest_warnings(
        spec, overrides=overrides, gpu_label=gpu_label, spec_gpu=spec_gpu
    ):
        warn(warning)
    image, uid, gid = _image_for(spec, the_lock)
    text = render_manifest(
        spec,
        image=image,
        uid=uid,
        gid=gid,
        kind=kind,
        overrides=overrides,
        lock_hash=the_lock.lock_hash,
        for_podman=for_podman,
        gpu_label=gpu_label,
        spec_gpu=spec_gpu,
    )
    report = None
    if as_json:
        report = manifest_report(
            the_lock,
            kind=(kind or spec.job.kind).lower(),
            image=image,
            output=output,
            text=text,
            warnings=overrides.warnings if overrides is not None else (),
        )
    _emit(text, output, report=report)


@app.command()
@reports_errors
def sbatch(
    spec_path: SpecArg = Path("env.toml"),
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="How the cluster runs containers: podman, apptainer (singularity: its older "
            "name) or pyxis (srun --container-image).",
        ),
    ] = "podman",
    sif_dir: Annotated[
        str | None,
        typer.Option(
            "--sif-dir",
            metavar="DIR",
            help="apptainer/singularity: the shared folder the image is pulled into once per "
            "digest (default $HOME/.cache/imagesmith/sif, expanded on the node).",
        ),
    ] = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a Slurm batch script with the spec's resources that runs the image by digest."""
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec import load_spec
    from imagesmith.outputs.sbatch import render_sbatch
    from imagesmith.reports import sbatch_report

    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    image, _, _ = _image_for(spec, the_lock)
    text = render_sbatch(spec, image=image, runtime=runtime, sif_dir=sif_dir)
    report = None
    if as_json:
        report = sbatch_report(the_lock, runtime=runtime, image=image, output=output, text=text)
    _emit(text, output, report=report)


@app.command()
@reports_errors
def push(
    spec_path: SpecArg = Path("env.toml"),
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="REPO[:TAG]",
            help="Push here (REGISTRY/PATH[:TAG]) instead of \\[registry] repository.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    no_attestations: Annotated[
        bool,
        typer.Option(
            "--no-attestations",
            help="Do not attach the SBOMs and provenance (OCI referrers) to the image.",
        ),
    ] = False,
    no_inputs: NoInputsOpt = False,
) -> None:
    """Publish the built image to the lab's registry and record its digest for `manifest`.

    Also stores the lock's input archive beside it (every .deb and wheel the lock pins, and
    a base that exists only here; tagged lock-HASH.inputs), so the image can be rebuilt
    after its sources drop those files, and attaches its SPDX and CycloneDX SBOMs and its
    SLSA provenance as OCI referrers (signed when IMAGESMITH_SIGNING_KEY holds an ed25519
    key). The first push of a lock also keeps the run-time tables ([resources], [job],
    [registry]) as they are now, beside the image (tag lock-HASH.run) and on this machine,
    for `inspect` to show as information only. Credentials: docker login / podman login,
    or IMAGESMITH_REGISTRY_USER and IMAGESMITH_REGISTRY_PASSWORD (never on the command
    line).
    """
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec import load_spec
    from imagesmith.pipeline.push import push as run_push
    from imagesmith.reports import push_report

    signer = None
    pem = os.environ.get("IMAGESMITH_SIGNING_KEY") or None
    if pem is not None and not no_attestations:
        from imagesmith.attest.signing import load_signer

        signer = load_signer("IMAGESMITH_SIGNING_KEY", pem=pem)
    spec = load_spec(spec_path)
    record = run_push(
        spec,
        fresh_lock(spec),
        to=to,
        inputs=not no_inputs,
        on_line=err,
        attestations=not no_attestations,
        signer=signer,
        builder_id=os.environ.get("IMAGESMITH_BUILDER_ID") or None,
    )
    _keep_run_settings(spec, record)
    if as_json:
        print_json(push_report(record))
        return
    typer.echo(f"pushed {record.pinned}")
    typer.echo(f"  tags: {', '.join(record.tags)}")
    typer.echo(f"  next: imagesmith manifest {spec_path}")


def _keep_run_settings(spec: Spec, record: PushRecord) -> None:
    """Keep the run-time tables of the first push of this lock, on this machine and beside
    the image; information only, so a failure here is a warning, not a failed push."""
    from imagesmith.pipeline.canonical_build import layout_dir
    from imagesmith.pipeline.run_settings import publish, settings_tag

    manifest = (
        layout_dir(record.digest) / "blobs" / "sha256" / record.digest.removeprefix("sha256:")
    )
    try:
        publish(
            record.pinned,
            lock_hash=record.lock_hash,
            spec_data=spec.data,
            subject_size=manifest.stat().st_size,
            on_line=err,
        )
    except (ImagesmithError, OSError) as exc:
        warn(
            f"pushed {record.pinned}, but recording its run-time settings "
            f"({settings_tag(record.lock_hash)}, information only) failed: {exc}"
        )


@app.command()
@reports_errors
def pull(
    image: Annotated[
        str,
        typer.Argument(help="NAME@sha256:..., or an env.toml whose image was pushed."),
    ],
    engine: EngineOpt = "auto",
    verify_key: Annotated[
        Path | None,
        typer.Option(
            "--verify-key",
            metavar="KEY",
            help="Require a provenance attached to the image and signed with this ed25519 "
            "public key (PEM); checked before pulling.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a lab's image by digest, check the digest, and show the spec it was built from.

    Also lists the SBOMs and provenance attached to it in the registry.
    """
    from imagesmith.model.lock import read_lock
    from imagesmith.model.records import read_push_record
    from imagesmith.model.spec import load_spec
    from imagesmith.pipeline.push import pull as run_pull
    from imagesmith.pipeline.push import served_reference
    from imagesmith.reports import pull_report

    ref = image
    if image.endswith((".toml", ".lock")):
        spec = load_spec(Path(image).with_suffix(".toml"))
        the_lock = read_lock(spec.lock_path)
        record = read_push_record(spec.path, the_lock.lock_hash)
        if record is None:
            raise InputError(
                f"{spec.path.name}'s image has not been pushed: no {spec.path.stem}.pushed.json"
            )
        ref = record.pinned
    served = served_reference(ref)  # a tag or a wrong digest is refused before any engine
    if verify_key is not None:
        from imagesmith.attest.publish import verify_attached_provenance
        from imagesmith.attest.signing import load_public_key

        verify_attached_provenance(ref, load_public_key(str(verify_key)))
    the_engine = chosen_engine(engine)
    pinned = run_pull(the_engine, served)
    info, the_lock, _ = read_image(the_engine, pinned)
    if as_json:
        print_json(pull_report(pinned, engine=the_engine.name, info=info, lock=the_lock))
        return
    typer.echo(f"pulled {pinned} into {the_engine.name}; digest verified")
    print_summary(pinned, info, the_lock)
    if verify_key is not None:
        typer.echo(f"  provenance: signed with {verify_key}, verified")
    from imagesmith.attest.publish import attached_summary
    from imagesmith.errors import RegistryError

    try:
        for line in attached_summary(ref):
            typer.echo(f"  attached: {line}")
    except RegistryError as exc:
        warn(f"cannot list what is attached to it: {exc}")


@app.command("build-from")
@reports_errors
def build_from(
    contexts: Annotated[
        list[str],
        typer.Argument(
            metavar="CONTEXT...",
            help="Build contexts by digest (REPO@sha256:...), as `build --on kubernetes` "
            "stored them.",
        ),
    ],
    index: Annotated[
        int | None,
        typer.Option(
            "--index",
            metavar="N",
            help="Build the Nth context (from 0); default: JOB_COMPLETION_INDEX, which an "
            "Indexed Job sets, or the only one.",
        ),
    ] = None,
    engine: EngineOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fetch a build context from the registry, build it and push it by digest: what each
    pod of a `build --on kubernetes` Job runs (for the platform its lock pins).

    The context (the spec, its lock and the files they name) goes into ./context-HASH/,
    checked against its digest; the build is `build --push` of that spec, so an image the
    registry holds already is taken from there, and the digest is the one a local build
    of the same lock prints.
    """
    from imagesmith.cluster import kube_build

    chosen = kube_build.pick_context(contexts, index)
    spec_path = kube_build.fetch_context(chosen, kube_build.context_folder(chosen))
    err(f"context: {chosen} -> {as_typed(spec_path)}")
    from imagesmith.model.lock import read_lock

    platform = read_lock(spec_path.with_suffix(".lock")).platform
    _build_one(
        spec_path,
        engine=chosen_engine(engine),
        as_json=as_json,
        extra_tags=(),
        no_cache=False,
        relock=False,
        platform=platform,
        then_push=True,
        substitute=True,
        no_inputs=False,
    )


@app.command("fetch-tool")
@reports_errors
def fetch_tool(
    spec_path: SpecArg = Path("env.toml"),
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="REPO",
            help="The repository the image was pushed to, instead of \\[registry] repository.",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Write the wheel into this folder."),
    ] = Path("."),
) -> None:
    """Download the imagesmith that wrote env.lock, as a wheel, from the image's input archive.

    `push` keeps that wheel (its sha256 is the lock's imagesmith_wheel) beside the image,
    so the exact tool can be installed years later, whatever this imagesmith is:
    `python3 -m venv v && v/bin/pip install ./imagesmith-VERSION-py3-none-any.whl`.
    The download is checked against the lock's sha256.
    """
    from imagesmith.inputs.tool_wheel import fetch_tool_wheel

    path, lock = fetch_tool_wheel(spec_path, repository=source, output=output)
    typer.echo(f"fetched imagesmith {lock.imagesmith_version}: {as_typed(path.resolve())}")
    typer.echo(f"  {lock.imagesmith_wheel}")
    typer.echo(
        f"  install: python3 -m venv venv && venv/bin/pip install {as_typed(path.resolve())}"
    )


@app.command()
@reports_errors
def login(
    registry: Annotated[str, typer.Argument(help="The registry host, e.g. registry.example.edu.")],
    username: Annotated[str, typer.Option("--username", "-u", help="Registry user name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Check credentials against a registry and store them in the docker config."""
    from imagesmith.pipeline.push import login as run_login

    if not password_stdin:
        raise InputError("pass the password on standard input with --password-stdin")
    password = sys.stdin.read().rstrip("\n")
    if not password:
        raise InputError("no password on standard input")
    path = run_login(registry, username, password)
    typer.echo(f"login to {registry} succeeded; credentials stored in {path}")


@app.command()
@reports_errors
def verify(
    target: Annotated[
        str, typer.Argument(help="env.toml, or an image imagesmith built (name:tag or ID).")
    ] = "env.toml",
    engine: EngineOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the image from its lock with no cache and check nothing changed.

    With env.toml: compares with the last `imagesmith build` (manifest digest). With an
    image: rebuilds from the lock the image carries and compares image IDs. Exit 0 when
    identical; exit 1 with what differs (config fields, layers, files) when not.
    """
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec import load_spec
    from imagesmith.pipeline.verify import verify as run_verify
    from imagesmith.pipeline.verify import verify_image
    from imagesmith.reports import verify_report

    the_engine = chosen_engine(engine)
    progress = Progress()
    try:
        if target.endswith(".toml") or Path(target).is_file():
            spec = load_spec(Path(target))
            verdict = run_verify(spec, fresh_lock(spec), the_engine, on_line=progress)
        else:
            verdict = verify_image(target, the_engine, on_line=progress)
    finally:
        progress.stop()
    if as_json:
        print_json(verify_report(verdict))
    elif verdict.identical:
        typer.echo(f"reproducible: the rebuild is identical ({verdict.reference})")
    if verdict.identical:
        return
    err(
        f"NOT reproducible: expected {verdict.reference}, the rebuild gave {verdict.rebuilt}",
        colour="red",
    )
    for line in verdict.differences:
        err(f"  {line}")
    raise typer.Exit(1)


@app.command()
@reports_errors
def sbom(
    target: Annotated[
        str,
        typer.Argument(
            help="env.toml (or env.lock), or an image imagesmith built (name:tag or ID)."
        ),
    ] = "env.toml",
    sbom_format: Annotated[
        str,
        typer.Option("--format", "-f", help="spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.6)."),
    ] = "spdx",
    output: OutputOpt = None,
    engine: EngineOpt = "auto",
) -> None:
    """Write the image's software bill of materials, made from its lock (no scanner, no network).

    Lists the base image by digest, every apt package with its .deb sha256 and every Python
    distribution with its hashes. The same lock gives the same bytes. From an image, the
    Debian packages its base brought are listed too (read with dpkg-query in a container),
    and the license expressions its Python distributions declare.
    """
    from imagesmith.attest.inventory import inventory
    from imagesmith.attest.sbom import FORMATS, render_sbom
    from imagesmith.attest.target import is_spec_target, lock_for_spec, lock_from_labels

    if sbom_format not in FORMATS:
        raise InputError(f"--format must be spdx or cyclonedx, not {sbom_format!r}")
    if "@sha256:" in target and not is_spec_target(target):
        from imagesmith.attest.referrers import attached_document

        _emit(attached_document(target, sbom_format).decode("utf-8"), output)
        return
    if is_spec_target(target):
        contents = inventory(lock_for_spec(target))
    else:
        from imagesmith.attest.target import deb_licenses, installed_debs, venv_licenses
        from imagesmith.engine import get_engine

        the_engine = get_engine(engine)
        the_lock = lock_from_labels(target, the_engine.inspect_image(target).labels)
        licenses = venv_licenses(the_engine, target) if the_lock.python else {}
        contents = inventory(
            the_lock,
            installed_debs(the_engine, target),
            licenses,
            deb_licenses(the_engine, target),
        )
    _emit(render_sbom(contents, sbom_format), output)


@app.command()
@reports_errors
def provenance(
    spec_path: SpecArg = Path("env.toml"),
    output: OutputOpt = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            metavar="KEY",
            help="Sign with this ed25519 private key (PEM) and write a DSSE envelope. "
            "IMAGESMITH_SIGNING_KEY may hold the PEM text instead.",
        ),
    ] = None,
    builder_id: Annotated[
        str | None,
        typer.Option(
            "--builder-id",
            metavar="URI",
            envvar="IMAGESMITH_BUILDER_ID",
            help="Who built it (default urn:imagesmith:builder:HOSTNAME).",
        ),
    ] = None,
) -> None:
    """Write the SLSA v1 provenance (an in-toto Statement) of the image built from env.lock.

    The subject is the digest the last `imagesmith build` of this lock printed; with a key,
    the statement is signed into a DSSE envelope (`imagesmith verify-provenance` checks it).
    """
    import socket

    from imagesmith.attest.inventory import inventory
    from imagesmith.attest.provenance import BuildRun, dump_statement, provenance_statement
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.records import read_build_record, read_push_record
    from imagesmith.model.spec import load_spec

    signer = None
    pem = os.environ.get("IMAGESMITH_SIGNING_KEY") or None
    if sign_key is not None or pem is not None:
        from imagesmith.attest.signing import load_signer

        if sign_key is not None:
            signer = load_signer(str(sign_key))
        else:
            signer = load_signer("IMAGESMITH_SIGNING_KEY", pem=pem)
    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    built = read_build_record(spec.path, the_lock.lock_hash)
    if built is None:
        raise InputError(
            f"no build of this lock here: run `imagesmith build {spec.path.name}` first "
            "(the provenance names the digest it made)"
        )
    pushed = read_push_record(spec.path, the_lock.lock_hash)
    run = BuildRun(
        repository=pushed.repository if pushed else (spec.registry_repository or spec.name),
        digest=built.digest,
        engine=built.engine,
        builder_id=builder_id or f"urn:imagesmith:builder:{socket.gethostname()}",
        started=built.started,
        finished=built.finished,
    )
    text = dump_statement(provenance_statement(the_lock, inventory(the_lock), run))
    if signer is not None:
        from imagesmith.attest.signing import sign_statement

        text = sign_statement(text, signer)
    _emit(text, output)


@app.command("verify-provenance")
@reports_errors
def verify_provenance(
    envelope: Annotated[
        Path, typer.Argument(help="A DSSE envelope `provenance --sign-key` wrote.")
    ],
    key: Annotated[
        Path, typer.Option("--key", metavar="KEY", help="The ed25519 public key (PEM) to trust.")
    ],
    digest: Annotated[
        str | None,
        typer.Option("--digest", metavar="sha256:…", help="Also require this subject digest."),
    ] = None,
) -> None:
    """Check a signed provenance: the signature with KEY, then (with --digest) its subject.

    Exit 0 when it verifies, 1 when it does not, 2 when a file is not what it should be.
    """
    from imagesmith.attest.signing import VerificationFailed, load_public_key, verify_envelope

    public = load_public_key(str(key))
    try:
        text = envelope.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{envelope}: cannot read it ({exc})") from None
    statement = verify_envelope(text, public, what=str(envelope))
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    found = [
        f"{s.get('name')}@sha256:{s.get('digest', {}).get('sha256')}"
        for s in subjects or []
        if isinstance(s, dict)
    ]
    if digest is not None and not any(f.endswith("@" + digest) for f in found):
        raise VerificationFailed(
            f"{envelope}: signed, but its subject is {', '.join(found) or 'missing'}, not {digest}"
        )
    typer.echo(f"verified: {', '.join(found)} (key {public.keyid[:16]})")


def command_name(command: CommandInfo) -> str:
    """The name a command is called by, as typer derives it from the function."""
    if command.name:
        return command.name
    assert command.callback is not None, "every command of the app has its function"
    return command.callback.__name__.lower().replace("_", "-")


def app_for(args: Sequence[str]) -> typer.Typer:
    """`app` with only the commands that the command line `args` can reach.

    Typer builds each command from its function's signature (1-2 ms each) before it
    looks at the command line, and a run needs one: `imagesmith render ...` gets a group
    holding `render` alone, `imagesmith --version` (answered before any command is looked
    up) an empty one. Anything else (`--help`, no command, a name that is none of ours,
    shell completion) gets the whole app, so it lists, suggests and completes as before.
    """
    if any(name.startswith("_") and "_COMPLETE" in name for name in os.environ):
        return app
    first = args[0] if args else None
    needed: list[CommandInfo]
    if first == "--version":
        needed = []
    else:
        needed = [command for command in app.registered_commands if command_name(command) == first]
        if not needed:
            return app
    lean = copy.copy(app)  # the same settings and callback, its own list of commands
    lean.registered_commands = needed
    return lean


def main() -> None:
    app_for(sys.argv[1:])()
