"""Cache integrity: a corrupt or half-written cache entry is found, dropped, reported in one
line and made again from its source; a whole one is used as it is.

Corruption is one byte changed in place, as a disk or a copy between machines does it.
`integrity.forget()` stands for the end of the imagesmith process that wrote the entry:
within one process a file it has hashed is not hashed again while its inode, size and
mtime are unchanged, and a test may change a file within the same clock tick.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imagesmith.cache import integrity
from imagesmith.cache.integrity import CorruptEntry, check_file, file_sha256, write_bytes_durably
from imagesmith.errors import OperationError
from imagesmith.image import canonical
from imagesmith.image.layer_cache import LayerCache
from imagesmith.image.oci import LayoutWriter
from imagesmith.inputs.context import WHEEL_SUMS, fetch_wheels, python_tree, python_tree_cached
from imagesmith.model.lock import PythonLock, PythonPackage
from tests.unit.test_canonical import blob_bytes, canon, docker_image, sha
from tests.unit.test_venv import make_wheel


def flip_one_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place (same size, same inode: hard links see it too)."""
    size = path.stat().st_size
    at = size // 2 if offset is None else offset
    with path.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    integrity.forget()


def all_blobs_whole(folder: Path) -> bool:
    return all(
        file_sha256(blob) == f"sha256:{blob.name}"
        for blob in folder.iterdir()
        if not blob.name.startswith(".")
    )


# --------------------------------------------------------------------------- helpers


def test_file_hash_is_checked_and_a_mismatch_is_corrupt_entry(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"hello")
    digest = "sha256:" + hashlib.sha256(b"hello").hexdigest()
    check_file(path, digest)
    flip_one_byte(path, 0)
    with pytest.raises(CorruptEntry) as caught:
        check_file(path, digest)
    assert caught.value.expected == digest and caught.value.path == path


def test_a_durable_write_leaves_the_old_file_or_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "entry.json"
    write_bytes_durably(path, b"old")

    def killed(*_: Any) -> None:
        raise KeyboardInterrupt  # the process dies between the write and the rename

    monkeypatch.setattr("os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_bytes_durably(path, b"new, longer content")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]  # no temporary left


def test_a_layout_blob_cut_short_by_a_kill_never_gets_its_name(tmp_path: Path) -> None:
    layout = LayoutWriter(tmp_path / "layout")
    with pytest.raises(KeyboardInterrupt), layout.blob_writer() as (blob, _):
        blob.write(b"half a layer")
        raise KeyboardInterrupt
    assert list(layout.blobs.iterdir()) == []


# --------------------------------------------------------------------------- layer cache


def test_a_corrupt_cached_layer_is_dropped_reported_and_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[int] = []
    real_write = canonical.write_layer

    def counting(*args: Any, **kw: Any) -> Any:
        written.append(1)
        return real_write(*args, **kw)

    monkeypatch.setattr(canonical, "write_layer", counting)
    lines: list[str] = []
    cache = LayerCache(tmp_path / "cache", on_corrupt=lines.append)
    src = docker_image(tmp_path / "a.tar")
    first = canon(src, tmp_path, "first", cache=cache)
    blobs = tmp_path / "cache" / "blobs"
    bottom = first.layer_digests[0]
    for blob in blobs.iterdir():
        flip_one_byte(blob)  # hard links: the first layout's blobs are corrupt too
    written.clear()

    second = canon(src, tmp_path, "second", cache=cache)
    assert second.manifest_digest == first.manifest_digest
    for digest in second.layer_digests:
        assert sha(blob_bytes(second, digest)) == digest
    # The bottom layer was read, found corrupt and reported; the layers above it were not
    # taken from the cache at all (hits go bottom-up), but their fresh blobs replace the
    # corrupt ones there.
    assert lines == [f"cache: layer {bottom} was corrupt; rewritten"]
    assert len(written) == len(first.layer_digests)
    assert all_blobs_whole(blobs)

    lines.clear()
    written.clear()
    integrity.forget()
    third = canon(src, tmp_path, "third", cache=cache)
    assert third.manifest_digest == first.manifest_digest
    assert lines == [] and written == []  # whole again: served from the cache


def test_a_corrupt_upper_layer_is_rewritten_on_top_of_the_cached_ones(tmp_path: Path) -> None:
    lines: list[str] = []
    cache = LayerCache(tmp_path / "cache", on_corrupt=lines.append)
    src = docker_image(tmp_path / "a.tar")
    first = canon(src, tmp_path, "first", cache=cache)
    top = first.layer_digests[-1]
    flip_one_byte(cache.blob(top), offset=cache.blob(top).stat().st_size - 3)  # gzip trailer
    second = canon(src, tmp_path, "second", cache=cache)
    assert second.manifest_digest == first.manifest_digest
    assert sha(blob_bytes(second, top)) == top
    assert lines == [f"cache: layer {top} was corrupt; rewritten"]


def test_a_half_written_layer_entry_is_not_used(tmp_path: Path) -> None:
    lines: list[str] = []
    cache = LayerCache(tmp_path / "cache", on_corrupt=lines.append)
    src = docker_image(tmp_path / "a.tar")
    first = canon(src, tmp_path, "first", cache=cache)
    bottom = cache.blob(first.layer_digests[0])
    data = bottom.read_bytes()
    bottom.unlink()  # as a copy that stopped half-way would leave it
    bottom.write_bytes(data[: len(data) // 2])
    entries = sorted((tmp_path / "cache").glob("*.json"), key=lambda p: p.stat().st_mtime)
    entries[-1].write_text(entries[-1].read_text()[:20])  # and a cut-off entry
    second = canon(src, tmp_path, "second", cache=cache)
    assert second.manifest_digest == first.manifest_digest
    for digest in second.layer_digests:
        assert sha(blob_bytes(second, digest)) == digest
    assert lines == [f"cache: layer {first.layer_digests[0]} was corrupt; rewritten"]
    assert all_blobs_whole(tmp_path / "cache" / "blobs")
    for entry in (tmp_path / "cache").glob("*.json"):
        json.loads(entry.read_text())  # every entry whole again


# --------------------------------------------------------------------------- venv tree


def _tree_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PythonLock, list[int]]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wheels = tmp_path / "wheels"
    (wheels / "wheels").mkdir(parents=True)
    make_wheel(wheels / "wheels")
    fetched: list[int] = []

    def fake_fetch(python: PythonLock, **_: object) -> Path:
        fetched.append(1)
        return wheels

    monkeypatch.setattr("imagesmith.inputs.context.fetch_wheels", fake_fetch)
    python = PythonLock(
        version="3.11",
        platform="x86_64-manylinux_2_36",
        packages=(PythonPackage(name="demo", version="1.0", hashes=("sha256:" + "0" * 64,)),),
    )
    return python, fetched


def test_a_corrupt_venv_tar_is_dropped_reported_and_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, fetched = _tree_setup(tmp_path, monkeypatch)
    tree = python_tree(python, 1_700_000_000)
    good = tree.read_bytes()
    recorded = (tree.parent / "venv.tar.gz.sha256").read_text().strip()
    assert recorded == "sha256:" + hashlib.sha256(good).hexdigest()

    flip_one_byte(tree)
    lines: list[str] = []
    again = python_tree(python, 1_700_000_000, on_line=lines.append)
    assert again == tree and again.read_bytes() == good
    assert lines == [f"cache: python tree {recorded} was corrupt; rebuilt"]
    assert len(fetched) == 2  # made again from the wheels

    lines.clear()
    integrity.forget()
    python_tree(python, 1_700_000_000, on_line=lines.append)
    assert lines == [] and len(fetched) == 2  # whole: used as it is


def test_a_venv_tar_without_its_recorded_hash_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    python, fetched = _tree_setup(tmp_path, monkeypatch)
    tree = python_tree(python, 1_700_000_000)
    good = tree.read_bytes()
    # A process killed after the tar but before its record (or a cache from 0.5.0).
    (tree.parent / "venv.tar.gz.sha256").unlink()
    tree.write_bytes(good[: len(good) // 2])
    assert not python_tree_cached(python, 1_700_000_000)
    lines: list[str] = []
    assert python_tree(python, 1_700_000_000, on_line=lines.append).read_bytes() == good
    assert len(fetched) == 2 and lines == []


# --------------------------------------------------------------------------- wheels


def _local_index(tmp_path: Path) -> tuple[PythonLock, bytes]:
    """A file:// package index with one wheel, and a lock pinning it by hash."""
    project = tmp_path / "index" / "simple" / "demo"
    project.mkdir(parents=True)
    wheel = make_wheel(project)
    (project / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>\n')
    data = wheel.read_bytes()
    python = PythonLock(
        version="3.11",
        platform="x86_64-manylinux_2_36",
        packages=(
            PythonPackage(
                name="demo", version="1.0", hashes=("sha256:" + hashlib.sha256(data).hexdigest(),)
            ),
        ),
        index_url=(tmp_path / "index" / "simple").as_uri(),
    )
    return python, data


def test_a_corrupt_wheel_is_dropped_reported_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, data = _local_index(tmp_path)
    folder = fetch_wheels(python)
    wheel = folder / "wheels" / "demo-1.0-py3-none-any.whl"
    assert wheel.read_bytes() == data
    sums = json.loads((folder / WHEEL_SUMS).read_text())
    assert sums == {wheel.name: python.packages[0].hashes[0]}

    flip_one_byte(wheel)
    lines: list[str] = []
    assert fetch_wheels(python, on_line=lines.append) == folder
    assert wheel.read_bytes() == data
    assert lines[0] == f"cache: wheel {wheel.name} was corrupt; fetched again"

    lines.clear()
    integrity.forget()
    fetch_wheels(python, on_line=lines.append)
    assert lines == []  # whole: no fetch, no report


def test_a_wheel_folder_without_its_record_is_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, data = _local_index(tmp_path)
    folder = fetch_wheels(python)
    wheel = folder / "wheels" / "demo-1.0-py3-none-any.whl"
    (folder / WHEEL_SUMS).unlink()  # killed before the record was written
    wheel.write_bytes(data[:100])
    lines: list[str] = []
    fetch_wheels(python, on_line=lines.append)
    assert wheel.read_bytes() == data
    assert (folder / WHEEL_SUMS).exists()
    assert not any(line.startswith("cache:") for line in lines)


def test_a_cached_wheel_is_checked_against_the_lock_not_only_its_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, data = _local_index(tmp_path)
    folder = fetch_wheels(python)
    wheel = folder / "wheels" / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(data + b"tampered")  # and a record that agrees with it
    integrity.forget()
    (folder / WHEEL_SUMS).write_text(json.dumps({wheel.name: file_sha256(wheel)}))
    lines: list[str] = []
    fetch_wheels(python, on_line=lines.append)
    assert wheel.read_bytes() == data
    assert lines[0] == f"cache: wheel {wheel.name} was corrupt; fetched again"


def test_an_index_serving_other_bytes_than_the_lock_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, _ = _local_index(tmp_path)
    other = PythonLock(
        version=python.version,
        platform=python.platform,
        packages=(PythonPackage(name="demo", version="1.0", hashes=("sha256:" + "1" * 64,)),),
        index_url=python.index_url,
    )
    with pytest.raises(OperationError, match=r"^python: a downloaded wheel does not match"):
        fetch_wheels(other)
    assert not list((tmp_path / "cache" / "imagesmith" / "wheels").iterdir())


def _two_wheel_index(tmp_path: Path) -> tuple[PythonLock, dict[str, Path]]:
    """A file:// index with demo 1.0, other 1.0 and other 2.0; a lock pinning demo and
    other 1.0 by hash."""
    wheels: dict[str, Path] = {}
    for name, version in (("demo", "1.0"), ("other", "1.0"), ("other", "2.0")):
        project = tmp_path / "index" / "simple" / name
        project.mkdir(parents=True, exist_ok=True)
        wheels[f"{name}-{version}"] = make_wheel(project, name, version)
    for project in (tmp_path / "index" / "simple").iterdir():
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in project.glob("*.whl"))
        (project / "index.html").write_text(links)

    def pin(key: str) -> PythonPackage:
        name, version = key.split("-")
        return PythonPackage(name, version, (f"sha256:{sha256_of(wheels[key])}",))

    python = PythonLock(
        version="3.11",
        platform="x86_64-manylinux_2_36",
        packages=(pin("demo-1.0"), pin("other-1.0")),
        index_url=(tmp_path / "index" / "simple").as_uri(),
    )
    return python, {key: wheel for key, wheel in wheels.items()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_changed_pin_takes_the_other_wheels_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another lock's wheel folder gives the wheels pinned alike (same version, hashes,
    Python, platform and index): linked, checked, not fetched. Only the changed one is."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    python, wheels = _two_wheel_index(tmp_path)
    first = fetch_wheels(python)
    demo = first / "wheels" / "demo-1.0-py3-none-any.whl"

    newer = replace(
        python,
        packages=(
            python.packages[0],
            PythonPackage("other", "2.0", (f"sha256:{sha256_of(wheels['other-2.0'])}",)),
        ),
    )
    wheels["demo-1.0"].unlink()  # the index no longer has demo 1.0: only the cache does
    lines: list[str] = []
    second = fetch_wheels(newer, on_line=lines.append)
    assert second != first
    assert lines == ["python: fetching 1 wheels on the host"]
    taken = second / "wheels" / "demo-1.0-py3-none-any.whl"
    assert taken.stat().st_ino == demo.stat().st_ino  # linked, not copied
    assert (second / "wheels" / "other-2.0-py3-none-any.whl").is_file()

    # Another platform, or other hashes for the same version: not taken (pip might pick
    # another file), so fetched, and the index has no demo 1.0 any more.
    for changed in (
        replace(newer, platform="aarch64-manylinux_2_36"),
        replace(
            newer,
            packages=(
                PythonPackage("demo", "1.0", (*python.packages[0].hashes, "sha256:" + "e" * 64)),
                newer.packages[1],
            ),
        ),
    ):
        with pytest.raises(OperationError, match="^python: fetching wheels failed"):
            fetch_wheels(changed)

    # A damaged wheel in the other folders is not taken.
    flip_one_byte(demo)
    shutil.rmtree(second)
    with pytest.raises(OperationError, match="^python: fetching wheels failed"):
        fetch_wheels(newer)


# --------------------------------------------------------------------------- canonical layouts


def test_a_new_build_replaces_the_corrupt_blobs_of_a_kept_layout(tmp_path: Path) -> None:
    from imagesmith.pipeline.canonical_build import install_layout

    src = docker_image(tmp_path / "a.tar")
    kept = canon(src, tmp_path, "kept")
    fresh = canon(src, tmp_path, "staging")
    for digest in kept.layer_digests:
        flip_one_byte(kept.layout / "blobs" / "sha256" / digest.split(":")[1])
    install_layout(fresh.layout, kept.layout)
    assert all_blobs_whole(kept.layout / "blobs" / "sha256")
    assert (kept.layout / "index.json").read_bytes() == (fresh.layout / "index.json").read_bytes()


def test_push_refuses_a_corrupt_manifest_before_contacting_the_registry(tmp_path: Path) -> None:
    from imagesmith.model.reference import parse_reference
    from imagesmith.registry.client import push_layout

    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "layout")
    flip_one_byte(image.layout / "blobs" / "sha256" / image.manifest_digest.split(":")[1], 5)
    # Port 9 (discard) on loopback: any request would fail with a RegistryError instead.
    with pytest.raises(CorruptEntry) as caught:
        push_layout(image.layout, parse_reference("127.0.0.1:9/lab/x"), ("1",))
    assert caught.value.expected == image.manifest_digest


def test_writeback_sink_passes_every_byte_through(tmp_path: Path) -> None:
    from imagesmith.cache.integrity import WritebackSink

    data = os.urandom(3 << 20) * 7  # crosses the 8 MiB writeback step twice
    path = tmp_path / "blob"
    with path.open("wb") as f:
        sink = WritebackSink(f)
        for start in range(0, len(data), 1 << 20):
            sink.write(data[start : start + (1 << 20)])
        sink.sync()
    assert path.read_bytes() == data


def test_push_takes_a_missing_layout_blob_for_a_corrupt_one(tmp_path: Path) -> None:
    from imagesmith.model.reference import parse_reference
    from imagesmith.registry.client import push_layout

    image = canon(docker_image(tmp_path / "a.tar"), tmp_path, "layout")
    (image.layout / "blobs" / "sha256" / image.manifest_digest.split(":")[1]).unlink()
    with pytest.raises(CorruptEntry) as caught:  # push remakes the layout, no traceback
        push_layout(image.layout, parse_reference("127.0.0.1:9/lab/x"), ("1",))
    assert caught.value.found == "no such file"
