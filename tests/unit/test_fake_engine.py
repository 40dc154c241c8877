"""`FakeEngine` (tests/fakes.py) keeps the conventions engine/base.py states for every engine,
so that what the orchestration tests prove with it holds for Docker and podman too."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine import get_engine
from imagesmith.engine.base import RunResult
from imagesmith.engine.events import BuildEvent, ImageMade, StepStarted
from imagesmith.errors import BuildError, EngineError, NoLocalImageError
from imagesmith.image.oci import open_image
from imagesmith.render.containerfile import quote_value
from tests.fakes import FakeEngine, docker_archive, layer_from, stage_config
from tests.support import ImageTracker


def context(folder: Path, text: str = "FROM scratch\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Containerfile").write_text(text)
    (folder / "file.txt").write_text("hello\n")
    return folder


def test_a_build_is_tagged_and_its_id_is_its_configs_digest(tmp_path: Path) -> None:
    engine = FakeEngine()
    image_id = engine.build(context=context(tmp_path / "c"), tags=["lab/x:1"], labels={"a": "b"})
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert engine.image_exists("lab/x:1") and engine.image_exists(image_id)
    info = engine.inspect_image("lab/x:1")
    assert (info.id, info.repo_tags, dict(info.labels)) == (image_id, ("lab/x:1",), {"a": "b"})
    archive = tmp_path / "saved.tar"
    engine.save("lab/x:1", archive)
    with open_image(archive) as src:
        assert len(src.layer_names) == 1
        assert "sha256:" + hashlib.sha256(src.config).hexdigest() == image_id
    # Loading what was saved gives the same image; another context another one.
    assert FakeEngine().load(archive) == image_id
    other = engine.build(context=context(tmp_path / "d", "FROM scratch\nENV A=1\n"))
    assert other != image_id and engine.tags_of(other) == []


def test_missing_images_follow_the_engine_conventions(tmp_path: Path) -> None:
    engine = FakeEngine()
    assert not engine.image_exists("nothing:1")
    engine.remove_image("nothing:1")  # no error
    with pytest.raises(NoLocalImageError):
        engine.inspect_image("nothing:1")
    with pytest.raises(EngineError):
        engine.pull("registry.example.edu/nothing:1")


def test_an_injected_build_failure_tags_nothing_and_leaves_an_intermediate_image(
    tmp_path: Path,
) -> None:
    engine = FakeEngine(fail_build_at=2)
    first = engine.build(context=context(tmp_path / "c"), tags=["lab/x:1"])
    with pytest.raises(BuildError, match="step 2/2"):
        engine.build(context=context(tmp_path / "c"), tags=["lab/x:2"])
    assert engine.tags == {"lab/x:1": first} and len(engine.builds) == 2
    assert [image.partial for image in engine.images.values()].count(True) == 1


def test_removing_a_tag_keeps_an_image_another_tag_names(tmp_path: Path) -> None:
    engine = FakeEngine()
    image_id = engine.build(context=context(tmp_path / "c"), tags=["a:1", "b:1"])
    engine.remove_image("a:1")
    assert engine.image_exists(image_id) and engine.tags_of(image_id) == ["b:1"]
    with pytest.raises(EngineError, match="use force"):
        engine.remove_image(image_id)
    engine.remove_image(image_id, force=True)
    assert engine.images == {} and engine.tags == {}


def test_run_answers_from_its_canned_output_and_pull_from_its_registry(tmp_path: Path) -> None:
    archive, config = docker_archive(
        {"architecture": "amd64", "os": "linux"}, [layer_from({"etc/os-release": b"x\n"})]
    )
    engine = FakeEngine(
        run_output={("cat", "/etc/os-release"): RunResult(0, "x\n")},
        registry={"registry.example.edu/base:1": (archive, config)},
    )
    pulled = engine.pull("registry.example.edu/base:1")
    assert engine.run(pulled, ["cat", "/etc/os-release"]) == RunResult(0, "x\n")
    assert engine.run(pulled, ["true"]) == RunResult(0, "")
    with pytest.raises(NoLocalImageError):
        engine.run("nothing:1", ["true"])


def test_the_image_tracker_removes_what_a_test_made(tmp_path: Path) -> None:
    engine = FakeEngine()
    images = ImageTracker(engine)
    made = images.add(engine.build(context=context(tmp_path / "c"), tags=[images.add("t:1")]))
    assert engine.image_exists(made)
    assert images.cleanup() == [] and engine.images == {}


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The fake registered under the `imagesmith.engines` entry points, as a plug-in is."""
    info = tmp_path / "fake_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[imagesmith.engines]\nfake = tests.fakes:FakeEngine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("fake_engine", None)


def test_the_fake_plugs_in_through_the_engine_registry(registered: None) -> None:
    engine = get_engine("fake")
    assert isinstance(engine, FakeEngine) and engine.name == "fake"


ODD = 'a "q" $HOME \\ ünï'


def test_the_last_stage_config_follows_env_label_user_workdir_and_cmd() -> None:
    containerfile = (
        "FROM debian@sha256:00 AS system\n"
        'ENV A=1 B="two words"\n'
        f"LABEL {quote_value('x')}={quote_value('1')} \\\n    {quote_value('y')}={quote_value(ODD)}\n"
        "RUN true\n"
        "FROM system\n"
        "ENV A=3\nUSER 10001:10001\nWORKDIR /work\n"
        'CMD ["python3", "-c", "print(1)"]\n'
    )
    assert stage_config(containerfile) == {
        "Env": ["A=3", "B=two words"],
        "Labels": {"x": "1", "y": ODD},
        "User": "10001:10001",
        "WorkingDir": "/work",
        "Cmd": ["python3", "-c", "print(1)"],
    }
    assert stage_config(containerfile, "system") == {
        "Env": ["A=1", "B=two words"],
        "Labels": {"x": "1", "y": ODD},
    }


def test_a_build_announces_its_steps_and_then_the_image_it_made(tmp_path: Path) -> None:
    engine = FakeEngine()
    lines: list[str] = []
    events: list[BuildEvent] = []
    image_id = engine.build(
        context=context(tmp_path / "c"), on_line=lines.append, on_event=events.append
    )
    assert events == [
        StepStarted(1, 2, "FROM scratch"),
        StepStarted(2, 2, "COPY . /imagesmith-fake/"),
        ImageMade(image_id),
    ]
    assert lines == ["STEP 1/2: FROM scratch", "STEP 2/2: COPY . /imagesmith-fake/"]
