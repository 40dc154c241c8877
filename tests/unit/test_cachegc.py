"""The cache budget: least recently used layouts and layer entries go first, shared blobs
are only counted as freed when their last link goes, and the current build's stay."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from imagesmith.cache.gc import DEFAULT_BUDGET, ENV_VAR, cache_budget, prune
from imagesmith.errors import InputError

MB = 2**20


def _layout(root: Path, name: str, blobs: dict[str, int], mtime: float) -> Path:
    folder = root / "images" / name
    store = folder / "blobs" / "sha256"
    store.mkdir(parents=True)
    for blob, size in blobs.items():
        (store / blob).write_bytes(b"x" * size)
    (folder / "index.json").write_text("{}")
    os.utime(folder, (mtime, mtime))
    return folder


def _layer(root: Path, key: str, blob_of: Path, mtime: float) -> Path:
    """A layer entry whose blob is a hard link to a layout's blob, as LayerCache makes."""
    blobs = root / "layers" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    if not (blobs / blob_of.name).exists():
        os.link(blob_of, blobs / blob_of.name)
    entry = root / "layers" / f"{key}.json"
    entry.write_text(json.dumps({"digest": f"sha256:{blob_of.name}", "lower": {}}))
    os.utime(entry, (mtime, mtime))
    return entry


def test_nothing_removed_within_budget(tmp_path: Path) -> None:
    _layout(tmp_path, "a", {"a1": MB}, mtime=100)
    assert prune(tmp_path, budget=2 * MB, keep_newer_than=1e12) == []
    assert (tmp_path / "images" / "a").is_dir()


def test_oldest_go_first_until_within_budget(tmp_path: Path) -> None:
    old = _layout(tmp_path, "old", {"o1": 2 * MB}, mtime=100)
    mid = _layout(tmp_path, "mid", {"m1": 2 * MB}, mtime=200)
    new = _layout(tmp_path, "new", {"n1": 2 * MB}, mtime=300)
    removed = prune(tmp_path, budget=5 * MB, keep_newer_than=1e12)
    assert removed == [old]
    assert not old.exists() and mid.exists() and new.exists()


def test_shared_blob_is_freed_only_with_its_last_link(tmp_path: Path) -> None:
    base = tmp_path / "images" / "old" / "blobs" / "sha256" / "base"
    old = _layout(tmp_path, "old", {"base": 3 * MB, "o1": 1 * MB}, mtime=100)
    entry = _layer(tmp_path, "k-base", base, mtime=150)  # the base layer, cached
    new = _layout(tmp_path, "new", {"n1": 1 * MB}, mtime=300)
    # 5 MB in use. Removing the old layout frees 1 MB (base stays linked from the layer
    # cache); the layer entry goes next and frees the 3 MB base.
    removed = prune(tmp_path, budget=2 * MB, keep_newer_than=1e12)
    assert removed == [old, entry]
    assert not (tmp_path / "layers" / "blobs" / "base").exists()
    assert new.exists()


def test_recently_used_entries_stay_even_over_budget(tmp_path: Path) -> None:
    old = _layout(tmp_path, "old", {"o1": 2 * MB}, mtime=100)
    current = _layout(tmp_path, "current", {"c1": 8 * MB}, mtime=1000)
    removed = prune(tmp_path, budget=1 * MB, keep_newer_than=999)
    assert removed == [old] and current.exists()


def test_staging_folders_of_running_builds_are_left_alone(tmp_path: Path) -> None:
    staging = tmp_path / "images" / ".staging-x" / "layout"
    staging.mkdir(parents=True)
    (staging / "blob").write_bytes(b"x" * MB)
    os.utime(tmp_path / "images" / ".staging-x", (1, 1))
    assert prune(tmp_path, budget=0, keep_newer_than=1e12) == []
    assert staging.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", DEFAULT_BUDGET),
        ("2048", 2048),
        ("500M", 500 * MB),
        ("1.5G", 3 * 2**29),
        ("2gib", 2**31),
    ],
)
def test_budget_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: int
) -> None:
    monkeypatch.setenv(ENV_VAR, text)
    assert cache_budget() == expected


def test_malformed_budget_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "lots")
    with pytest.raises(InputError) as caught:
        cache_budget()
    assert str(caught.value) == (
        "IMAGESMITH_CACHE_MAX='lots' is not a size; use a number of bytes or e.g. 500M, 10G"
    )


def test_base_refuses_a_malformed_budget_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`imagesmith base` checks the budget before mmdebstrap and the engine run, as build
    does: nothing is made only to fail at the end."""
    from imagesmith.pipeline.debian_base import build_base, make_base

    monkeypatch.setenv(ENV_VAR, "lots")

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started")

    monkeypatch.setattr("imagesmith.pipeline.debian_base.make_rootfs", never)
    engine: Any = object()  # never touched
    with pytest.raises(InputError, match="IMAGESMITH_CACHE_MAX"):
        make_base(engine)
    (tmp_path / "rootfs.tar").write_bytes(b"")
    with pytest.raises(InputError, match="IMAGESMITH_CACHE_MAX"):
        build_base(engine, tmp_path / "rootfs.tar")


def test_a_prune_killed_half_way_leaves_no_layout_without_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _layout(tmp_path, "old", {"o1": 2 * MB, "o2": 2 * MB}, mtime=100)
    new = _layout(tmp_path, "new", {"n1": 2 * MB}, mtime=300)

    def killed(_: Path) -> int:
        raise KeyboardInterrupt  # SIGKILL before the first file of the layout goes

    monkeypatch.setattr("imagesmith.cache.gc._unlink", killed)
    with pytest.raises(KeyboardInterrupt):
        prune(tmp_path, budget=3 * MB, keep_newer_than=1e12)
    assert not old.exists()  # gone from its name before anything in it was removed
    assert (new / "index.json").exists()
    monkeypatch.undo()
    prune(tmp_path, budget=3 * MB, keep_newer_than=1e12)
    assert [p.name for p in (tmp_path / "images").iterdir()] == ["new"]  # leftovers swept
