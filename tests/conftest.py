from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
#: The rich spec most tests use: the lab-analysis recipe as it was before it became
#: runnable as shipped, kept as it was (one GPU, a `[job] command` naming a file that is not
#: in the image, `[image] copy` commented out) because the tests exercise exactly that:
#: GPU requests, /dev/shm, commands passed word for word. tests/fixtures/example/README.md.
EXAMPLE = REPO / "tests" / "fixtures" / "example"


@pytest.fixture
def example_dir(tmp_path: Path) -> Path:
    """A copy of the foundation issue's example spec (`EXAMPLE`), in a folder the test owns."""
    target = tmp_path / "lab"
    shutil.copytree(EXAMPLE, target)
    return target


INTEGRATION = REPO / "tests" / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tier is the folder: every test under tests/integration is `integration`, so
    `-m "not integration"` (or `tests/unit`) never reaches an engine."""
    for item in items:
        if Path(str(item.path)).is_relative_to(INTEGRATION):
            item.add_marker(pytest.mark.integration)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under scripts/test.sh everything is installed: any skip is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("IMAGESMITH_REQUIRE_ENGINES") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (
            f"skipped where scripts/test.sh should have installed everything: {reason}"
        )
