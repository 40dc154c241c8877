"""Container engines behind one interface: `get_engine("auto" | "docker" | "podman" | ...)`.

Engines are found by name: the two that come with imagesmith, then any a package
registers under the `imagesmith.engines` entry-point group (an `Engine` subclass that
takes no arguments), the way repo2docker finds repo2podman. A third engine (buildah, a
remote BuildKit) then lives in its own package, or in `engine/`, and nothing else
changes. "auto" chooses between the built-in two.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from imagesmith.engine.base import Engine, ImageInfo, RunResult
from imagesmith.errors import EngineError, ImagesmithError, InputError, NoLocalImageError

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

ENTRY_POINT_GROUP = "imagesmith.engines"
BUILTIN = {
    "docker": "imagesmith.engine.docker:DockerEngine",
    "podman": "imagesmith.engine.podman:PodmanEngine",
}
ENGINE_NAMES = ("auto", *BUILTIN)
"""The names that always exist; `engine_names()` adds the registered ones."""
DOCKER_ANSWERED = "Docker daemon answered"
NO_DOCKER = "no Docker daemon answered"

__all__ = [
    "ENGINE_NAMES",
    "Engine",
    "ImageInfo",
    "RunResult",
    "choose_engine",
    "engine_names",
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
    if name != "auto":
        return _factory(name)(), ""

    from imagesmith.engine.docker import DockerEngine, docker_host
    from imagesmith.engine.podman import PodmanEngine, podman_binary

    try:
        return DockerEngine(), DOCKER_ANSWERED  # a short probe: a few seconds at most
    except EngineError:
        pass
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


def _registered() -> dict[str, EntryPoint]:
    """Engines other packages register (read only when a name is not built in)."""
    from importlib import metadata  # 10+ ms to import: not on every command's path

    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def engine_names() -> tuple[str, ...]:
    """Every name `--engine` takes: auto, the built-in engines, the registered ones."""
    return (*ENGINE_NAMES, *sorted(set(_registered()) - set(BUILTIN)))


def _factory(name: str) -> Callable[[], Engine]:
    if name in BUILTIN:
        module, _, attribute = BUILTIN[name].partition(":")
        found: object = getattr(importlib.import_module(module), attribute)
    else:
        entry = _registered().get(name)
        if entry is None:
            raise InputError(f"unknown engine {name!r}: choose one of {', '.join(engine_names())}")
        try:
            found = entry.load()
        except Exception as exc:  # a broken plug-in: one line, never a traceback
            raise EngineError(f"engine {name!r} ({entry.value}) cannot be loaded: {exc}") from None
    if not (isinstance(found, type) and issubclass(found, Engine)):
        raise EngineError(f"engine {name!r} is not an imagesmith Engine ({found!r})")
    return found
