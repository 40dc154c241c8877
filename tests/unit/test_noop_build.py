"""A build with nothing to do is answered from env.build.json without running the engine.

The engine here is a stub that holds images by ID, and the build past the record
(`build_canonical`: context, engine build, canonical rewrite) is replaced by one that
raises `WouldBuild`, so no network and no engine is needed. Its real counterpart, on Docker and
podman, is tests/integration/test_noop_build.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from imagesmith.engine.base import Engine, ImageInfo
from imagesmith.errors import EngineError, StaleLockError
from imagesmith.model.lock import Lock, write_lock
from imagesmith.model.records import BuildRecord, build_record_path, read_build_record, write_record
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build, build_inputs, image_tags
from imagesmith.pipeline.canonical_build import layout_dir
from tests.fixtures.make_lock import make_lock

IMAGE_ID = "sha256:" + "c" * 64
DIGEST = "sha256:" + "d" * 64


class WouldBuild(Exception):
    """The build went past the record, to the engine."""


class StubEngine:
    name = "docker"

    def __init__(self, images: dict[str, Sequence[str]]) -> None:
        self.images = dict(images)  # image ID -> its tags
        self.inspected: list[str] = []

    def inspect_image(self, ref: str) -> ImageInfo:
        self.inspected.append(ref)
        if ref not in self.images:
            raise EngineError(f"docker: no local image {ref}")
        return ImageInfo(id=ref, repo_tags=tuple(self.images[ref]), size=123_000_000)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a no-op build called engine.{name}")


@pytest.fixture
def built(
    example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Spec, Lock, StubEngine]:
    """A spec, its lock, a record of its last build, the layout in the cache, the image
    in the (stub) engine: everything a previous build leaves."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def would_build(*_: Any, **__: Any) -> Any:
        raise WouldBuild

    monkeypatch.setattr("imagesmith.pipeline.build.build_canonical", would_build)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    spec_path = example_dir / "env.toml"
    (example_dir / "scripts").mkdir()
    (example_dir / "scripts" / "fit.py").write_text("print('fit')\n")
    spec_path.write_text(
        spec_path.read_text().replace(
            '# copy = [{ src = "scripts/"', 'copy = [{ src = "scripts/"', 1
        )
    )
    spec = load_spec(spec_path)
    lock = make_lock(spec_path)
    write_lock(lock, spec.lock_path)
    tags = image_tags(lock, ())
    engine = StubEngine({IMAGE_ID: [f"localhost/{t}" for t in tags]})  # podman's spelling
    layout = layout_dir(DIGEST)
    layout.mkdir(parents=True)
    (layout / "index.json").write_text("{}")
    write_record(
        build_record_path(spec.path),
        BuildRecord(
            image_id=IMAGE_ID,
            digest=DIGEST,
            tags=tags,
            engine="docker",
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
            inputs=build_inputs(lock, cast(Engine, engine)),
        ),
    )
    return spec, lock, engine


def test_an_unchanged_build_answers_from_the_record_with_one_inspect(
    built: tuple[Spec, Lock, StubEngine],
) -> None:
    spec, lock, engine = built
    result = build(spec, cast(Engine, engine))
    assert (result.image_id, result.digest, result.engine) == (IMAGE_ID, DIGEST, "docker")
    assert result.tags == image_tags(lock, ()) and result.size == 123_000_000
    assert result.lock_hash == lock.lock_hash and not result.locked
    assert engine.inspected == [IMAGE_ID]


def test_a_removed_image_is_built_again(built: tuple[Spec, Lock, StubEngine]) -> None:
    spec, _, engine = built
    engine.images.clear()
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine))


def test_a_moved_tag_is_built_again(built: tuple[Spec, Lock, StubEngine]) -> None:
    spec, _, engine = built
    engine.images[IMAGE_ID] = list(engine.images[IMAGE_ID])[1:]
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine))


def test_no_cache_always_builds(built: tuple[Spec, Lock, StubEngine]) -> None:
    spec, _, engine = built
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine), no_cache=True)


def test_another_epoch_or_another_tag_builds(
    built: tuple[Spec, Lock, StubEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _, engine = built
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine), extra_tags=["lab/analysis:extra"])
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine))


def test_a_layout_gone_from_the_cache_is_built_again(
    built: tuple[Spec, Lock, StubEngine],
) -> None:
    spec, _, engine = built
    (layout_dir(DIGEST) / "index.json").unlink()  # push could not send it
    with pytest.raises(WouldBuild):
        build(spec, cast(Engine, engine))


def test_a_record_of_another_engine_or_of_an_older_imagesmith_builds(
    built: tuple[Spec, Lock, StubEngine],
) -> None:
    spec, lock, engine = built
    record = read_build_record(spec.path, lock.lock_hash)
    assert record is not None
    for other in (
        BuildRecord(**{**record.__dict__, "engine": "podman"}),
        BuildRecord(**{**record.__dict__, "inputs": ""}),  # written before this field
    ):
        write_record(build_record_path(spec.path), other)
        with pytest.raises(WouldBuild):
            build(spec, cast(Engine, engine))


def test_a_changed_copied_file_never_reaches_the_record(
    built: tuple[Spec, Lock, StubEngine],
) -> None:
    spec, _, engine = built
    (spec.folder / "scripts" / "fit.py").write_text("print('changed')\n")
    with pytest.raises(StaleLockError, match="files that \\[image\\].copy takes changed"):
        build(spec, cast(Engine, engine))
    assert engine.inspected == []
