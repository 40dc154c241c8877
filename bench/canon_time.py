"""Split imagesmith's canonical step into its parts, the way imagesmith runs them.

Run with imagesmith's own Python:  .venv/bin/python bench/canon_time.py ENGINE IMAGE LOCK WORKDIR
Prints one JSON object: seconds for the rewrite of every layer (no layer cache) read in
place from the engine's store, as builds do (`in_place`, null when the store cannot be
read), and the other way, for comparison: the engine's save, then `canonicalize` of the
archive; and the load back (writing the archive the engine loads, then loading it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from imagesmith.engine import get_engine
from imagesmith.image.canonical import canonicalize, canonicalize_local
from imagesmith.image.docker_archive import write_docker_archive
from imagesmith.image.paths import VOLATILE_PATHS
from imagesmith.model.lock import read_lock


def main(argv: list[str]) -> int:
    engine_name, image, lock_path, workdir = argv
    engine = get_engine(engine_name)
    epoch = read_lock(Path(lock_path)).source_date_epoch
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    archive = work / "built.tar"
    in_place: float | None = None
    local = engine.local_image(image)
    if local is not None:
        started = time.perf_counter()
        canonicalize_local(local, work / "in-place", epoch=epoch, drop_paths=VOLATILE_PATHS)
        in_place = time.perf_counter() - started
    started = time.perf_counter()
    engine.save(image, archive)
    saved = time.perf_counter()
    # No LayerCache: every layer is rewritten, as in a build with an empty cache.
    canonicalize(
        archive, work / "canonical", epoch=epoch, drop_paths=VOLATILE_PATHS, write_archive=False
    )
    rewritten = time.perf_counter()
    archive.unlink()
    load_archive = write_docker_archive(
        work / "canonical", work / "canonical.tar", compressed=engine.load_compressed
    )
    loaded_id = engine.load(load_archive)
    loaded = time.perf_counter()
    print(
        json.dumps(
            {
                "in_place": in_place,
                "save": saved - started,
                "canonicalize": rewritten - saved,
                "load": loaded - rewritten,
                "archive_bytes": load_archive.stat().st_size,
                "image_id": loaded_id,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
