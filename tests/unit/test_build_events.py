"""Each engine reads its own build output into typed events; the pipeline reacts to those.

The output lines are captured from real builds (Docker 20.10's classic builder, podman 4.3)
of imagesmith's multi-stage Containerfile.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesmith.engine.base import OutputTail
from imagesmith.engine.docker import BuildOutput
from imagesmith.engine.events import (
    BuildEvent,
    ImageMade,
    StageStarted,
    StepCached,
    StepImage,
    StepStarted,
)
from imagesmith.engine.podman import build_events
from imagesmith.pipeline.canonical_build import Prewarm
from tests.fakes import FakeEngine

BASE = "93212dd4d0f0fec3851affd8660eafcdd8bcbb692ad5b931d53fc03fe15f64b3"
DOCKER = [
    f"Step 1/16 : FROM sha256:{BASE} AS system",
    " ---> 93212dd4d0f0",
    "Step 2/16 : ARG SOURCE_DATE_EPOCH",
    " ---> Running in 1a2562963ed2",
    "Removing intermediate container 1a2562963ed2",
    " ---> 5d1c0a7e3b2f",
    "Step 4/16 : FROM system AS python",
    " ---> cfea530bc257",
    "Step 5/16 : COPY python/ /tmp/python/",
    " ---> 6683e5b250bd",
    "Step 8/16 : FROM system",
    " ---> cfea530bc257",
    "Step 9/16 : COPY --from=python /opt/venv /opt/venv",
    " ---> Running in 02442a380869",
    " ---> 401d30cc8cbf",
    'Step 10/16 : CMD ["python3"]',
    " ---> Using cache",
    " ---> 9eed44199110",
    "Successfully built 9eed44199110",
]
PYTHON_STAGE = "0c7ddffc99f7a5413e2d21ff8f00d3236a039f751213e8bd630ec0a82f89ec60"
PODMAN = [
    "[1/3] STEP 1/2: FROM imagesmith/debian:bookworm AS system",
    "[1/3] STEP 2/2: RUN echo a > /a",
    f"--> Using cache {PYTHON_STAGE}",
    "--> 0c7ddffc99f",
    f"[2/3] STEP 1/2: FROM {PYTHON_STAGE} AS python",
    "[2/3] STEP 2/2: RUN echo b > /b",
    "--> 5f0a2c9e1d7",
    f"[3/3] STEP 1/3: FROM sha256:{PYTHON_STAGE}",
    "STEP 1/2: FROM imagesmith/debian:bookworm",
]


def _docker_events(lines: list[str]) -> list[BuildEvent]:
    parse = BuildOutput()
    return [event for line in lines for event in parse(line)]


def test_docker_output_gives_steps_stage_starts_and_the_images_steps_left() -> None:
    assert _docker_events(DOCKER) == [
        StepStarted(1, 16, f"FROM sha256:{BASE} AS system"),
        StageStarted("93212dd4d0f0", name="system"),
        StepStarted(2, 16, "ARG SOURCE_DATE_EPOCH"),
        StepImage("5d1c0a7e3b2f", stage="system"),
        StepStarted(4, 16, "FROM system AS python"),
        StageStarted("cfea530bc257", name="python"),
        StepStarted(5, 16, "COPY python/ /tmp/python/"),
        StepImage("6683e5b250bd", stage="python"),
        StepStarted(8, 16, "FROM system"),
        StageStarted("cfea530bc257"),
        StepStarted(9, 16, "COPY --from=python /opt/venv /opt/venv"),
        StepImage("401d30cc8cbf"),
        StepStarted(10, 16, 'CMD ["python3"]'),
        StepCached(),
        StepImage("9eed44199110"),
    ]


def test_podman_output_gives_steps_per_stage_and_the_stages_built_from_stages() -> None:
    events = [event for line in PODMAN for event in build_events(line)]
    assert events == [
        StepStarted(1, 2, "FROM imagesmith/debian:bookworm AS system", 1, 3),
        StepStarted(2, 2, "RUN echo a > /a", 1, 3),
        StepCached(),
        StepStarted(1, 2, f"FROM {PYTHON_STAGE} AS python", 2, 3),
        StageStarted(PYTHON_STAGE, name="python"),
        StepStarted(2, 2, "RUN echo b > /b", 2, 3),
        StepStarted(1, 3, f"FROM sha256:{PYTHON_STAGE}", 3, 3),
        StageStarted(PYTHON_STAGE),
        StepStarted(1, 2, "FROM imagesmith/debian:bookworm"),
    ]


def test_the_tail_passes_every_line_then_its_events_and_keeps_the_step() -> None:
    seen: list[object] = []
    out = OutputTail(seen.append, parse=BuildOutput(), on_event=seen.append)
    out.feed("Step 8/16 : FROM system\n ---> cfea530bc257\n")
    out.feed("Step 9/16 : COPY --from=python /opt/venv /opt/venv\n ---> Running")
    out.feed(" in 02442a380869\nprogress 10%\rprogress 100%\n ---> 401d30cc8cbf")
    out.flush()
    out.announce(ImageMade("sha256:" + "4" * 64))
    assert seen == [
        "Step 8/16 : FROM system",
        StepStarted(8, 16, "FROM system"),
        " ---> cfea530bc257",
        StageStarted("cfea530bc257"),
        "Step 9/16 : COPY --from=python /opt/venv /opt/venv",
        StepStarted(9, 16, "COPY --from=python /opt/venv /opt/venv"),
        " ---> Running in 02442a380869",
        "progress 100%",
        " ---> 401d30cc8cbf",
        StepImage("401d30cc8cbf"),
        ImageMade("sha256:" + "4" * 64),
    ]
    assert out.step == "STEP 9/16: COPY --from=python /opt/venv /opt/venv"
    assert out.tail[-1] == " ---> 401d30cc8cbf"


def test_prewarm_takes_stage_starts_and_the_last_stages_step_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which images are rewritten while the build goes on: every image a stage starts
    from; on Docker also the image after each step of the unnamed (last) stage."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found: list[str] = []
    monkeypatch.setattr(Prewarm, "add", lambda self, image_id: found.append(image_id))
    prewarm = Prewarm(FakeEngine(), epoch=0, workdir=tmp_path)
    for event in _docker_events(DOCKER):
        prewarm.watch(event)
    for line in PODMAN:
        for event in build_events(line):
            prewarm.watch(event)
    prewarm.watch(ImageMade("sha256:" + "4" * 64))
    assert found == [
        "93212dd4d0f0",
        "cfea530bc257",  # the python stage starts from the system stage
        "cfea530bc257",  # so does the last stage, whose steps follow
        "401d30cc8cbf",
        "9eed44199110",
        PYTHON_STAGE,  # podman: the python stage starts from the system stage
        PYTHON_STAGE,  # the last stage from the python one
    ]
