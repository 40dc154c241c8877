"""How long-running work reports progress: one line of text at a time, to a callback the
caller chooses (the CLI prints it to standard error; tests collect it)."""

from __future__ import annotations

from collections.abc import Callable

LineCallback = Callable[[str], None]


class StepLine(str):
    """A line that starts a build step: an engine passes its step lines as these, so that
    a live view can keep them on screen without knowing any engine's spelling."""

    __slots__ = ()
