"""The commands on env.toml and env.lock before any image: `validate`, `render`, `init`
(a recipe copied into a folder) and `lock` (and `lock --check`, CI's check)."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imagesmith.cli import quick
from imagesmith.cli.options import EngineOpt, JsonOpt, PlatformOpt, SpecArg, engine_factory
from imagesmith.cli.output import err, print_json, reports_errors
from imagesmith.errors import InputError, OperationError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.model.lock import Lock
    from imagesmith.model.spec import Spec

commands = typer.Typer()


@commands.command()
def validate(spec_path: SpecArg = Path("env.toml"), as_json: JsonOpt = False) -> None:
    """Check env.toml and list every problem in it, one per line (exit 2 if any)."""
    quick.validate(spec_path, as_json=as_json)


@commands.command()
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
    quick.render(spec_path, output=output, as_json=as_json)


@commands.command()
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
    from imagesmith.recipebook import available_recipes

    if list_recipes:
        for name, summary in available_recipes().items():
            typer.echo(f"{name:16} {summary}")
        return
    written = [as_typed(path.resolve()) for path in _copy_recipe(recipe, directory, force=force)]
    typer.echo(f"wrote {', '.join(written)} from recipe {recipe}")
    readme = [path for path in written if path.endswith("README.md")]
    typer.echo(
        f"  next: {'read ' + readme[0] + ', then ' if readme else ''}imagesmith build {written[0]}"
    )


def _copy_recipe(recipe: str, directory: Path, *, force: bool) -> list[Path]:
    """The recipe's files copied into `directory` (made if missing, removed again if the copy
    fails); the builder recipe gets the wheel of this imagesmith too."""
    from imagesmith.recipebook import copy_recipe

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
    return copied


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


CheckOpt = Annotated[
    bool,
    typer.Option(
        "--check",
        help=(
            "Only check that env.lock matches env.toml (for CI): exit 0 if it does, "
            "1 if it is stale or missing, 2 if it cannot be read."
        ),
    ),
]
UpgradeOpt = Annotated[
    bool, typer.Option("--upgrade", help="Re-resolve everything to the newest the spec allows.")
]
UpgradePackageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--upgrade-package",
        "-P",
        metavar="NAME",
        help="Re-resolve this Python package only (repeatable).",
    ),
]


@commands.command()
@reports_errors
def lock(
    spec_path: SpecArg = Path("env.toml"),
    check: CheckOpt = False,
    upgrade: UpgradeOpt = False,
    upgrade_package: UpgradePackageOpt = None,
    engine: EngineOpt = "auto",
    platform: PlatformOpt = "linux/amd64",
    as_json: JsonOpt = False,
) -> None:
    """Pin everything the build will read into env.lock: base digest, apt closure, Python hashes.

    Re-running on an unchanged spec changes nothing and needs no network.
    """
    from imagesmith.model.spec_loading import load_spec

    spec = load_spec(spec_path)
    lock_path = spec.lock_path
    if check:
        check_lock(spec, as_json=as_json)
        return
    # Only now: resolving needs the engines' modules, which --check (CI's check) does not.
    from imagesmith.locking.resolve import lock_spec
    from imagesmith.model.lock import pins_to_keep, read_lock, write_lock

    previous = pins_to_keep(read_lock(lock_path) if lock_path.exists() else None, platform)
    started = time.monotonic()
    new = lock_spec(
        spec,
        engine=engine_factory(engine),
        platform=platform,
        previous=previous,
        upgrade=upgrade,
        upgrade_packages=upgrade_package or (),
        on_line=err,
    )
    changed = write_lock(new, lock_path)
    changes = lock_changes(previous, new)
    _print_locked(new, lock_path, changed, changes, time.monotonic() - started, as_json=as_json)


def _print_locked(
    new: Lock, lock_path: Path, changed: bool, changes: list[str], seconds: float, *, as_json: bool
) -> None:
    """What `lock` says: the lines that changed and where the lock is (or the JSON report)."""
    if as_json:
        from imagesmith.reports import lock_report

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


def lock_changes(previous: Lock | None, new: Lock) -> list[str]:
    """What `lock` says changed: a new lock format first (it gives a new digest), then
    the pins (`lock_diff`)."""
    changes = lock_diff(previous, new)
    if previous is not None and previous.format != new.format:
        changes.insert(
            0,
            f"lock format {previous.format or 'none'} (imagesmith {previous.imagesmith_version})"
            f" → {new.format} (imagesmith {new.imagesmith_version}): the image gets a new digest",
        )
    return changes


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
