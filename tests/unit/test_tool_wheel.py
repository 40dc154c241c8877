"""The imagesmith that wrote a lock, as a wheel: the same bytes every time, installable,
and pinned by the locks this imagesmith writes."""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

import imagesmith
from imagesmith.errors import InputError, LockError
from imagesmith.inputs.tool_wheel import build_wheel, fetch_tool_wheel, tool_digest, wheel_name
from imagesmith.model.lock import write_lock
from tests.fixtures.make_lock import make_lock

PACKAGE = Path(imagesmith.__file__).resolve().parent


def test_the_wheel_is_the_same_bytes_every_time_and_holds_the_running_package() -> None:
    first, second = build_wheel(), build_wheel()
    assert first == second
    assert tool_digest() == "sha256:" + hashlib.sha256(first).hexdigest()
    wheel = zipfile.ZipFile(io.BytesIO(first))
    names = wheel.namelist()
    assert names == sorted(names[:-4]) + names[-4:]  # package files sorted, then dist-info
    for source in PACKAGE.rglob("*.py"):
        if "__pycache__" in source.parts:
            continue
        name = f"imagesmith/{source.relative_to(PACKAGE).as_posix()}"
        assert wheel.read(name) == source.read_bytes(), name
    # Package data (schemas, recipes) comes too, links to folders followed.
    assert "imagesmith/schemas/env.schema.json" in names
    assert "imagesmith/recipes/lab-analysis/env.toml" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert {i.date_time for i in wheel.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.compress_type for i in wheel.infolist()} == {zipfile.ZIP_STORED}


def test_its_record_is_right(tmp_path: Path) -> None:
    wheel = zipfile.ZipFile(io.BytesIO(build_wheel()))
    info = f"imagesmith-{imagesmith.__version__}.dist-info"
    record = wheel.read(f"{info}/RECORD").decode().splitlines()
    assert record[-1] == f"{info}/RECORD,,"
    for line in record[:-1]:
        name, digest, size = line.split(",")
        data = wheel.read(name)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == f"sha256={expected.decode()}" and int(size) == len(data)
    assert f"Version: {imagesmith.__version__}" in wheel.read(f"{info}/METADATA").decode()
    assert "imagesmith = imagesmith.cli:main" in wheel.read(f"{info}/entry_points.txt").decode()


def test_pip_installs_it(tmp_path: Path) -> None:
    """pip (offline, no dependencies) installs it; the installed package is this one."""
    wheel = tmp_path / wheel_name()
    wheel.write_bytes(build_wheel())
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip, "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    installed = target / "imagesmith" / "model" / "lock.py"
    assert installed.read_bytes() == (PACKAGE / "model" / "lock.py").read_bytes()
    version = subprocess.run(
        [sys.executable, "-c", "import imagesmith; print(imagesmith.__version__)"],
        env={"PYTHONPATH": str(target)},
        check=True,
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == imagesmith.__version__


def test_fetch_tool_says_what_is_missing(tmp_path: Path) -> None:
    spec = tmp_path / "env.toml"
    spec.write_text('name = "x"\n[base]\nimage = "debian:bookworm"\n')
    write_lock(make_lock(spec), tmp_path / "env.lock")  # a lock made by hand: no wheel
    with pytest.raises(LockError, match="env.lock names no imagesmith wheel: it was written"):
        fetch_tool_wheel(spec, repository=None, output=tmp_path / "out")
    write_lock(replace(make_lock(spec), imagesmith_wheel=tool_digest()), tmp_path / "env.lock")
    with pytest.raises(InputError, match=r"^no repository: env.toml has no \[registry\]"):
        fetch_tool_wheel(spec, repository=None, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
