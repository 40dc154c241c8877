"""The `imagesmith` command. Only this module reads argv and turns errors into exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, ParamSpec, TypeVar

import typer

from imagesmith import __version__
from imagesmith.errors import ImagesmithError, InputError

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="imagesmith",
    help=(
        "Turn a lab's env.toml into a container image anyone can rebuild bit for bit, "
        "and into the Kubernetes or Slurm job that runs it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

SpecArg = Annotated[
    Path,
    typer.Argument(help="The lab's env.toml.", show_default=True),
]


def err(line: str) -> None:
    typer.echo(line, err=True)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print an expected failure as one line per problem and exit with its code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ImagesmithError as exc:
            prefix = "error: " if not isinstance(exc, InputError) or len(exc.lines()) == 1 else ""
            for index, line in enumerate(exc.lines()):
                err(f"{prefix if index == 0 else ''}{line}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted; nothing was left half-done")
            raise typer.Exit(130) from None

    return wrapper


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
def validate(spec_path: SpecArg = Path("env.toml")) -> None:
    """Check env.toml and list every problem in it, one per line (exit 2 if any)."""
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
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
        typer.Option("--output", "-o", help="Write the Containerfile here instead of printing it."),
    ] = None,
) -> None:
    """Print the Containerfile that env.lock pins (needs an up-to-date lock; no engine)."""
    from imagesmith.lock import fresh_lock, write_atomically
    from imagesmith.render import render as render_lock
    from imagesmith.spec import load_spec

    lock = fresh_lock(load_spec(spec_path))
    text = render_lock(lock)
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomically(output, text)
        err(f"wrote {output}")


@app.command()
@reports_errors
def init(
    recipe: Annotated[
        str, typer.Option("--recipe", "-r", help="The recipe to start from (see --list).")
    ] = "python-minimal",
    directory: Annotated[Path, typer.Argument(help="Folder to write env.toml into.")] = Path("."),
    list_recipes: Annotated[
        bool, typer.Option("--list", help="List the recipes and exit.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing env.toml.")] = False,
) -> None:
    """Write a starting env.toml from one of the ready recipes."""
    from imagesmith.recipebook import available_recipes, recipe_text

    if list_recipes:
        for name, summary in available_recipes().items():
            typer.echo(f"{name:16} {summary}")
        return
    target = directory / "env.toml"
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to overwrite it")
    text = recipe_text(recipe)
    directory.mkdir(parents=True, exist_ok=True)
    from imagesmith.lock import write_atomically

    write_atomically(target, text)
    typer.echo(f"wrote {target} from recipe {recipe}; next: imagesmith build {target}")


def main() -> None:
    app()
