"""Pure parts of reading layers in place: overlayfs spellings, and finding finished stages."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from imagesmith.engine.overlay import NotReadable, read_diff_dir
from imagesmith.pipeline.canonical_build import StageWatcher


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


def test_finished_images_are_found_in_docker_and_podman_output() -> None:
    found: list[str] = []
    watcher = StageWatcher(found.append)
    docker = [
        "Step 1/16 : FROM sha256:93212dd4d0f0fec3851affd8660eafcdd8bcbb692ad5b931d53fc03fe15f64b3 AS system",
        " ---> 93212dd4d0f0",
        "Step 2/16 : ARG SOURCE_DATE_EPOCH",
        " ---> Running in 1a2562963ed2",
        "Step 4/16 : FROM system AS python",
        " ---> cfea530bc257",
        "Step 5/16 : COPY python/ /tmp/python/",
        " ---> 6683e5b250bd",
        "Step 8/16 : FROM system",
        " ---> cfea530bc257",
        "Step 9/16 : COPY --from=python /opt/venv /opt/venv",
        " ---> Running in 02442a380869",
        " ---> 401d30cc8cbf",
        'Step 10/16 : CMD ["python3"]',
        " ---> Using cache",
        " ---> 9eed44199110",
    ]
    podman = [
        "[1/3] STEP 1/2: FROM imagesmith/debian:bookworm AS system",
        "[1/3] STEP 2/2: RUN echo a > /a",
        "--> 0c7ddffc99f",
        "[2/3] STEP 1/2: FROM 0c7ddffc99f7a5413e2d21ff8f00d3236a039f751213e8bd630ec0a82f89ec60 AS python",
        "[2/3] STEP 2/2: RUN echo b > /b",
    ]
    for line in docker + podman:
        watcher.feed(line)
    assert found == [
        "93212dd4d0f0",
        "cfea530bc257",  # the python stage starts from the system stage
        "cfea530bc257",  # so does the last stage, whose steps follow
        "401d30cc8cbf",
        "9eed44199110",
        "0c7ddffc99f7a5413e2d21ff8f00d3236a039f751213e8bd630ec0a82f89ec60",
    ]
