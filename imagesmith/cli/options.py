"""The arguments and options several commands share; the engine and signing key they name."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import click
import typer
from click.core import ParameterSource

from imagesmith.cli.output import err

if TYPE_CHECKING:
    from imagesmith.engine.base import Engine

SpecArg = Annotated[
    Path,
    typer.Argument(help="The lab's env.toml.", show_default=True),
]

JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on stdout (schemas/cli/COMMAND.json); failures too.",
    ),
]

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


def _platform(value: str) -> str:
    """OS/ARCH[/VARIANT], as registries' indexes name platforms (linux/arm64, linux/arm/v7)."""
    import re

    if not re.fullmatch(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?", value):
        raise typer.BadParameter(f"{value!r} is not OS/ARCH (e.g. linux/amd64, linux/arm64)")
    return value


PlatformOpt = Annotated[
    str,
    typer.Option(
        "--platform",
        metavar="OS/ARCH",
        callback=_platform,
        help="Target platform of the image (linux/amd64, linux/arm64).",
    ),
]

NoInputsOpt = Annotated[
    bool,
    typer.Option(
        "--no-inputs",
        help="Push the image only, without the input archive (lock-HASH.inputs) it builds from.",
    ),
]

OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write to this file instead of printing."),
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


def engine_factory(name: str) -> Callable[[], Engine]:
    """The engine, chosen only when the command needs one (an unchanged lock does not)."""
    return functools.cache(lambda: chosen_engine(name))


def engine_typed_on_command_line() -> bool:
    """Whether `--engine` came from the command line (not IMAGESMITH_ENGINE, not the default)."""
    context = click.get_current_context(silent=True)
    return context is not None and context.get_parameter_source("engine") in (
        ParameterSource.COMMANDLINE,
        None,
    )


def chosen_signer(key_file: Path | None) -> Any:
    """The signer of the ed25519 private key in `key_file`, else in IMAGESMITH_SIGNING_KEY
    (the PEM text itself); None when neither holds one."""
    pem = os.environ.get("IMAGESMITH_SIGNING_KEY") or None
    if key_file is None and pem is None:
        return None
    from imagesmith.attest.signing import load_signer

    if key_file is not None:
        return load_signer(str(key_file))
    return load_signer("IMAGESMITH_SIGNING_KEY", pem=pem)
