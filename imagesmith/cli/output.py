"""What the user reads: plain lines, colour on a terminal, credentials redacted, JSON for CI,
live build progress, and every expected failure as one line per problem and its exit code.

Written to the standard streams directly, without click or typer, so that the commands
`quick` answers import neither."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ParamSpec, TypeVar

from imagesmith.errors import ImagesmithError, InputError, NoLocalImageError
from imagesmith.progress import StepLine

if TYPE_CHECKING:
    from imagesmith.reports import Report

P = ParamSpec("P")
R = TypeVar("R")

#: `scheme://user:password@`: what a tool's message may quote of a proxy or index URL.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]+@")


def redacted(line: str) -> str:
    """`line` with the user and password of every URL in it replaced by `***`: a message
    quoted from pip, uv or an engine must not put a host credential in a log."""
    return _URL_USERINFO.sub(r"\1***@", line)


def colour_wanted(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


#: The colours lines are written in, as ANSI SGR codes.
_COLOURS = {"red": 31, "green": 32, "yellow": 33}

#: An ANSI escape sequence, as a tool's output may hold (click's pattern).
_ANSI = re.compile(r"\033\[[;?0-9]*[a-zA-Z]")


def err(line: str, *, colour: str | None = None) -> None:
    """One line on standard error, in `colour` when that is wanted there. A line quoted from
    a tool loses its own escape sequences: they would garble a log or a terminal's line."""
    line = _ANSI.sub("", redacted(line))
    if colour is not None and colour_wanted(sys.stderr):
        line = f"\033[{_COLOURS[colour]}m{line}\033[0m"
    print(line, file=sys.stderr, flush=True)


def warn(line: str) -> None:
    err(f"warning: {line}", colour="yellow")


def print_json(report: Report) -> None:
    import json

    print(json.dumps(report, sort_keys=True, default=str), flush=True)


def emit(
    text: str, output: Path | None, *, report: Report | None = None, reads: Sequence[Path] = ()
) -> None:
    """`text` to `output` (or stdout); with --json, `report` is what goes to stdout.

    `reads`: the files the command read (env.toml, env.lock): an `output` naming one of
    them is refused (exit 2), not written over it.
    """
    from imagesmith.model.lock import write_atomically

    if output is not None:
        for path in reads:
            if _same_file(output, path):
                raise InputError(
                    f"--output {output}: that is {path.name}, which this command reads; "
                    "name another file"
                )
        write_atomically(output, text)
        err(f"wrote {output}")
    if report is not None:
        print_json(report)
    elif output is None:
        sys.stdout.write(text)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


#: A problem line quotes the input it is about; past this it is cut (a 4 MB line helps no one).
MAX_LINE = 1000


def shortened(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 4] + " ..."


def report_problems(command: str, exc: ImagesmithError, *, as_json: bool) -> None:
    """The problems on standard error (red, `error: ` before a single one); JSON if asked."""
    lines = exc.lines()
    prefix = "error: " if not isinstance(exc, InputError) or len(lines) == 1 else ""
    for index, line in enumerate(lines):
        err(shortened(f"{prefix if index == 0 else ''}{line}"), colour="red")
    if as_json:
        from imagesmith.reports import failure

        print_json(failure(command, exc.exit_code, lines))


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
            raise SystemExit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted; nothing was left half-done")
            raise SystemExit(130) from None

    return wrapper


#: Progress lines that stay on screen above the live status line; the others only update it.
_KEPT_LINES = (
    "lock",
    "base",
    "apt",
    "python",
    "canonical",
    "cache",
    "substitut",
    "push",
)


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
        step = isinstance(line, StepLine)  # an engine's step line
        line = redacted(line)
        if self._status is None:
            err(line)
        elif step or line.startswith(_KEPT_LINES):
            self._status.console.print(line, markup=False, highlight=False)
            self._status.update(line[:100])
        else:
            self._status.update(line[:100])

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
