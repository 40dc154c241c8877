"""How long-running work reports progress: one line of text at a time, to a callback the
caller chooses (the CLI prints it to standard error; tests collect it)."""

from __future__ import annotations

from collections.abc import Callable

LineCallback = Callable[[str], None]
