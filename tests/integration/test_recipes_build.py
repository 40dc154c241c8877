"""The recipes, locked and built for real on Docker, as a lab would after `imagesmith init`.

No public registry answers here, so `debian:bookworm` is replaced by the local Debian base
(`imagesmith/debian:bookworm`, made with mmdebstrap when missing and kept, as in
conftest.py); apt resolves against Debian's archive and pip against the package index.
python-minimal, r-base, python-science and jupyter are built and looked into (the last two
download a few hundred MB of wheels: minutes each); pytorch-gpu is locked on the same base
but not built (several GB of CUDA wheels, and no GPU here). Every image a test builds is
removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.locking.resolve import lock_spec
from imagesmith.model.lock import Lock, read_lock, write_lock
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.render.containerfile import decode_embedded_lock, render
from tests.conftest import RECIPES
from tests.integration.conftest import ensure_test_base

pytestmark = [pytest.mark.integration, pytest.mark.docker]

#: The longest line Docker's Containerfile parser accepts (docker 20.10: "dockerfile line
#: greater than max allowed size of 65535").
DOCKER_MAX_LINE = 65535


@pytest.fixture(scope="module")
def docker_base(docker_engine: Engine, request: pytest.FixtureRequest) -> str:
    """The local Debian base on Docker, built once when missing (and kept)."""
    return ensure_test_base(docker_engine, request)


@pytest.fixture
def built(docker_engine: Engine) -> Iterator[list[str]]:
    """Tags and image IDs a test built: all removed at teardown."""
    refs: list[str] = []
    yield refs
    for ref in reversed(refs):
        docker_engine.remove_image(ref, force=True)


def recipe_copy(tmp_path: Path, recipe: str, base: str) -> Path:
    """The recipe's env.toml in a folder of the test's, on the local base, with a unique name."""
    folder = tmp_path / recipe
    folder.mkdir()
    text = (RECIPES / recipe / "env.toml").read_text()
    assert 'image = "debian:bookworm"' in text
    text = text.replace('image = "debian:bookworm"', f'image = "{base}"')
    text = text.replace(f'name = "{recipe}"', f'name = "it-{recipe}-{uuid.uuid4().hex[:8]}"')
    (folder / "env.toml").write_text(text)
    return folder / "env.toml"


def lock_recipe(path: Path, engine: Engine) -> Lock:
    """Lock the recipe and write env.lock (a build then uses it as it is)."""
    spec = load_spec(path)
    lock = lock_spec(spec, engine=lambda: engine)
    assert lock.base.local and lock.apt.suite == "bookworm"
    write_lock(lock, spec.lock_path)
    return lock


def longest_line(text: str) -> int:
    return max(len(line.encode("utf-8")) for line in text.splitlines())


def test_python_minimal_builds_and_runs(
    docker_engine: Engine, docker_base: str, tmp_path: Path, built: list[str]
) -> None:
    path = recipe_copy(tmp_path, "python-minimal", docker_base)
    spec = load_spec(path)
    result = build(spec, docker_engine)
    built.extend([*result.tags, result.image_id])
    lock = read_lock(spec.lock_path)
    assert lock.python is not None and lock.python.packages == ()
    run = docker_engine.run(
        result.tags[0],
        ["/bin/sh", "-c", 'python3 --version && echo "$VIRTUAL_ENV" && id -u && pwd'],
    )
    assert run.exit_code == 0, run.output
    assert "Python 3.11" in run.output
    assert run.output.split()[-3:] == ["/opt/venv", "10001", "/work"]
    job = docker_engine.run(result.tags[0], list(spec.job.command or ()))
    assert job.exit_code == 0 and job.output.startswith("3.11"), job.output


def test_r_base_builds_with_data_table_and_ggplot2(
    docker_engine: Engine, docker_base: str, tmp_path: Path, built: list[str]
) -> None:
    path = recipe_copy(tmp_path, "r-base", docker_base)
    spec = load_spec(path)
    lock = lock_recipe(path, docker_engine)
    assert lock.python is None
    names = {p.name for p in lock.apt.packages}
    assert {"r-base-core", "r-cran-data.table", "r-cran-ggplot2"} <= names
    assert not {"python3", "gcc"} & names  # no Python table, no compiler
    result = build(spec, docker_engine)
    built.extend([*result.tags, result.image_id])

    version = docker_engine.run(result.tags[0], ["R", "--version"])
    assert version.exit_code == 0 and version.output.startswith("R version 4."), version.output
    check = docker_engine.run(
        result.tags[0],
        [
            "Rscript",
            "-e",
            "library(data.table); dt <- data.table(x = 1:10)[, .(s = sum(x))]; "
            "cat('sum', dt$s, 'threads', getDTthreads() <= 2, '\\n'); "
            "library(ggplot2); cat('uid', system('id -u', intern = TRUE), '\\n')",
        ],
    )
    assert check.exit_code == 0, check.output
    # OMP_NUM_THREADS = [resources] cpu caps data.table's threads, whatever the node has.
    assert "sum 55 threads TRUE" in check.output and "uid 10001" in check.output
    # What the Job runs, word for word.
    job = docker_engine.run(result.tags[0], list(spec.job.command or ()))
    assert job.exit_code == 0, job.output
    assert "R version 4." in job.output and "| data.table 1." in job.output
    assert "| ggplot2 3." in job.output


def test_python_science_builds_and_its_job_runs(
    docker_engine: Engine, docker_base: str, tmp_path: Path, built: list[str]
) -> None:
    path = recipe_copy(tmp_path, "python-science", docker_base)
    lock = lock_recipe(path, docker_engine)
    names = {p.name for p in lock.apt.packages}
    assert {"libhdf5-103-1", "hdf5-tools", "python3", "python3-venv"} <= names
    assert lock.python is not None and lock.python.version == "3.11"
    pins = {p.name: p for p in lock.python.packages}
    assert {"numpy", "scipy", "pandas", "matplotlib", "h5py"} <= set(pins)
    assert int(pins["numpy"].version.split(".")[0]) >= 2
    assert all(p.hashes for p in pins.values())
    assert longest_line(render(lock)) <= DOCKER_MAX_LINE
    spec = load_spec(path)
    result = build(spec, docker_engine)
    built.extend([*result.tags, result.image_id])
    # What the Job runs, word for word: every library imports, with the locked versions.
    job = docker_engine.run(result.tags[0], list(spec.job.command or ()))
    assert job.exit_code == 0, job.output
    for name in ("numpy", "scipy", "pandas", "matplotlib", "h5py"):
        assert f"{name} {pins[name].version}" in job.output, job.output
    tools = docker_engine.run(result.tags[0], ["/bin/sh", "-c", "h5dump --version && id -u"])
    assert tools.exit_code == 0 and "h5dump: Version 1.10" in tools.output, tools.output
    assert tools.output.split()[-1] == "10001"


def test_jupyter_builds_and_carries_its_lock(
    docker_engine: Engine, docker_base: str, tmp_path: Path, built: list[str]
) -> None:
    path = recipe_copy(tmp_path, "jupyter", docker_base)
    lock = lock_recipe(path, docker_engine)
    assert lock.python is not None
    assert {"jupyterlab", "jupyter-server", "ipykernel"} <= {p.name for p in lock.python.packages}
    assert len(lock.python.packages) > 80
    # The embedded lock is longer than a Containerfile line may be: it is split.
    assert longest_line(render(lock)) <= DOCKER_MAX_LINE
    result = build(load_spec(path), docker_engine)
    built.extend([*result.tags, result.image_id])
    labels = docker_engine.inspect_image(result.image_id).labels
    assert labels["dev.imagesmith.lock-hash"] == lock.lock_hash
    assert decode_embedded_lock(labels["dev.imagesmith.lock"]) == lock.to_toml()
    run = docker_engine.run(result.tags[0], ["jupyter", "lab", "--version"])
    jupyterlab = next(p for p in lock.python.packages if p.name == "jupyterlab")
    assert run.exit_code == 0 and run.output.strip() == jupyterlab.version, run.output


def test_pytorch_gpu_locks_on_plain_debian_with_cuda_from_the_wheels(
    docker_engine: Engine, docker_base: str, tmp_path: Path
) -> None:
    """Locked for real (apt in the base, Python pins from the index through the host's
    proxy), never built here: the image is several GB and no GPU is at hand."""
    path = recipe_copy(tmp_path, "pytorch-gpu", docker_base)
    lock = lock_recipe(path, docker_engine)
    names = {p.name for p in lock.apt.packages}
    assert {"python3", "python3-venv"} <= names  # added for [python]: the base has none
    assert not any("cuda" in name or "nvidia" in name for name in names)  # CUDA: the wheels
    assert lock.python is not None and lock.python.version == "3.11"
    assert lock.python.platform == "x86_64-manylinux_2_36"
    pins = {p.name: p.version for p in lock.python.packages}
    assert pins["torch"] == "2.6.0" and pins["torchvision"] == "0.21.0"
    # PyTorch's own CUDA 12.4 runtime and cuDNN 9, as pinned wheels with their hashes.
    assert pins["nvidia-cuda-runtime-cu12"].startswith("12.4.")
    assert pins["nvidia-cudnn-cu12"].startswith("9.")
    assert all(p.hashes for p in lock.python.packages)
    assert not [p.name for p in lock.python.packages if p.sdist_only]
    assert longest_line(render(lock)) <= DOCKER_MAX_LINE
