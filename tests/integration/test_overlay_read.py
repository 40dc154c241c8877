"""Reading layers from the engine's overlay store gives the same canonical image as a save.

`make_canonical` and the build's background rewrite read an image's layers in place
(`Engine.local_image`, `imagesmith.engine.overlay`) instead of `docker save` / `podman save`.
The image here has every kind of entry the two ways could disagree on: a whiteout of a
base file and of a whole directory, a directory deleted and made again (opaque), hard
links (one made by copying a lower file up), a symlink, a FIFO, a setuid file, an old
mtime and a non-ASCII name.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.image.canonical import canonicalize, canonicalize_local
from imagesmith.image.paths import VOLATILE_PATHS
from tests.integration.conftest import ImageTracker

EPOCH = 1_700_000_000

CONTAINERFILE = """\
FROM {base}
RUN mkdir -p /srv/keep/sub /srv/gone \\
 && echo a > /srv/keep/a && echo b > /srv/gone/b && echo s > /srv/keep/sub/s \\
 && ln /srv/keep/a /srv/keep/a-link && ln -s a /srv/keep/a-sym && mkfifo /srv/keep/fifo \\
 && echo x > "/srv/keep/ünï cödé" && chmod 4755 /srv/keep/a && touch -d @1000 /srv/keep/old
RUN rm -rf /srv/gone /etc/issue /srv/keep/sub \\
 && mkdir /srv/keep/sub && echo c > /srv/keep/sub/c \\
 && rm -rf /usr/share/doc && mkdir /usr/share/doc && touch /usr/share/doc/new \\
 && ln /srv/keep/a /srv/a2
"""


def _layer_names(layout: Path, index: int) -> set[str]:
    index_json = json.loads((layout / "index.json").read_text())
    digest = index_json["manifests"][0]["digest"].removeprefix("sha256:")
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    blob = manifest["layers"][index]["digest"].removeprefix("sha256:")
    with gzip.open(layout / "blobs/sha256" / blob) as raw, tarfile.open(fileobj=raw) as tar:
        return {m.name for m in tar}


def test_reading_the_store_equals_saving(
    engine: Engine, base_image: str, images: ImageTracker, tmp_path: Path
) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text(CONTAINERFILE.format(base=base_image))
    tag = images.tag("overlay-read")
    image_id = engine.build(context=context, tags=[tag])

    local = engine.local_image(image_id)
    assert local is not None, f"{engine.name}: store not readable in place (root, overlay)"
    assert len(local.diff_dirs) == 3

    in_place = canonicalize_local(
        local, tmp_path / "in-place", epoch=EPOCH, drop_paths=VOLATILE_PATHS
    )
    engine.save(image_id, tmp_path / "saved.tar")
    saved = canonicalize(
        tmp_path / "saved.tar",
        tmp_path / "saved",
        epoch=EPOCH,
        drop_paths=VOLATILE_PATHS,
        write_archive=False,
    )
    assert in_place.manifest_digest == saved.manifest_digest
    assert in_place.removed == saved.removed

    top = _layer_names(in_place.layout, 2)
    assert {"etc/.wh.issue", "srv/.wh.gone", "usr/share/doc/.wh..wh..opq"} <= top
    assert {"srv/a2", "srv/keep/a", "srv/keep/sub/c"} <= top


def test_load_leaves_out_the_layers_the_engine_has(
    engine: Engine,
    base_image: str,
    images: ImageTracker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make_canonical` loads only the layers the engine lacks (the others are empty
    members of the archive); should the engine lack one it was thought to have, the
    load fails and is done again with every layer."""
    from imagesmith.pipeline.canonical_build import load_layout

    context = tmp_path / "context"
    context.mkdir()
    marker = uuid.uuid4().hex
    (context / "Containerfile").write_text(f"FROM {base_image}\nRUN echo {marker} > /marker\n")
    built = engine.build(context=context, tags=[images.tag("load-skip")])
    local = engine.local_image(built)
    assert local is not None
    # The base layer is the engine's already (its times are older than the epoch); the
    # top one, with the epoch as its times, is new.
    first = canonicalize_local(local, tmp_path / "first", epoch=EPOCH, drop_paths=VOLATILE_PATHS)
    assert engine.present_layers(first.diff_ids) == 1
    loaded = images.add(load_layout(engine, first.layout, first.diff_ids, tmp_path))
    assert loaded == first.config_digest
    assert engine.present_layers(first.diff_ids) == 2
    assert engine.present_layers([*first.diff_ids[:1], "sha256:" + "0" * 64]) == 1

    # Another epoch, another top layer, which the engine is told it has: the first load
    # fails on the empty member and the second one loads it.
    second = canonicalize_local(
        local, tmp_path / "second", epoch=EPOCH + 1, drop_paths=VOLATILE_PATHS
    )
    assert second.diff_ids[0] == first.diff_ids[0] and second.diff_ids[1] != first.diff_ids[1]
    attempts: list[int] = []

    def claim_all(diff_ids: Sequence[str]) -> int:
        attempts.append(len(diff_ids))
        return len(diff_ids)

    monkeypatch.setattr(engine, "present_layers", claim_all)
    again = images.add(load_layout(engine, second.layout, second.diff_ids, tmp_path))
    assert attempts == [2] and again == second.config_digest
    run = engine.run(again, ["cat", "/marker"])
    assert run.exit_code == 0 and run.output.strip() == marker
