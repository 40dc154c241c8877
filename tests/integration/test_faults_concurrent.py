"""Builds at the same time, sharing one cache, on Docker and on podman (issue 18).

Three `build`s of one spec in one folder at once (none locked yet: they lock at once too),
and three different specs at once. All succeed, each digest is the one a build of the same
spec alone gives (a fresh cache, after), and every cache entry still matches its digest.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from tests.integration.faults_kit import (
    IMAGESMITH,
    build_digest,
    cache_problems,
    environment,
    imagesmith,
    remove_recorded,
    tiny_spec,
    unique,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def specs(engine: Engine) -> Iterator[list[Path]]:
    made: list[Path] = []
    yield made
    for spec in made:
        remove_recorded(engine, spec)


def _at_once(specs: list[Path], engine: Engine, env: dict[str, str]) -> list[str]:
    """Build every spec of `specs` at the same time; their digests, in order."""
    procs = [
        subprocess.Popen(
            [IMAGESMITH, "build", str(spec), "--engine", engine.name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    digests = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        digests.append(build_digest(out))
    return digests


def _alone(spec: Path, engine: Engine, root: Path) -> str:
    built = imagesmith(["build", str(spec), "--engine", engine.name], environment(root))
    assert built.returncode == 0, built.stderr
    return build_digest(built.stdout)


def test_three_builds_of_one_spec_at_once(
    engine: Engine, base_image: str, tmp_path: Path, specs: list[Path]
) -> None:
    spec = tiny_spec(tmp_path / "lab", base_image, name=unique("it-same"), python=False)
    specs.append(spec)
    digests = _at_once([spec] * 3, engine, environment(tmp_path / "shared"))
    assert len(set(digests)) == 1, digests
    assert cache_problems(tmp_path / "shared" / "cache" / "imagesmith") == []
    assert _alone(spec, engine, tmp_path / "alone") == digests[0]


def test_three_different_specs_at_once(
    engine: Engine, base_image: str, tmp_path: Path, specs: list[Path]
) -> None:
    extras = ["", '[env]\nLAB = "two"\n', '[image]\nrun = ["echo three > /etc/lab"]\n']
    for i, extra in enumerate(extras):
        specs.append(
            tiny_spec(
                tmp_path / f"lab{i}", base_image, name=unique("it-diff"), python=False, extra=extra
            )
        )
    digests = _at_once(specs, engine, environment(tmp_path / "shared"))
    assert len(set(digests)) == 3, digests
    assert cache_problems(tmp_path / "shared" / "cache" / "imagesmith") == []
    for spec, digest in zip(specs, digests, strict=True):
        assert _alone(spec, engine, tmp_path / "alone") == digest
