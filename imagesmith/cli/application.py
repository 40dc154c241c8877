"""The typer app: its settings, `--version`, and which module holds each command.

A run builds and imports only the command it names (`app_for`): `imagesmith lock ...`
imports `spec_commands` alone, `imagesmith --version` no command module at all. `app`, the
whole app with every command (for `--help`, completion and the tests), is made the first
time it is asked for (`imagesmith.cli.app` is the same app).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from typer.models import CommandInfo

from imagesmith import __version__
from imagesmith.cli.quick import completing

#: Every command, in the order `imagesmith --help` lists them, and the module (in this
#: package) that defines it: each module gathers its commands in a Typer named `commands`.
COMMAND_MODULES = {
    "validate": "spec_commands",
    "render": "spec_commands",
    "init": "spec_commands",
    "lock": "spec_commands",
    "build": "build_commands",
    "base": "build_commands",
    "inspect": "image_commands",
    "unpack": "image_commands",
    "manifest": "job_commands",
    "sbatch": "job_commands",
    "push": "registry_commands",
    "pull": "registry_commands",
    "build-from": "build_commands",
    "fetch-tool": "registry_commands",
    "login": "registry_commands",
    "verify": "image_commands",
    "sbom": "attest_commands",
    "provenance": "attest_commands",
    "verify-provenance": "attest_commands",
}

#: The app without its commands: its settings, its help and `--version`.
bare_app = typer.Typer(
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imagesmith {__version__}")
        raise typer.Exit(0)


@bare_app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Turn a lab's env.toml into a reproducible image and the job that runs it."""


def command_name(command: CommandInfo) -> str:
    """The name a command is called by, as typer derives it from the function."""
    if command.name:
        return command.name
    assert command.callback is not None, "every command of the app has its function"
    return command.callback.__name__.lower().replace("_", "-")


def defined_command(name: str) -> CommandInfo:
    """The command `name` (one of COMMAND_MODULES), importing only the module defining it."""
    module = importlib.import_module(f"imagesmith.cli.{COMMAND_MODULES[name]}")
    commands: typer.Typer = module.commands
    found = [command for command in commands.registered_commands if command_name(command) == name]
    assert len(found) == 1, f"{module.__name__} defines the command {name} once"
    return found[0]


def _app_with(commands: list[CommandInfo]) -> typer.Typer:
    made = copy.copy(bare_app)  # the same settings and callback, its own list of commands
    made.registered_commands = commands
    return made


def whole_app() -> typer.Typer:
    """The app with every command, in the order of COMMAND_MODULES; made once."""
    made = globals().get("app")
    if made is None:
        made = globals()["app"] = _app_with([defined_command(name) for name in COMMAND_MODULES])
    assert isinstance(made, typer.Typer)
    return made


if TYPE_CHECKING:
    app: typer.Typer
else:

    def __getattr__(name: str) -> typer.Typer:
        """`imagesmith.cli.app`: the whole app, made when first asked for."""
        if name == "app":
            return whole_app()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def app_for(args: Sequence[str]) -> typer.Typer:
    """The app with only the commands that the command line `args` can reach.

    Typer builds each command from its function's signature (1-2 ms each) before it
    looks at the command line, and a run needs one: `imagesmith render ...` gets a group
    holding `render` alone, `imagesmith --version` (answered before any command is looked
    up) an empty one. Anything else (`--help`, no command, a name that is none of ours,
    shell completion) gets the whole app, so it lists, suggests and completes as before.
    """
    if completing():
        return whole_app()
    first = args[0] if args else None
    if first == "--version":
        return _app_with([])
    if first not in COMMAND_MODULES:
        return whole_app()
    return _app_with([defined_command(first)])
