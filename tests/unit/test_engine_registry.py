"""Engines are found by name: the built-in two, then the `imagesmith.engines` entry points
another package registers (here a package made on the fly in a folder on sys.path)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine import engine_names, get_engine
from imagesmith.errors import EngineError, InputError

PLUGIN = '''
from imagesmith.engine.podman import PodmanEngine


class LabEngine(PodmanEngine):
    """A lab's own engine: podman with a name of its own (no podman needed to make it)."""

    name = "lab"

    def __init__(self) -> None:
        super().__init__(binary="/usr/bin/true")


class NotAnEngine:
    pass
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "lab_engine.py").write_text(PLUGIN)
    info = tmp_path / "lab_engine-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-engine\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[imagesmith.engines]\nlab = lab_engine:LabEngine\nodd = lab_engine:NotAnEngine\n"
        "gone = lab_engine_missing:Engine\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("lab_engine", None)


def test_a_registered_engine_is_found_by_its_name(plugin: Path) -> None:
    assert engine_names() == ("auto", "docker", "podman", "gone", "lab", "odd")
    engine = get_engine("lab")
    assert type(engine).__name__ == "LabEngine" and engine.name == "lab"


def test_a_broken_plugin_is_one_line(plugin: Path) -> None:
    with pytest.raises(EngineError, match=r"^engine 'gone' \(lab_engine_missing:Engine\) cannot"):
        get_engine("gone")
    with pytest.raises(EngineError, match=r"^engine 'odd' is not an imagesmith Engine"):
        get_engine("odd")


def test_an_unknown_name_lists_the_choices(plugin: Path) -> None:
    with pytest.raises(InputError) as caught:
        get_engine("buildkit")
    assert str(caught.value) == (
        "unknown engine 'buildkit': choose one of auto, docker, podman, gone, lab, odd"
    )
    result = CliRunner().invoke(app, ["inspect", "x:1", "--engine", "buildkit"])
    assert result.exit_code == 2
    assert "unknown engine 'buildkit'" in result.output and "Traceback" not in result.output
