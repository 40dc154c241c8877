"""An unchanged build runs no engine build, on Docker and podman, even right after a
`--no-cache` build, and is right again after its image was removed (issue 18, "no-op at
once")."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build

pytestmark = pytest.mark.integration


@pytest.fixture
def tiny_spec(
    engine: Engine, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Spec]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = f"it-noop-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base_image}"\n'
        '[env]\nMARK = "noop"\n[image]\ncmd = ["/bin/sh", "-c", "echo $MARK"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    yield spec
    record = spec.path.with_suffix(".build.json")
    if record.exists():
        built = json.loads(record.read_text())
        for ref in (*built["tags"], built["image_id"]):
            with contextlib.suppress(EngineError):
                engine.remove_image(ref, force=True)


def test_second_build_runs_no_engine_build_and_recovers_a_removed_image(
    engine: Engine, tiny_spec: Spec
) -> None:
    first_lines: list[str] = []
    # --no-cache first: on podman the next build used to pick an older look-alike chain
    # from the engine's cache and redo steps; now it does not reach the engine at all.
    first = build(tiny_spec, engine, no_cache=True, on_line=first_lines.append)
    assert first_lines  # the engine built, the rewrite ran

    lines: list[str] = []
    second = build(tiny_spec, engine, on_line=lines.append)
    assert lines == []  # no lock, no build output, no rewrite: answered from the record
    assert (second.digest, second.image_id, second.tags) == (
        first.digest,
        first.image_id,
        first.tags,
    )
    assert second.size == first.size
    print(f"{engine.name}: no-op build() took {second.seconds:.3f} s")

    for ref in (*first.tags, first.image_id):  # podman drops an image with its last tag
        with contextlib.suppress(EngineError):
            engine.remove_image(ref, force=True)
    assert not engine.image_exists(first.image_id)
    lines.clear()
    third = build(tiny_spec, engine, on_line=lines.append)
    assert lines  # it built again
    assert third.digest == first.digest and third.image_id == first.image_id
    assert engine.image_exists(first.image_id)
    for tag in first.tags:
        assert engine.image_exists(tag)
