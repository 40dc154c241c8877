"""The note of the system stage's image (`system_stage.remember_built` / `built_here`): a
build starts from the noted image only while the engine holds it, and a note that is
unreadable or malformed, or one of another epoch's stage, is no note. Real engines:
tests/integration/test_lock_build.py (a pin change after a --no-cache build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagesmith.pipeline.system_stage import built_here, remember_built, stage_key
from tests.fakes import FakeEngine
from tests.support import locked, write_spec


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _held_image(engine: FakeEngine, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Containerfile").write_text("FROM scratch\n")
    return engine.build(context=folder)


def test_a_noted_stage_is_used_while_the_engine_holds_it(tmp_path: Path) -> None:
    lock = locked(write_spec(tmp_path / "lab"))
    engine = FakeEngine()
    assert built_here(engine, lock, 1) is None  # nothing noted yet
    image = _held_image(engine, tmp_path / "ctx")
    remember_built(engine, lock, 1, image)
    assert built_here(engine, lock, 1) == image
    assert built_here(engine, lock, 2) is None  # another epoch is another stage
    engine.remove_image(image, force=True)
    assert built_here(engine, lock, 1) is None  # pruned: built again


@pytest.mark.parametrize(
    "content", [b"", b"sha256:abc", b"\xff\xfe", b"sha256:" + b"G" * 64, b"../../etc/passwd"]
)
def test_a_damaged_note_is_no_note(tmp_path: Path, content: bytes) -> None:
    lock = locked(write_spec(tmp_path / "lab"))
    engine = FakeEngine()
    image = _held_image(engine, tmp_path / "ctx")
    remember_built(engine, lock, 1, image)
    (note,) = (tmp_path / "cache" / "imagesmith" / "system-stages").glob(
        f"{stage_key(lock, 1)}.*-image"
    )
    note.write_bytes(content)
    assert built_here(engine, lock, 1) is None


def test_a_note_that_cannot_be_written_is_skipped(tmp_path: Path) -> None:
    lock = locked(write_spec(tmp_path / "lab"))
    engine = FakeEngine()
    (tmp_path / "cache" / "imagesmith").mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache" / "imagesmith" / "system-stages").write_text("a file, not a folder")
    remember_built(engine, lock, 1, _held_image(engine, tmp_path / "ctx"))  # no error
    assert built_here(engine, lock, 1) is None
