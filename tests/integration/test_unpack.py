"""An image holds all its rebuild needs: `unpack` takes out the spec, the lock, the lines of
its requirements file and the files [image] copy put in it, and `build` there gives the
same digest; `verify IMAGE` rebuilds an image with copied files. Both engines."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.model.lock import read_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.verify import verify_image
from tests.integration.conftest import ImageTracker

pytestmark = pytest.mark.integration
IMAGESMITH = shutil.which("imagesmith") or "imagesmith"


def _lab(folder: Path, base: str, name: str) -> Path:
    (folder / "scripts" / "lib").mkdir(parents=True)
    (folder / "scripts" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (folder / "scripts" / "run.sh").chmod(0o755)
    (folder / "scripts" / "lib" / "util.py").write_text("VALUE = 1\n")
    (folder / "scripts" / "a.txt").write_text("a\n")
    (folder / "notes.md").write_text("# notes\n")
    (folder / "requirements.txt").write_text("# pinned for the lab\nsix==1.17.0  # tiny\n")
    spec = folder / "env.toml"
    spec.write_text(
        f'name = "{name}"\n[base]\nimage = "{base}"\n'
        '[python]\nrequirements_file = "requirements.txt"\n'
        '[image]\ncopy = [{ src = "scripts", dest = "/opt/lab" },'
        ' { src = "notes.md", dest = "/opt/docs/" }]\n'
        'run = ["echo 2 > /opt/lab/a.txt.extra"]\n'
    )
    return spec


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMAGESMITH, *args], capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}
    )


def test_an_image_unpacks_into_a_folder_that_rebuilds_it(
    engine: Engine, base_image: str, tmp_path: Path, images: ImageTracker
) -> None:
    name = f"it-unpack-{uuid.uuid4().hex[:8]}"
    spec = load_spec(_lab(tmp_path / "lab", base_image, name))
    first = build(spec, engine)
    for tag in first.tags:
        images.add(tag)
    lock = read_lock(spec.lock_path)
    assert lock.python is not None and lock.python.requirements_file_lines == ("six==1.17.0",)

    out = tmp_path / "from-image"
    result = _cli("unpack", first.tags[0], str(out), "--engine", engine.name)
    assert result.returncode == 0, result.stderr
    assert (out / "env.lock").read_text() == spec.lock_path.read_text()
    assert (out / "requirements.txt").read_text() == "six==1.17.0\n"
    assert (out / "scripts" / "run.sh").read_text() == "#!/bin/sh\necho run\n"
    assert os.access(out / "scripts" / "run.sh", os.X_OK)
    assert not os.access(out / "scripts" / "a.txt", os.X_OK)
    assert (out / "scripts" / "lib" / "util.py").read_text() == "VALUE = 1\n"
    assert not (out / "scripts" / "a.txt.extra").exists()  # the run step's, not the copy's
    assert (out / "notes.md").read_text() == "# notes\n"
    check = _cli("lock", str(out / "env.toml"), "--check")
    assert check.returncode == 0, check.stderr

    # Built from the unpacked folder alone: the same digest.
    for tag in first.tags:
        engine.remove_image(tag, force=True)
    again = build(load_spec(out / "env.toml"), engine)
    assert again.digest == first.digest

    # Nothing is overwritten without --force; everything is with it.
    refused = _cli("unpack", first.tags[0], str(out), "--engine", engine.name)
    assert refused.returncode == 2
    assert "env.toml: already there (--force replaces it)" in refused.stderr
    assert "Traceback" not in refused.stderr
    (out / "notes.md").write_text("edited\n")
    forced = _cli("unpack", first.tags[0], str(out), "--engine", engine.name, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (out / "notes.md").read_text() == "# notes\n"

    # verify IMAGE rebuilds an image whose spec copied files, from the image alone.
    verdict = verify_image(first.tags[0], engine)
    assert verdict.identical, verdict.differences
