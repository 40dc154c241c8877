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
from imagesmith.engine.podman import BuildOutput as PodmanOutput
from imagesmith.pipeline.canonical_build import Prewarm
from imagesmith.progress import StepLine
from tests.fakes import FakeEngine

BASE = "90144066fa4dcbe873fb45db844859d36ee7b711ee9d68d97db8841f34e628d9"
APT = "RUN export SOURCE_DATE_EPOCH=1796169600  && DEBIAN_FRONTEND=noninteractive apt-get install"
#: A --no-cache build of an env.toml with apt and python packages on Docker 20.10 (the
#: long RUN instruction cut short, most of apt's output left out).
DOCKER = [
    f"Step 1/10 : FROM sha256:{BASE} AS system",
    " ---> 90144066fa4d",
    "Step 2/10 : COPY apt/ /.imagesmith-apt/",
    " ---> c9f1490d1223",
    f"Step 3/10 : {APT}",
    " ---> Running in 83f8d398a5c1",
    "0 added, 0 removed; done.",
    "Removing intermediate container 83f8d398a5c1",
    " ---> 475e333bbfc3",
    "Step 4/10 : FROM system",
    " ---> 475e333bbfc3",
    "Step 5/10 : ADD python/venv.tar.gz /opt/venv/",
    " ---> b4ab03823b9d",
    "Step 9/10 : USER 10001:10001",
    " ---> Running in d07f9813cba5",
    "Removing intermediate container d07f9813cba5",
    " ---> b42af1e6d306",
    "Successfully built b42af1e6d306",
]
#: Docker, the system stage its own build earlier (a build cache hit here), then a
#: named stage between two unnamed-stage steps (captured from other builds).
DOCKER_CACHED = [
    "Step 1/16 : FROM sha256:93212dd4d0f0fec3851affd8660eafcdd8bcbb692ad5b931d53fc03fe15f64b3 AS system",
    " ---> 93212dd4d0f0",
    "Step 4/16 : FROM system AS python",
    " ---> cfea530bc257",
    "Step 5/16 : COPY python/ /tmp/python/",
    " ---> 6683e5b250bd",
    "Step 8/16 : FROM system",
    " ---> cfea530bc257",
    'Step 10/16 : CMD ["python3"]',
    " ---> Using cache",
    " ---> 9eed44199110",
]
SYSTEM = "e67974315d54a122e0fe298918d66a6c42fe85c48355c55d11a603310afd85cd"
#: The same build on podman 4.3.
PODMAN = [
    f"[1/2] STEP 1/3: FROM sha256:{BASE} AS system",
    "[1/2] STEP 2/3: COPY apt/ /.imagesmith-apt/",
    "--> ea561789cfd",
    f"[1/2] STEP 3/3: {APT}",
    "Reading package lists...",
    "--> e67974315d5",
    f"[2/2] STEP 1/7: FROM {SYSTEM}",
    "[2/2] STEP 2/7: ADD python/venv.tar.gz /opt/venv/",
    "--> 2bf53215c0b",
    "[2/2] STEP 6/7: USER 10001:10001",
    "--> 1e307185bb4",
    "[2/2] COMMIT",
    "--> 37210bd4c84",
    "37210bd4c84af7526c883e3081eb0f75aae2386a214a162f19283ddc3037b7ec",
]
PYTHON_STAGE = "0c7ddffc99f7a5413e2d21ff8f00d3236a039f751213e8bd630ec0a82f89ec60"
#: podman, a named stage from a stage, a cache hit, and a one-stage build.
PODMAN_MORE = [
    f"--> Using cache {PYTHON_STAGE}",
    f"[2/3] STEP 1/2: FROM {PYTHON_STAGE} AS python",
    "STEP 1/2: FROM imagesmith/debian:bookworm",
]


def _docker_events(lines: list[str]) -> list[BuildEvent]:
    parse = BuildOutput()
    return [event for line in lines for event in parse(line)]


def _podman_events(lines: list[str]) -> list[BuildEvent]:
    parse = PodmanOutput()
    return [event for line in lines for event in parse(line)]


def test_docker_output_gives_steps_stage_starts_and_the_images_steps_left() -> None:
    assert _docker_events(DOCKER) == [
        StepStarted(1, 10, f"FROM sha256:{BASE} AS system"),
        StageStarted("90144066fa4d", name="system"),
        StepStarted(2, 10, "COPY apt/ /.imagesmith-apt/"),
        StepImage("c9f1490d1223", stage="system"),
        StepStarted(3, 10, APT),
        StepImage("475e333bbfc3", stage="system"),
        StepStarted(4, 10, "FROM system"),
        StageStarted("475e333bbfc3"),
        StepStarted(5, 10, "ADD python/venv.tar.gz /opt/venv/"),
        StepImage("b4ab03823b9d"),
        StepStarted(9, 10, "USER 10001:10001"),
        StepImage("b42af1e6d306"),
    ]
    assert _docker_events(DOCKER_CACHED)[-3:] == [
        StepStarted(10, 16, 'CMD ["python3"]'),
        StepCached(),
        StepImage("9eed44199110"),
    ]


def test_podman_output_gives_steps_per_stage_stage_starts_and_the_images_steps_left() -> None:
    assert _podman_events(PODMAN + PODMAN_MORE) == [
        StepStarted(1, 3, f"FROM sha256:{BASE} AS system", 1, 2),
        StageStarted(BASE, name="system"),
        StepStarted(2, 3, "COPY apt/ /.imagesmith-apt/", 1, 2),
        StepImage("ea561789cfd", stage="system"),
        StepStarted(3, 3, APT, 1, 2),
        StepImage("e67974315d5", stage="system"),
        StepStarted(1, 7, f"FROM {SYSTEM}", 2, 2),
        StageStarted(SYSTEM),
        StepStarted(2, 7, "ADD python/venv.tar.gz /opt/venv/", 2, 2),
        StepImage("2bf53215c0b"),
        StepStarted(6, 7, "USER 10001:10001", 2, 2),
        StepImage("1e307185bb4"),
        # COMMIT's --> is the image made (ImageMade, from the engine), not a step's.
        StepCached(),
        StepStarted(1, 2, f"FROM {PYTHON_STAGE} AS python", 2, 3),
        StageStarted(PYTHON_STAGE, name="python"),
        StepStarted(1, 2, "FROM imagesmith/debian:bookworm"),
    ]


def test_podman_single_stage_steps_are_the_unnamed_stages() -> None:
    """A one-stage build has no [stage/stages] prefix: its steps' images are the last
    (unnamed) stage's; a line before any step says nothing."""
    lines = [
        "--> 0123456789a",
        "STEP 1/3: FROM imagesmith/debian:bookworm",
        "STEP 2/3: RUN true",
        "--> 5d2a3c1b0e9",
        "STEP 3/3: USER 10001",
        "COMMIT lab:1.0",
        "--> 77aa88bb99c",
    ]
    assert _podman_events(lines) == [
        StepStarted(1, 3, "FROM imagesmith/debian:bookworm"),
        StepStarted(2, 3, "RUN true"),
        StepImage("5d2a3c1b0e9"),
        StepStarted(3, 3, "USER 10001"),
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
    # Step lines are marked as such: the CLI keeps them on screen, knowing no spelling.
    assert [line for line in seen if isinstance(line, StepLine)] == [
        "Step 8/16 : FROM system",
        "Step 9/16 : COPY --from=python /opt/venv /opt/venv",
    ]
    assert out.step == "STEP 9/16: COPY --from=python /opt/venv /opt/venv"
    assert out.tail[-1] == " ---> 401d30cc8cbf"


def test_prewarm_takes_stage_starts_and_the_last_stages_step_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which images are rewritten while the build goes on: every image a stage starts
    from, and the image after each step of the unnamed (last) stage."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    found: list[str] = []
    monkeypatch.setattr(Prewarm, "add", lambda self, image_id: found.append(image_id))
    prewarm = Prewarm(FakeEngine(), epoch=0, workdir=tmp_path)
    for event in _docker_events(DOCKER) + _docker_events(DOCKER_CACHED):
        prewarm.watch(event)
    for event in _podman_events(PODMAN + PODMAN_MORE):
        prewarm.watch(event)
    prewarm.watch(ImageMade("sha256:" + "4" * 64))
    assert found == [
        "90144066fa4d",  # Docker: the base
        "475e333bbfc3",  # the last stage starts from the system stage
        "b4ab03823b9d",  # and each of its steps
        "b42af1e6d306",
        "93212dd4d0f0",
        "cfea530bc257",  # a named stage starts from the system stage
        "cfea530bc257",  # so does the last stage, whose steps follow
        "9eed44199110",
        BASE,  # podman: the base (by ID), the system stage
        SYSTEM,
        "2bf53215c0b",  # the last stage's steps, not the system stage's
        "1e307185bb4",
        PYTHON_STAGE,  # a named stage starts from the python stage
    ]


def test_a_failed_multi_line_run_step_is_reported_by_its_exit_code() -> None:
    """What Docker 20.10 and podman 4.3 say when an [image] run script (one RUN whose
    command spans lines) exits 3: the headline is the code, not the script's first line."""
    from imagesmith.engine.docker import DockerEngine
    from imagesmith.engine.podman import _error_line

    script = "set -e\nexport SOURCE_DATE_EPOCH=1796256000\nexit 3"
    podman = f'STEP 2/4: RUN ["/bin/sh", "-c", "..."]\nError: building at STEP "RUN /bin/sh -c {script}": while running runtime: exit status 3\n'
    assert _error_line(podman) == "the step exited with code 3"
    assert _error_line("Error: creating build container: no space\n") == (
        "creating build container: no space"
    )
    docker = f"The command '/bin/sh -c {script}' returned a non-zero code: 3"
    error = DockerEngine._build_error(docker, OutputTail(None))
    assert str(error) == "docker build failed: the step exited with code 3"
