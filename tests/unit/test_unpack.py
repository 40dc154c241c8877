"""Finding the files [image] copy put in an image: the layer whose files under the copy's
destination give the tree hash the lock pins (the same hash `tree_hash` gives on disk)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import IO, cast

from imagesmith.image.oci import ImageSource
from imagesmith.model.lock import CopyLock, tree_hash
from imagesmith.pipeline.unpack import _copied_files


class Layers:
    """Stands in for an ImageSource: layers as in-memory tar files."""

    def __init__(self, *layers: dict[str, tuple[bytes, int]]) -> None:
        self.blobs = []
        for files in layers:
            out = io.BytesIO()
            with tarfile.open(fileobj=out, mode="w") as tar:
                for name, (data, mode) in files.items():
                    info = tarfile.TarInfo(name)
                    info.size, info.mode = len(data), mode
                    tar.addfile(info, io.BytesIO(data))
            self.blobs.append(out.getvalue())
        self.layer_names = [f"layer{i}" for i in range(len(self.blobs))]

    def open_layer(self, index: int) -> IO[bytes]:
        return io.BytesIO(self.blobs[index])


def _on_disk(root: Path, files: dict[str, tuple[bytes, int]]) -> None:
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)


def test_a_copied_folder_is_found_in_its_layer_with_the_hash_of_the_same_files_on_disk(
    tmp_path: Path,
) -> None:
    # "a/b" sorts before "a.txt" as paths, after it as strings: the hash must walk as
    # tree_hash walks a folder.
    files = {"a/b": (b"b", 0o644), "a.txt": (b"t", 0o644), "run.sh": (b"#!/bin/sh\n", 0o755)}
    _on_disk(tmp_path / "scripts", files)
    item = CopyLock(src="scripts", dest="/opt/lab", sha256=tree_hash(tmp_path / "scripts"))
    source = Layers(
        {"opt/lab/old": (b"from the base", 0o644), "usr/bin/x": (b"x", 0o755)},
        {f"opt/lab/{rel}": file for rel, file in files.items()},
        {"opt/lab/a.txt.extra": (b"a run step", 0o644)},
    )
    found = _copied_files(cast(ImageSource, source), item)
    assert found is not None
    assert sorted((f.rel, f.executable, f.data) for f in found) == [
        ("a.txt", False, b"t"),
        ("a/b", False, b"b"),
        ("run.sh", True, b"#!/bin/sh\n"),
    ]


def test_a_copied_file_is_found_at_its_destination_or_inside_it(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_bytes(b"# notes\n")
    digest = tree_hash(tmp_path / "notes.md")
    inside = Layers({"opt/docs/notes.md": (b"# notes\n", 0o644)})
    at = Layers({"etc/notes": (b"# notes\n", 0o644)})
    for source, dest in ((inside, "/opt/docs/"), (at, "/etc/notes")):
        item = CopyLock(src="notes.md", dest=dest, sha256=digest)
        found = _copied_files(cast(ImageSource, source), item)
        assert found is not None and [(f.rel, f.data) for f in found] == [(".", b"# notes\n")]


def test_files_changed_after_the_copy_are_not_taken_for_it(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_bytes(b"# notes\n")
    item = CopyLock(src="notes.md", dest="/opt/docs/", sha256=tree_hash(tmp_path / "notes.md"))
    changed = Layers({"opt/docs/notes.md": (b"# notes, edited by a run step\n", 0o644)})
    assert _copied_files(cast(ImageSource, changed), item) is None
