"""`imagesmith verify env.toml` when the rebuild really differs, on Docker and on podman.

The spec's `[image] run` step writes the time (nanoseconds) into /stamp, so no two builds
agree. verify rebuilds with no cache: exit 1, "NOT reproducible" with both digests, and a
report that names /stamp, and only /stamp, as the differing file. The recorded build, its tag and its record stay as they were.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from tests.integration.faults_kit import (
    build_digest,
    environment,
    imagesmith,
    remove_recorded,
    tiny_spec,
    unique,
)

pytestmark = pytest.mark.integration

STAMP = '[image]\nrun = ["date +%s%N > /stamp"]\n'


@pytest.fixture
def stamped(engine: Engine, base_image: str, tmp_path: Path) -> Iterator[Path]:
    spec = tiny_spec(
        tmp_path / "lab", base_image, name=unique("it-stamp"), python=False, extra=STAMP
    )
    yield spec
    remove_recorded(engine, spec)


def test_verify_names_the_file_a_rebuild_changes(
    engine: Engine, stamped: Path, tmp_path: Path
) -> None:
    env = environment(tmp_path)
    built = imagesmith(["build", str(stamped), "--engine", engine.name], env)
    assert built.returncode == 0, built.stderr
    digest = build_digest(built.stdout)
    record = stamped.with_suffix(".build.json").read_text()

    verified = imagesmith(["verify", str(stamped), "--engine", engine.name], env)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "Traceback" not in verified.stderr
    said = verified.stderr.splitlines()
    verdict = [line for line in said if line.startswith("NOT reproducible")]
    assert len(verdict) == 1, verified.stderr
    assert f"expected {digest}, the rebuild gave sha256:" in verdict[0]
    assert not verdict[0].endswith(digest)
    report = said[said.index(verdict[0]) + 1 :]
    # e.g. "  layer 2: stamp: content c74d849b96a0 (20 bytes) != e6f99c7b678e (20 bytes)":
    # the stamp is the one file the rebuild changes, and the report names it alone.
    assert report and all(line.startswith("  layer ") for line in report), report
    assert all(": stamp: content " in line for line in report), report

    as_json = imagesmith(["verify", str(stamped), "--engine", engine.name, "--json"], env)
    assert as_json.returncode == 1, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert any("stamp" in line for line in json.dumps(answer).splitlines()), answer

    # The build verify compared with is untouched: the record, and its tag on that image.
    assert stamped.with_suffix(".build.json").read_text() == record
    name = json.loads(record)["tags"][0]
    assert engine.inspect_image(name).id == json.loads(record)["image_id"]
