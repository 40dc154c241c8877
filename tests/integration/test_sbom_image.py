"""SBOM and provenance of real images: the same lock built on Docker and on podman gives
byte-identical SBOMs, and the SBOM lists exactly the packages dpkg and the venv hold."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.locking.resolve import lock_spec
from imagesmith.model.lock import write_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import BuildResult, build
from imagesmith.pipeline.debian_base import build_base
from tests.integration.conftest import TEST_REPOSITORY
from tests.unit.test_provenance import _check_slsa
from tests.unit.test_sbom import _pyspdxtools

pytestmark = pytest.mark.integration
runner = CliRunner()

VENV_DISTRIBUTIONS = (
    "import importlib.metadata as m\n"
    "for d in m.distributions(): print(d.metadata['Name'].lower().replace('_', '-'), d.version)"
)


def test_sbom_of_the_same_lock_is_byte_identical_on_both_engines_and_complete(
    docker_engine: Engine,
    podman_engine: Engine,
    session_rootfs: tuple[Path, str],
    tmp_path: Path,
) -> None:
    rootfs, _ = session_rootfs
    base = f"{TEST_REPOSITORY}/debian-sbom:{uuid.uuid4().hex[:8]}"
    made = []
    built: dict[str, BuildResult] = {}
    try:
        for engine in (docker_engine, podman_engine):
            build_base(engine, rootfs, tag=base)
            made.append((engine, base))
        path = tmp_path / "env.toml"
        path.write_text(
            f'name = "it-sbom-{uuid.uuid4().hex[:8]}"\nversion = "1.0"\n[base]\nimage = "{base}"\n'
            '[apt]\npackages = ["tzdata"]\n[python]\nrequirements = ["idna"]\n'
        )
        spec = load_spec(path)
        write_lock(lock_spec(spec, engine=lambda: docker_engine), spec.lock_path)
        sboms: dict[str, str] = {}
        for engine in (docker_engine, podman_engine):
            result = build(spec, engine)
            built[engine.name] = result
            for tag in result.tags:
                made.append((engine, tag))
            ref = result.tags[0]
            run = runner.invoke(app, ["sbom", ref, "--engine", engine.name])
            assert run.exit_code == 0, run.output
            sboms[engine.name] = run.stdout
            cdx = runner.invoke(app, ["sbom", ref, "-e", engine.name, "-f", "cyclonedx"])
            assert cdx.exit_code == 0, cdx.output
            sboms[engine.name + "-cdx"] = cdx.stdout
        assert sboms["docker"] == sboms["podman"]
        assert sboms["docker-cdx"] == sboms["podman-cdx"]
        out = tmp_path / "image.spdx.json"
        out.write_text(sboms["docker"])
        checked = _pyspdxtools(out)
        assert checked.returncode == 0, checked.stdout + checked.stderr

        # Exactly what the image holds: every dpkg package and every venv distribution.
        ref = built["podman"].tags[0]
        dpkg = podman_engine.run(ref, ["dpkg-query", "-W", "-f", "${Package} ${Version}\n"])
        assert dpkg.exit_code == 0, dpkg.output
        venv = podman_engine.run(ref, ["/opt/venv/bin/python", "-c", VENV_DISTRIBUTIONS])
        assert venv.exit_code == 0, venv.output
        in_image = {f"deb {line}" for line in dpkg.output.splitlines()}
        in_image |= {f"pypi {line}" for line in venv.output.splitlines()}
        cdx_doc = json.loads(sboms["docker-cdx"])
        in_sbom = {
            f"{c['purl'][4:].split('/')[0]} {c['name']} {c['version']}"
            for c in cdx_doc["components"]
            if c["type"] == "library"
        }
        assert in_sbom == in_image
        assert any(line.startswith("pypi idna ") for line in in_sbom)

        # idna declares its license (PEP 639): the SBOM carries what the image's metadata says.
        metadata = podman_engine.run(
            ref, ["/bin/sh", "-c", "cat /opt/venv/lib/python3*/site-packages/idna-*/METADATA"]
        )
        declared = [
            line.split(":", 1)[1].strip()
            for line in metadata.output.splitlines()
            if line.startswith("License-Expression:")
        ]
        assert declared, metadata.output[:500]
        idna = next(c for c in cdx_doc["components"] if c["name"] == "idna")
        assert idna["licenses"] == [{"expression": declared[0], "acknowledgement": "declared"}]

        # Debian packages: the license of a machine-readable copyright file's `Files: *`
        # paragraph, Debian's short name in SPDX terms (dpkg's file says GPL-2+).
        dpkg_component = next(c for c in cdx_doc["components"] if c["name"] == "dpkg")
        assert dpkg_component["licenses"] == [
            {"expression": "GPL-2.0-or-later", "acknowledgement": "declared"}
        ]
        licensed = [c for c in cdx_doc["components"] if c.get("licenses")]
        assert len(licensed) > len(cdx_doc["components"]) // 2

        # The provenance names the digest the build made.
        prov = runner.invoke(app, ["provenance", str(path)])
        assert prov.exit_code == 0, prov.output
        statement = json.loads(prov.stdout)
        _check_slsa(statement)
        assert statement["subject"][0]["digest"]["sha256"] == built["podman"].digest[7:]
        assert built["podman"].digest == built["docker"].digest
    finally:
        for engine, ref in reversed(made):
            engine.remove_image(ref, force=True)
        for engine in (docker_engine, podman_engine):
            if engine.name in built:
                engine.remove_image(built[engine.name].image_id, force=True)


def test_sbom_of_an_image_imagesmith_did_not_build_names_the_missing_label(
    docker_engine: Engine, session_rootfs: tuple[Path, str]
) -> None:
    rootfs, _ = session_rootfs
    tag = f"{TEST_REPOSITORY}/plain:{uuid.uuid4().hex[:8]}"
    build_base(docker_engine, rootfs, tag=tag)
    try:
        run = runner.invoke(app, ["sbom", tag, "--engine", "docker"])
        assert run.exit_code == 2
        assert run.stderr == (
            f"error: {tag} was not built by imagesmith: it has no dev.imagesmith.lock or "
            "io.imagesmith.lock label\n"
        )
    finally:
        docker_engine.remove_image(tag, force=True)
    assert subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode != 0
