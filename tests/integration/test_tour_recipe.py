"""The README tour's reference spec (recipes/lab-analysis), built as shipped, and its Job's
command run in the image: the script [image] copy puts there, with no GPU.

No public registry answers here, so `debian:bookworm` is replaced by the local Debian base
(as in test_recipes_build.py); the whole recipe folder is copied, as `imagesmith init`
does, so train.py is beside env.toml. Docker only: a few minutes (git, curl and the HDF5
headers from Debian, numpy, requests and pyyaml). The image is removed afterwards.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from tests.conftest import RECIPES
from tests.integration.conftest import ensure_test_base

pytestmark = [pytest.mark.integration, pytest.mark.docker]


def test_the_reference_recipe_job_runs_as_shipped(
    docker_engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = ensure_test_base(docker_engine, request)
    folder = tmp_path / "lab"
    shutil.copytree(RECIPES / "lab-analysis", folder)
    spec_path = folder / "env.toml"
    text = spec_path.read_text()
    text = text.replace('image = "debian:bookworm"', f'image = "{base}"')
    text = text.replace('name = "lab-analysis"', f'name = "it-tour-{uuid.uuid4().hex[:8]}"')
    spec_path.write_text(text)
    spec = load_spec(spec_path)
    assert spec.resources.gpu == 0 and spec.job.command is not None
    result = build(spec, docker_engine)
    try:
        job = docker_engine.run(result.tags[0], list(spec.job.command))
        assert job.exit_code == 0, job.output
        # The fit finds the coefficients the script made its data with (1.5, -2, 0.5).
        found = re.search(
            r"numpy 2\.\S+ cpus \d+ coefficients \[ *1\.5 +-2\. +0\.5\d?\]", job.output
        )
        assert found, job.output
    finally:
        for tag in result.tags:
            docker_engine.remove_image(tag, force=True)
        docker_engine.remove_image(result.image_id, force=True)
