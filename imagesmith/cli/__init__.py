"""The `imagesmith` command. Only this package reads argv and turns errors into exit codes.

`main` first offers the command line to `quick`, which answers the plain forms of the
commands run most that need no engine (`--version`, `validate`, `render`) without
importing typer and click (0.04-0.07 s of a 0.1 s run). Every other command line goes to
the typer app of `application`, which parses it, answers it and reports its mistakes.
`app` (the whole typer app), `app_for`, `command_name` and `COMMAND_MODULES` are read
from `application` when asked for, so importing this package imports no typer.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagesmith.cli.application import COMMAND_MODULES, app, app_for, command_name

__all__ = ["COMMAND_MODULES", "app", "app_for", "command_name", "main"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from imagesmith.cli import application

        return getattr(application, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    from imagesmith.cli.quick import answer

    args = sys.argv[1:]
    if not answer(args):
        from imagesmith.cli.application import app_for

        app_for(args)()
