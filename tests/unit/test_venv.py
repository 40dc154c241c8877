"""Installing wheels on the host into the tree the image's /opt/venv holds."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from imagesmith.errors import OperationError
from imagesmith.inputs.context import python_tree, python_tree_cached
from imagesmith.inputs.venv import _destination, install_wheels
from imagesmith.model.lock import PythonLock, PythonPackage

SITE = "opt/venv/lib/python3.11/site-packages"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def make_wheel(
    folder: Path, name: str = "demo", version: str = "1.0", extra: dict[str, bytes] | None = None
) -> Path:
    """A small but complete wheel: a package, an entry point, a data script, a header."""
    dist_info = f"{name}-{version}.dist-info"
    data = f"{name}-{version}.data"
    files: dict[str, tuple[bytes, int]] = {
        f"{name}/__init__.py": (b"VALUE = 42\n", 0o644),
        f"{name}/tool.py": (b"def main():\n    print('hi')\n", 0o644),
        f"{name}/run.sh": (b"#!/bin/sh\necho run\n", 0o755),
        f"{data}/scripts/{name}-legacy": (b"#!python\nprint('legacy')\n", 0o755),
        f"{data}/headers/{name}.h": (b"#define DEMO 1\n", 0o644),
        f"{data}/data/share/{name}/notes.txt": (b"notes\n", 0o644),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
            0o644,
        ),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            0o644,
        ),
        f"{dist_info}/entry_points.txt": (
            f"[console_scripts]\n{name} = {name}.tool:main\n".encode(),
            0o644,
        ),
    }
    files.update({member: (content, 0o644) for member, content in (extra or {}).items()})
    record = [_record_line(path, content) for path, (content, _) in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, (content, mode) in files.items():
            info = zipfile.ZipInfo(member, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            wheel.writestr(info, content)
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def test_wheel_lands_where_the_venv_expects_it(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    root = install_wheels([wheel], tmp_path / "stage", python_version="3.11")
    assert root == tmp_path / "stage" / "opt" / "venv"
    stage = tmp_path / "stage"
    assert (stage / SITE / "demo" / "__init__.py").read_text() == "VALUE = 42\n"
    # Console entry point and .data/scripts both point at the image's venv interpreter.
    launcher = (stage / "opt/venv/bin/demo").read_text()
    assert launcher.startswith("#!/opt/venv/bin/python\n")
    assert "from demo.tool import main" in launcher
    assert (stage / "opt/venv/bin/demo-legacy").read_text().startswith("#!/opt/venv/bin/python")
    assert (stage / "opt/venv/include/site/python3.11/demo/demo.h").exists()
    assert (stage / "opt/venv/share/demo/notes.txt").read_text() == "notes\n"
    dist_info = stage / SITE / "demo-1.0.dist-info"
    assert (dist_info / "INSTALLER").read_text() == "imagesmith\n"
    record = (dist_info / "RECORD").read_text()
    assert "../../../bin/demo," in record and "demo/__init__.py,sha256=" in record
    # No bytecode on the host: the image's own Python compiles it.
    assert not list(stage.rglob("*.pyc"))


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path)
    trees = []
    for umask in (0o077, 0o002):
        old = os.umask(umask)
        try:
            trees.append(install_wheels([wheel], tmp_path / f"u{umask}", python_version="3.11"))
        finally:
            os.umask(old)

    def modes(root: Path) -> dict[str, int]:
        return {str(p.relative_to(root)): p.lstat().st_mode for p in sorted(root.rglob("*"))}

    first, second = (modes(t) for t in trees)
    assert first == second
    assert stat.S_IMODE(first["bin/demo"]) == 0o755
    assert stat.S_IMODE(first["lib/python3.11/site-packages/demo/run.sh"]) == 0o755
    assert stat.S_IMODE(first["lib/python3.11/site-packages/demo/tool.py"]) == 0o644
    assert stat.S_IMODE(first["lib"]) == 0o755


def test_a_broken_wheel_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(OperationError, match=r"python: cannot install bad-1.0-py3-none-any.whl"):
        install_wheels([bad], tmp_path / "stage", python_version="3.11")


def _fake_lock(name: str = "demo") -> PythonLock:
    return PythonLock(
        version="3.11",
        platform="x86_64-manylinux_2_36",
        packages=(PythonPackage(name=name, version="1.0", hashes=("sha256:" + "0" * 64,)),),
    )


def test_tree_is_one_tar_cached_per_lock_and_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    (wheels / "wheels").mkdir(parents=True)
    make_wheel(wheels / "wheels")
    fetched: list[str] = []

    def fake_fetch(python: PythonLock, **_: object) -> Path:
        fetched.append(python.packages[0].name)
        return wheels

    monkeypatch.setattr("imagesmith.inputs.context.fetch_wheels", fake_fetch)
    python = _fake_lock()
    assert not python_tree_cached(python, 1_700_000_000)
    tree = python_tree(python, 1_700_000_000)
    assert python_tree_cached(python, 1_700_000_000)
    assert not python_tree_cached(python, 1_600_000_000)
    assert python_tree(python, 1_700_000_000) == tree  # served from the cache
    assert fetched == ["demo"]

    # What ADD extracts into /opt/venv: relative names in order, root-owned, epoch times.
    with tarfile.open(tree) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and "bin/demo" in names
    assert "lib/python3.11/site-packages/demo/__init__.py" in names
    assert {(m.uid, m.gid, m.uname, m.gname, m.mtime) for m in members} == {
        (0, 0, "", "", 1_700_000_000)
    }
    modes = {m.name: m.mode for m in members}
    assert modes["bin/demo"] == 0o755 and modes["lib"] == 0o755
    assert modes["lib/python3.11/site-packages/demo/tool.py"] == 0o644

    # Another host, another umask, the same bytes.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache2"))
    old = os.umask(0o077)
    try:
        again = python_tree(python, 1_700_000_000)
    finally:
        os.umask(old)
    assert again != tree and again.read_bytes() == tree.read_bytes()


def test_only_a_few_trees_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    (wheels / "wheels").mkdir(parents=True)
    make_wheel(wheels / "wheels")
    monkeypatch.setattr("imagesmith.inputs.context.fetch_wheels", lambda *_a, **_k: wheels)
    python = _fake_lock()
    trees = [python_tree(python, 1_700_000_000 + day * 86400) for day in range(6)]
    assert all(t.exists() for t in trees)  # all used within the hour: none dropped
    for age, tree in enumerate(trees):
        old = time.time() - 7200 - age
        os.utime(tree.parent, (old, old))
    newest = python_tree(python, 1_700_000_000 + 9 * 86400)
    kept = [t for t in [*trees, newest] if t.exists()]
    assert len(kept) == 4 and newest in kept and trees[0] in kept  # trees[0]: used last


def test_a_cache_that_cannot_be_written_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = tmp_path / "wheels"
    (wheels / "wheels").mkdir(parents=True)
    make_wheel(wheels / "wheels")
    monkeypatch.setattr("imagesmith.inputs.context.fetch_wheels", lambda *_a, **_k: wheels)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache would go below a file
    with pytest.raises(OperationError, match=r"^python: cannot write .*venvs.*: Not a directory"):
        python_tree(_fake_lock(), 1_700_000_000)
    assert blocker.read_text() == ""


def test_pycache_in_a_wheel_is_skipped_without_a_warning(tmp_path: Path) -> None:
    """numpy's wheel holds __pycache__ files: installer skips them, and its RuntimeWarning
    about it (printed on every cold build) is not shown."""
    import warnings

    from installer import install
    from installer.sources import WheelFile

    pyc = "demo/__pycache__/tool.cpython-311.pyc"
    wheel = make_wheel(tmp_path, extra={pyc: b"not bytecode"})
    with warnings.catch_warnings(record=True) as raw:  # installer on its own warns
        warnings.simplefilter("always")
        with WheelFile.open(wheel) as source:
            install(source, _destination("3.11", tmp_path / "raw", "demo"), {})
    assert any("__pycache__" in str(w.message) for w in raw)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        root = install_wheels([wheel], tmp_path / "stage", python_version="3.11")
    assert [str(w.message) for w in seen] == []
    assert (tmp_path / "stage" / SITE / "demo" / "tool.py").is_file()
    assert not (tmp_path / "stage" / SITE / "demo" / "__pycache__").exists()
    assert root == tmp_path / "stage" / "opt" / "venv"
