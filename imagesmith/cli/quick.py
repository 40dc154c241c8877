"""`imagesmith --version`, `validate` and `render`, answered without typer.

These run often, each in a process of its own, and do little: typer and click took 0.04-
0.07 s of their 0.1 s (issue 18). `answer` runs the command line itself only when it has
one of the plain forms below, with the same function the typer command calls:

    imagesmith --version
    imagesmith validate [SPEC] [--json]
    imagesmith render [SPEC] [--json] [-o FILE | --output FILE | --output=FILE]

Anything else (`--help`, an option it does not know or that is given twice, a second
argument, an option's value that starts with `-`, shell completion) is left to typer,
which parses it and answers or reports it as it does for every command.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from imagesmith import __version__
from imagesmith.cli.output import emit, print_json, reports_errors


@reports_errors
def validate(spec_path: Path, *, as_json: bool) -> None:
    from imagesmith.model.spec_loading import load_spec

    spec = load_spec(spec_path)
    if as_json:
        from imagesmith.reports import validate_report

        print_json(validate_report(spec))
        return
    python = len(spec.python.requirements) if spec.python else 0
    print(
        f"{spec_path}: valid ({spec.name}:{spec.version}, {len(spec.apt_packages)} apt packages, "
        f"{python} Python requirements)"
    )


@reports_errors
def render(spec_path: Path, *, output: Path | None, as_json: bool) -> None:
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec
    from imagesmith.render.containerfile import render as render_lock

    spec = load_spec(spec_path)
    lock = fresh_lock(spec)
    text = render_lock(lock)
    reads = (spec.path, spec.lock_path)
    if not as_json:
        emit(text, output, reads=reads)
        return
    from imagesmith.reports import render_report

    emit(text, output, report=render_report(lock, output=output, text=text), reads=reads)


#: The default of the SPEC argument, as the typer commands have it.
DEFAULT_SPEC = "env.toml"


def _plain(command: str, rest: Sequence[str]) -> tuple[str, bool, str | None] | None:
    """(SPEC, --json, --output) of a plain command line; None for anything else."""
    spec: str | None = None
    as_json = False
    output: str | None = None
    tokens = iter(rest)
    for token in tokens:
        if token == "--json" and not as_json:
            as_json = True
        elif command == "render" and token in ("-o", "--output") and output is None:
            output = next(tokens, "")
            if not output or output.startswith("-"):
                return None
        elif command == "render" and token.startswith("--output=") and output is None:
            output = token.removeprefix("--output=")
            if not output:
                return None
        elif token and not token.startswith("-") and spec is None:
            spec = token
        else:
            return None
    return spec or DEFAULT_SPEC, as_json, output


def completing() -> bool:
    """Whether the shell asks for completions (click's `_PROG_COMPLETE` variable is set):
    only the whole typer app answers those."""
    return any(name.startswith("_") and "_COMPLETE" in name for name in os.environ)


def answer(args: Sequence[str]) -> bool:
    """Run `args` if it is one of the plain forms (exiting non-zero on failure, as the typer
    command does) and say True; False, having done nothing, to leave it to typer."""
    if completing():
        return False
    if list(args) == ["--version"]:
        _answering(lambda: print(f"imagesmith {__version__}"))
        return True
    if not args or args[0] not in ("validate", "render"):
        return False
    plain = _plain(args[0], args[1:])
    if plain is None:
        return False
    spec, as_json, output = plain
    if args[0] == "validate":
        _answering(lambda: validate(Path(spec), as_json=as_json))
    else:
        out = None if output is None else Path(output)
        _answering(lambda: render(Path(spec), output=out, as_json=as_json))
    return True


def _answering(run: Callable[[], None]) -> None:
    """`run`, its output flushed; a reader that went away (`imagesmith render | head`)
    ends it with exit 1 and no traceback, as click ends the typer commands."""
    try:
        run()
        sys.stdout.flush()
    except BrokenPipeError:
        with contextlib.suppress(OSError, ValueError):  # no second error when Python exits
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
