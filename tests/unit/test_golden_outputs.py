"""Golden files for generated artifacts besides the Containerfile: the sbatch script of
each runtime, the Job and the Pod `imagesmith manifest` writes, and the lock's TOML. Checked as tests/unit/test_golden.py checks the
Containerfile (`tests.fixtures.golden.check_golden`): `IMAGESMITH_UPDATE_GOLDEN=1`
rewrites them, and that run fails.

The lock here is a fixed `Lock` object with every kind of field set, not one made from a
spec: its `imagesmith_version`, `imagesmith_wheel` (which follows imagesmith's own
source) and `format` are pinned, so that only a change in how a lock is written changes
the golden bytes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.model.input_files import parse_toml
from imagesmith.model.lock import (
    AptLock,
    AptPackage,
    AptSourceLock,
    BaseImageLock,
    CopyLock,
    Lock,
    PythonLock,
    PythonPackage,
    lock_schema,
    parse_lock,
)
from tests.conftest import EXAMPLE
from tests.fixtures.golden import GOLDEN, check_golden
from tests.fixtures.make_lock import fake_sha
from tests.support import pushed

RUNTIMES = ("apptainer", "podman", "pyxis")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sbatch_script_matches_the_golden_file(runtime: str, tmp_path: Path) -> None:
    """`imagesmith sbatch` of the example spec (one GPU, [env] with quoting, [job]) after a
    push of `registry.example.edu/lab/analysis@sha256:22...`."""
    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLE, folder)
    pushed(folder / "env.toml", pin_version=True)
    result = CliRunner().invoke(app, ["sbatch", str(folder / "env.toml"), "--runtime", runtime])
    assert result.exit_code == 0, result.output
    check_golden(GOLDEN / "sbatch" / f"lab-analysis-{runtime}.sh", result.stdout)


@pytest.mark.parametrize("kind", ["job", "pod"])
def test_manifest_matches_the_golden_file(kind: str, tmp_path: Path) -> None:
    """`imagesmith manifest --kind KIND` of the example spec after the same push."""
    folder = tmp_path / "lab"
    shutil.copytree(EXAMPLE, folder)
    pushed(folder / "env.toml", pin_version=True)
    result = CliRunner().invoke(app, ["manifest", str(folder / "env.toml"), "--kind", kind])
    assert result.exit_code == 0, result.output
    check_golden(GOLDEN / "manifests" / f"lab-analysis-{kind}.yaml", result.stdout)


def golden_lock() -> Lock:
    """A lock with every kind of field: a base with an index digest, apt packages from a
    snapshot and an extra source, Python with an extra index and a requirements file, a
    copied folder, and the spec it was made from."""
    return Lock(
        lock_version=1,
        format=6,
        imagesmith_version="0.0.0+golden",
        imagesmith_wheel=fake_sha("imagesmith wheel"),
        spec_hash=fake_sha("spec"),
        inputs_hash=fake_sha("inputs"),
        platform="linux/amd64",
        source_date_epoch=1747699200,
        spec_data={
            "name": "golden",
            "version": "1.0",
            "base": {"image": "debian:bookworm"},
            "apt": {"packages": ["curl", "lab-tools"]},
            "python": {"requirements": ["requests==2.32.3"]},
            "env": {"GREETING": 'it\'s "quoted" and ünïcode'},
            "image": {"copy": [{"src": "scripts/", "dest": "/opt/scripts/"}]},
        },
        base=BaseImageLock(
            reference="debian:bookworm",
            repository="debian",
            digest=fake_sha("debian:bookworm"),
            index_digest=fake_sha("debian:bookworm index"),
        ),
        apt=AptLock(
            suite="bookworm",
            snapshot="20250520T000000Z",
            packages=(
                AptPackage(
                    name="curl",
                    version="7.88.1-10+deb12u12",
                    arch="amd64",
                    sha256=fake_sha("curl")[7:],
                    requested=True,
                    path="pool/main/c/curl/curl_7.88.1-10+deb12u12_amd64.deb",
                    size=315_000,
                    source="http://snapshot.debian.org/archive/debian/20250520T000000Z",
                ),
                AptPackage(
                    name="lab-tools",
                    version="1:2.0-1",
                    arch="all",
                    sha256=fake_sha("lab-tools")[7:],
                    requested=True,
                    path="pool/main/l/lab-tools/lab-tools_2.0-1_all.deb",
                    size=1_234,
                    source="https://apt.lab.example.edu/debian",
                ),
                AptPackage(
                    name="libcurl4",
                    version="7.88.1-10+deb12u12",
                    arch="amd64",
                    sha256=fake_sha("libcurl4")[7:],
                    path="pool/main/c/curl/libcurl4_7.88.1-10+deb12u12_amd64.deb",
                    size=390_000,
                    source="http://snapshot.debian.org/archive/debian/20250520T000000Z",
                ),
            ),
            sources=(
                AptSourceLock(
                    url="https://apt.lab.example.edu/debian",
                    suites=("bookworm",),
                    components=("main",),
                    key="lab.asc",
                    fingerprints=("0123456789ABCDEF0123456789ABCDEF01234567",),
                ),
            ),
        ),
        python=PythonLock(
            version="3.11",
            platform="x86_64-manylinux_2_36",
            packages=(
                PythonPackage(
                    name="certifi",
                    version="2025.4.26",
                    hashes=(fake_sha("certifi"), fake_sha("certifi 2")),
                ),
                PythonPackage(
                    name="lab-utils",
                    version="0.3",
                    hashes=(fake_sha("lab-utils"),),
                    sdist_only=True,
                ),
                PythonPackage(name="requests", version="2.32.3", hashes=(fake_sha("requests"),)),
            ),
            index_url="https://pypi.lab.example.edu/simple",
            extra_index_urls=("https://wheels.lab.example.edu/simple",),
            requirements_file_lines=("requests==2.32.3", "lab-utils==0.3"),
        ),
        copy=(CopyLock(src="scripts/", dest="/opt/scripts/", sha256=fake_sha("scripts tree")),),
        spec_path=Path("env.toml"),
    )


def test_lock_toml_matches_the_golden_file_and_reads_back() -> None:
    lock = golden_lock()
    text = lock.to_toml()
    check_golden(GOLDEN / "lock" / "env.lock", text)
    assert parse_lock(text, path=Path("env.lock")) == lock
    # A lock imagesmith could have written: it passes the lock schema too.
    validator = jsonschema.Draft202012Validator(lock_schema())
    assert [e.message for e in validator.iter_errors(parse_toml(text, "env.lock"))] == []
