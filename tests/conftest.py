from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
EXAMPLE = RECIPES / "lab-analysis"


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A copy of the foundation issue's example spec, in a folder the test owns."""
    target = tmp_path / "lab"
    shutil.copytree(EXAMPLE, target)
    return target
