from __future__ import annotations

import os
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under scripts/test.sh every engine is installed: an integration skip is a failure."""
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("IMAGESMITH_REQUIRE_ENGINES") == "1"
        and item.get_closest_marker("integration") is not None
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped where scripts/test.sh should have installed everything: {reason}"
        )
