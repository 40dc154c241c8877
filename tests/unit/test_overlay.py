"""Pure parts of reading layers in place: overlayfs spellings."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from imagesmith.engine.overlay import NotReadable, read_diff_dir


def _xattr_or_skip(path: Path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value)
    except OSError as exc:
        pytest.skip(f"cannot set {name} here: {exc}")


def test_whiteouts_and_opaque_directories_get_the_oci_spelling(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a 0/0 character device needs root")
    (tmp_path / "etc").mkdir()
    os.mknod(tmp_path / "etc" / "issue", 0o600 | 0o020000, os.makedev(0, 0))
    (tmp_path / "doc").mkdir()
    _xattr_or_skip(tmp_path / "doc", "trusted.overlay.opaque", b"y")
    (tmp_path / "doc" / "new").write_text("n")
    (tmp_path / "a").write_text("a")
    os.link(tmp_path / "a", tmp_path / "b")
    os.symlink("a", tmp_path / "s")
    entries = read_diff_dir(tmp_path)
    assert sorted(entries) == [
        "a",
        "b",
        "doc",
        "doc/.wh..wh..opq",
        "doc/new",
        "etc",
        "etc/.wh.issue",
        "s",
    ]
    assert entries["etc/.wh.issue"].type == tarfile.REGTYPE
    assert entries["b"].type == tarfile.LNKTYPE and entries["b"].linkname == "a"
    assert entries["s"].issym() and entries["s"].linkname == "a"
    assert entries["a"].size == 1


def test_a_store_with_redirected_directories_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "moved").mkdir()
    _xattr_or_skip(tmp_path / "moved", "trusted.overlay.redirect", b"/old")
    with pytest.raises(NotReadable):
        read_diff_dir(tmp_path)
