"""Container engines behind one interface: `get_engine("auto" | "docker" | "podman")`."""

from __future__ import annotations

from imagesmith.engine.base import Engine, ImageInfo, RunResult
from imagesmith.errors import EngineError, InputError

ENGINE_NAMES = ("auto", "docker", "podman")

__all__ = ["ENGINE_NAMES", "Engine", "ImageInfo", "RunResult", "get_engine"]


def get_engine(name: str = "auto") -> Engine:
    """The engine called `name`; "auto" is Docker if a daemon answers, else podman.

    Raises InputError for an unknown name, EngineError when the engine is not usable.
    """
    if name not in ENGINE_NAMES:
        raise InputError(f"unknown engine {name!r}: choose one of {', '.join(ENGINE_NAMES)}")
    if name == "docker":
        from imagesmith.engine.docker import DockerEngine

        return DockerEngine()
    if name == "podman":
        from imagesmith.engine.podman import PodmanEngine

        return PodmanEngine()

    from imagesmith.engine.docker import DockerEngine, connect, docker_host
    from imagesmith.engine.podman import PodmanEngine, podman_binary

    try:
        client = connect()  # a short probe: a few seconds at most
    except EngineError:
        client = None
    if client is not None:
        return DockerEngine(client)
    if podman_binary() is not None:
        return PodmanEngine()
    raise EngineError(
        f"no container engine: no Docker daemon answers at {docker_host()} and podman is not "
        "installed; start dockerd (scripts/start-dockerd.sh) or apt-get install podman"
    )
