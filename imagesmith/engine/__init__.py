"""Container engines behind one interface: `get_engine("auto" | "docker" | "podman")`."""

from __future__ import annotations

from imagesmith.engine.base import Engine, ImageInfo, RunResult
from imagesmith.errors import EngineError, ImagesmithError, InputError, NoLocalImageError

ENGINE_NAMES = ("auto", "docker", "podman")
DOCKER_ANSWERED = "Docker daemon answered"
NO_DOCKER = "no Docker daemon answered"

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "ImageInfo",
    "RunResult",
    "choose_engine",
    "get_engine",
    "look_in_the_other_engine",
]


def get_engine(name: str = "auto") -> Engine:
    """The engine called `name`; "auto" is Docker if a daemon answers, else podman.

    Raises InputError for an unknown name, EngineError when the engine is not usable.
    """
    return choose_engine(name)[0]


def choose_engine(name: str = "auto") -> tuple[Engine, str]:
    """The engine called `name`, and for "auto" why it was chosen ("" for a named engine)."""
    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name == "docker":
        from imagesmith.engine.docker import DockerEngine

        return DockerEngine(), ""
    if name == "podman":
        from imagesmith.engine.podman import PodmanEngine

        return PodmanEngine(), ""

    from imagesmith.engine.docker import DockerEngine, connect, docker_host
    from imagesmith.engine.podman import PodmanEngine, podman_binary

    try:
        client = connect()  # a short probe: a few seconds at most
    except EngineError:
        client = None
    if client is not None:
        return DockerEngine(client), DOCKER_ANSWERED
    if podman_binary() is not None:
        return PodmanEngine(), NO_DOCKER
    raise EngineError(
        f"no container engine: no Docker daemon answers at {docker_host()} and podman is not "
        "installed; start dockerd (scripts/start-dockerd.sh) or apt-get install podman"
    )


def look_in_the_other_engine(missing: NoLocalImageError) -> NoLocalImageError:
    """The same error, saying whether the other engine has the image (it often does)."""
    other = "podman" if missing.engine == "docker" else "docker"
    try:
        found = get_engine(other).image_exists(missing.ref)
    except ImagesmithError:
        return NoLocalImageError(missing.engine, missing.ref, note=f"{other} is not usable here")
    if found:
        note = f"{other} has it: add --engine {other} (or set IMAGESMITH_ENGINE={other})"
    else:
        note = f"{other} has no such image either: build or pull it first"
    return NoLocalImageError(missing.engine, missing.ref, note=note)
