"""What an engine announces while it builds, the same on every engine: typed build events.

Each engine reads its own output (Docker's classic builder, podman's buildah) and passes
what it recognises to the `on_event` callback of `Engine.build`, while every raw line
still goes to `on_line`. Nothing outside `imagesmith.engine` reads engine output: the
pipeline reacts to these events only (`canonical_build.Prewarm.watch`). An engine that
cannot tell something leaves that event out; a build is correct without any event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StepStarted:
    """The engine starts a Containerfile instruction: step `step` of `total`.

    `stage` is the stage's position (1-based) among `stages` when the engine numbers
    steps per stage (podman, multi-stage), else 0 and 0 (Docker numbers them all at once).
    """

    step: int
    total: int
    instruction: str
    stage: int = 0
    stages: int = 0

    def describe(self) -> str:
        """`STEP 3/5: RUN ...`, the way a BuildError names the step it failed at."""
        return f"STEP {self.step}/{self.total}: {self.instruction}"


@dataclass(frozen=True)
class StepCached:
    """The step just started was taken from the engine's build cache."""


@dataclass(frozen=True)
class StageStarted:
    """A stage starts from the local image `image_id` (a base image, or a stage the build
    has finished): its layers are final. `name` is the stage's ``AS`` name, "" for none."""

    image_id: str
    name: str = ""


@dataclass(frozen=True)
class StepImage:
    """The image a step of the stage `stage` (its ``AS`` name, "" for an unnamed stage)
    left behind. Only engines that can tell a step's stage announce it (Docker, and podman,
    which builds one stage at a time)."""

    image_id: str
    stage: str = ""


@dataclass(frozen=True)
class ImageMade:
    """The build succeeded and made `image_id` (`sha256:<64 hex>`); nothing is tagged yet."""

    image_id: str


BuildEvent = StepStarted | StepCached | StageStarted | StepImage | ImageMade
EventCallback = Callable[[BuildEvent], None]
