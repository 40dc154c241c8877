"""A full disk under a cache folder is said in one line that names the disk (issue 18).

The real proof is tests/integration/test_faults_disk_full.py (a 4 KiB tmpfs under each
cache folder, on both engines); these pin the three places that said it badly before:
pip's download (its "ERROR: Exception:" line, the traceback's first), the wheel install
(a raw "[Errno 28]"), and the canonical layout (a staging folder's path).
"""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import OperationError
from imagesmith.image import canonical
from imagesmith.inputs import venv
from imagesmith.inputs.context import fetch_wheels
from tests.unit.test_cache_integrity import _local_index
from tests.unit.test_venv import make_wheel

PIP_ENOSPC = """ERROR: Exception:
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/pip/_internal/cli/base_command.py", line 160, in exc_logging_wrapper
OSError: [Errno 28] No space left on device
"""


def _pip_says(stderr: str) -> Any:
    def run(command: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(command, 2, "", stderr)

    return run


def test_pip_running_out_of_space_is_one_line_naming_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, _ = _local_index(tmp_path)
    monkeypatch.setattr("imagesmith.inputs.context.subprocess.run", _pip_says(PIP_ENOSPC))
    with pytest.raises(OperationError) as caught:
        fetch_wheels(python)
    message = str(caught.value)
    assert message.startswith("python: the disk holding ")
    assert str(tmp_path / "cache" / "imagesmith" / "wheels") in message
    assert "is full (no space left on device)" in message
    assert "\n" not in message


def test_pip_failing_with_a_traceback_gives_its_last_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, _ = _local_index(tmp_path)
    said = PIP_ENOSPC.replace("OSError: [Errno 28] No space left on device", "KeyError: 'x'")
    monkeypatch.setattr("imagesmith.inputs.context.subprocess.run", _pip_says(said))
    with pytest.raises(OperationError, match=r"^python: fetching wheels failed: KeyError: 'x'$"):
        fetch_wheels(python)


def test_a_full_disk_while_installing_a_wheel_reaches_the_caller_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = make_wheel(tmp_path)

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(venv, "install", full)
    with pytest.raises(OSError) as caught:
        venv.install_wheels([wheel], tmp_path / "stage", python_version="3.11")
    assert caught.value.errno == errno.ENOSPC


def test_a_full_disk_under_the_canonical_layouts_names_the_cache_folder(tmp_path: Path) -> None:
    out = tmp_path / "images" / ".staging-x" / "layout"
    with pytest.raises(OperationError) as caught, canonical._staged(out):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(caught.value) == (
        f"canonical: the disk holding {tmp_path / 'images'} is full (no space left on device): "
        "free space, e.g. remove unused images, and retry"
    )
    assert not out.exists()
