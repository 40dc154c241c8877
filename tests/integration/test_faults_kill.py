"""SIGKILL at ten points of `lock`, `build` and `push`, on Docker and on podman (issue 18).

Each case runs the command as a subprocess in its own process group, kills the group when
the command's output (or its work folder) shows it reached the point, checks that env.lock,
env.build.json and env.pushed.json are each absent, the old version or the new one (parsed:
never partial), then runs the same command again (a plain `build` after a killed `build --no-cache`): it
succeeds, with the lock and the digest of an unkilled run of the same spec on the same
engine (`reference`).

The spec is tiny (one apt package, one pure wheel). Caches are fresh per case where the
killed step needs them cold (apt fetch, wheels, canonical rewrite), seeded from the
reference's otherwise, so a case costs a few seconds.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imagesmith.engine.base import Engine
from tests.integration.conftest import Registry
from tests.integration.faults_kit import (
    build_digest,
    cache_problems,
    environment,
    file_settled,
    imagesmith,
    line_seen,
    parsed,
    remove_recorded,
    removing_killed_leftovers,
    run_and_kill,
    tiny_spec,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.registry]

RECORDS = ("env.lock", "env.build.json", "env.pushed.json")


@dataclass(frozen=True)
class Reference:
    folder: Path
    root: Path
    lock: Any
    digest: str
    record: Any


@pytest.fixture(scope="module")
def reference(
    engine: Engine, base_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reference]:
    """An unkilled `lock` and `build` of the tiny spec on `engine`."""
    root = tmp_path_factory.mktemp(f"kill-reference-{engine.name}")
    spec = tiny_spec(root / "lab", base_image, name=unique("it-kill"))
    env = environment(root)
    locked = imagesmith(["lock", str(spec), "--engine", engine.name], env)
    assert locked.returncode == 0, locked.stderr
    built = imagesmith(["build", str(spec), "--engine", engine.name], env)
    assert built.returncode == 0, built.stderr
    yield Reference(
        spec.parent,
        root,
        parsed(spec.with_suffix(".lock")),
        build_digest(built.stdout),
        parsed(spec.with_suffix(".build.json")),
    )
    remove_recorded(engine, spec)


@dataclass(frozen=True)
class Point:
    command: str  # lock, build, build --no-cache, push
    reached: Callable[[Path], Callable[[list[str]], bool]]  # given the case's TMPDIR
    delay: float = 0.0
    seed: tuple[str, ...] = ("debs", "wheels", "venvs")  # caches copied from the reference


POINTS = {
    "lock-base": Point("lock", lambda _: line_seen("base: resolving")),
    "lock-apt-probe": Point("lock", lambda _: line_seen("apt: resolving the closure"), 0.3),
    # uv answers a warm resolution in about 0.2 s: kill at once, while it runs.
    "lock-python": Point("lock", lambda _: line_seen("python: resolving"), 0.05),
    "build-apt-fetch": Point("build", lambda _: line_seen("apt: fetching"), 0.5, seed=()),
    "build-wheels": Point("build", lambda _: line_seen("python: fetching"), 0.2, seed=("debs",)),
    "build-engine-apt": Point("build --no-cache", lambda _: line_seen("Unpacking ", 5)),
    "build-engine-final": Point("build --no-cache", lambda _: line_seen("venv.tar.gz"), 0.2),
    "build-canonical": Point("build", lambda _: line_seen("canonical: rewriting"), 0.3),
    "build-load": Point("build", lambda tmp: file_settled(tmp, "canonical.tar")),
    "push": Point("push", lambda _: line_seen("push: blob", 2)),
}


def _records(folder: Path) -> dict[str, Any]:
    return {name: parsed(folder / name) for name in RECORDS}


@pytest.mark.parametrize("point", list(POINTS))
def test_killed_then_run_again_gives_the_unkilled_result(
    point: str,
    engine: Engine,
    base_image: str,
    reference: Reference,
    registry: Registry,
    tmp_path: Path,
) -> None:
    where = POINTS[point]
    spec_name = "env.toml"
    if where.command == "push":
        # The reference's own folder and cache: built, never pushed.
        folder, root = reference.folder, reference.root
        env = environment(
            root,
            IMAGESMITH_REGISTRY_USER=registry.username,
            IMAGESMITH_REGISTRY_PASSWORD=registry.password,
        )
        args = ["push", str(folder / spec_name), "--to", f"{registry.host}/faults/{engine.name}"]
    else:
        folder, root = tmp_path / "lab", tmp_path
        folder.mkdir()
        shutil.copy(reference.folder / spec_name, folder / spec_name)
        if where.command != "lock":
            shutil.copy(reference.folder / "env.lock", folder / "env.lock")
        for cache in where.seed:
            source = reference.root / "cache" / "imagesmith" / cache
            if source.is_dir():
                shutil.copytree(source, root / "cache" / "imagesmith" / cache)
        env = environment(root)
        args = [*where.command.split(), str(folder / spec_name), "--engine", engine.name]
    before = _records(folder)

    with removing_killed_leftovers(engine, base_image):
        killed = run_and_kill(args, env, where.reached(root / "tmp"), delay=where.delay)
    told = "".join(killed.stderr)
    assert killed.killed, f"never reached {point}; exit {killed.returncode}:\n{told}"
    assert killed.returncode == -9, told  # killed, not finished before the kill

    after_kill = _records(folder)  # parses, or fails here: never partial
    # The same command again; a killed --no-cache build is followed by a plain one, which
    # also proves the engine's build cache holds nothing half-made by the killed build.
    again = imagesmith([a for a in args if a != "--no-cache"], env)
    assert again.returncode == 0, again.stderr
    final = _records(folder)
    for name in RECORDS:
        assert after_kill[name] in (before[name], final[name]), f"{name} after the kill at {point}"

    assert final["env.lock"] == reference.lock
    building = where.command.startswith("build")
    # The build after the kill removed the killed one's scratch folders (imagesmith.cache.scratch):
    # its staging, partial wheel and tree folders in the cache, its folder in TMPDIR.
    assert cache_problems(root / "cache" / "imagesmith", killed=not building) == []
    if building:
        assert sorted((root / "tmp").glob("imagesmith-build-*")) == []
        assert build_digest(again.stdout) == reference.digest
        assert final["env.build.json"]["digest"] == reference.digest
        assert final["env.build.json"]["image_id"] == reference.record["image_id"]
    if where.command == "push":
        assert final["env.pushed.json"]["digest"] == reference.digest
