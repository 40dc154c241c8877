"""Reading layers from the engine's overlay store gives the same canonical image as a save.

`make_canonical` and the build's background rewrite read an image's layers in place
(`Engine.local_image`, `imagesmith.overlay`) instead of `docker save` / `podman save`.
The image here has every kind of entry the two ways could disagree on: a whiteout of a
base file and of a whole directory, a directory deleted and made again (opaque), hard
links (one made by copying a lower file up), a symlink, a FIFO, a setuid file, an old
mtime and a non-ASCII name.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path

from imagesmith.canonical import VOLATILE_PATHS, canonicalize, canonicalize_local
from imagesmith.engine.base import Engine
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
