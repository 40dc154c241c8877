"""The jupyter recipe's way to add packages at run time, as its README describes it.

Building JupyterLab itself takes minutes, so the image here is a small one with what the
recipe's `[env]` and pip give it: the recipe's env.toml with `[python] requirements`
cut down to `pip` and `six`. It runs as the Pod runs it: the image's user, a read-only
root filesystem, `/tmp` and `/work` writable and empty (a host folder of mode 1777
stands for the emptyDir: Docker gives a tmpfs the mode of the image's folder). A wheel made here stands for a
package from the index (no network in the container): `pip install` puts it in
/work/.local and a new Python imports it, using the image's six as it is; a package that
would replace one the image pins fails and changes nothing. On Docker and podman.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.model.lock import read_lock
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from tests.conftest import RECIPES

pytestmark = [pytest.mark.integration]


def make_wheel(folder: Path, name: str, version: str, requires: str = "") -> None:
    """A pure-Python wheel of one module `name` whose VALUE is `version`."""
    files = {
        f"{name}.py": f"VALUE = {version!r}\n__version__ = {version!r}\n".encode(),
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + (f"Requires-Dist: {requires}\n" if requires else "")
        ).encode(),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }

    def entry(path: str, data: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        return f"{path},sha256={digest},{len(data)}"

    record = [entry(p, d) for p, d in files.items()] + [f"{name}-{version}.dist-info/RECORD,,"]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
        wheel.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")


@pytest.fixture
def notebook_image(engine: Engine, base_image: str, tmp_path: Path) -> Iterator[Spec]:
    text = (RECIPES / "jupyter" / "env.toml").read_text()
    text = text.replace('image = "debian:bookworm"', f'image = "{base_image}"')
    text = text.replace('name = "jupyter"', f'name = "it-jpip-{uuid.uuid4().hex[:8]}"')
    text, count = re.subn(r"(?m)^requirements = \[.*\]$", 'requirements = ["pip", "six"]', text)
    assert count == 1
    (tmp_path / "env.toml").write_text(text)
    spec = load_spec(tmp_path / "env.toml")
    result = build(spec, engine)
    yield spec
    for tag in result.tags:
        engine.remove_image(tag, force=True)
    engine.remove_image(result.image_id, force=True)


def run_as_the_pod(engine: Engine, image: str, wheels: Path, script: str) -> tuple[int, str]:
    """`script` in a new container of `image`, as the Pod runs it: /work an empty folder
    anyone may write to (an emptyDir is mode 0777), /tmp a tmpfs, the rest read-only."""
    work = Path(tempfile.mkdtemp(prefix="imagesmith-it-work-"))
    work.chmod(0o1777)
    try:
        return _run(engine, image, wheels, work, script)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(engine: Engine, image: str, wheels: Path, work: Path, script: str) -> tuple[int, str]:
    done = subprocess.run(
        [
            engine.name,
            "run",
            "--rm",
            "--network",
            "none",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,mode=1777",
            "--volume",
            f"{work}:/work",
            "--volume",
            f"{wheels}:/wheels:ro",
            image,
            "/bin/sh",
            "-c",
            script,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


def test_pip_installs_into_work_and_the_image_pins_stay(
    engine: Engine, notebook_image: Spec, tmp_path: Path
) -> None:
    lock = read_lock(notebook_image.lock_path)
    assert lock.python is not None
    six = next(p.version for p in lock.python.packages if p.name == "six")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheels.chmod(0o755)
    make_wheel(wheels, "tinypkg", "1.0", requires="six")
    make_wheel(wheels, "six", "99.0")
    for wheel in wheels.iterdir():
        wheel.chmod(0o644)
    image = f"{notebook_image.name}:{notebook_image.version}"

    code, output = run_as_the_pod(
        engine,
        image,
        wheels,
        "python3 -m pip install --no-index --find-links /wheels tinypkg && "
        "python3 -c \"import tinypkg, six; print('imported', tinypkg.VALUE, six.__version__, "
        'tinypkg.__file__, six.__file__)"',
    )
    assert code == 0, output
    assert "Requirement already satisfied: six" in output, output
    assert (
        f"imported 1.0 {six} /work/.local/lib/python3.11/site-packages/tinypkg.py "
        "/opt/venv/lib/python3.11/site-packages/six.py"
    ) in output, output

    code, output = run_as_the_pod(
        engine,
        image,
        wheels,
        "python3 -m pip install --no-index --find-links /wheels six==99.0; echo exit $?; "
        "python3 -c \"import six; print('six', six.__version__)\"; ls /work/.local 2>&1",
    )
    assert re.search(r"^exit [1-9]", output, re.M), output
    assert f"\nsix {six}\n" in output, output
    assert "No such file or directory" in output, output  # nothing was installed
