"""Images built before 0.6.0 carry their lock as `io.imagesmith.lock`: still read, on both engines.

The image is made here with only that label (FROM scratch: no layer, seconds), holding the
lock imagesmith 0.5.0 wrote in tests/fixtures/lock-0.5.0. `inspect` shows it; `verify`
refuses it before building anything, naming the version that rebuilds it bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.model.lock import read_lock
from imagesmith.render.containerfile import embedded_lock
from tests.integration.conftest import ImageTracker

pytestmark = pytest.mark.integration

LEGACY = Path(__file__).resolve().parent.parent / "fixtures" / "lock-0.5.0" / "env.lock"
runner = CliRunner()


def test_a_0_5_0_image_is_inspected_and_its_verify_refused(
    engine: Engine, images: ImageTracker, tmp_path: Path
) -> None:
    label = embedded_lock(read_lock(LEGACY))
    (tmp_path / "Containerfile").write_text(f'FROM scratch\nLABEL "io.imagesmith.lock"="{label}"\n')
    tag = images.tag("legacy-label")
    engine.build(context=tmp_path, tags=[tag])
    assert engine.inspect_image(tag).labels["io.imagesmith.lock"] == label

    shown = runner.invoke(app, ["inspect", tag, "--engine", engine.name])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith(f"{tag}: legacy:1.0, image sha256:")
    lock = runner.invoke(app, ["inspect", tag, "--engine", engine.name, "--show", "lock"])
    assert lock.exit_code == 0 and lock.stdout == LEGACY.read_text()

    verified = runner.invoke(app, ["verify", tag, "--engine", engine.name])
    assert verified.exit_code == 2, verified.output
    (line,) = [entry for entry in verified.stderr.splitlines() if entry.startswith("error:")]
    assert f"the lock {tag} carries was written by imagesmith 0.5.0" in line
    assert "install imagesmith 0.5.0 to rebuild it bit for bit" in line
    assert "Traceback" not in verified.output
