"""The input archive against a real docker-registry process on 127.0.0.1 (with auth)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, ImagesmithError, OperationError
from imagesmith.inputs.archive import (
    ARTIFACT_TYPE,
    DEB_TYPE,
    TITLE,
    TOOL_TYPE,
    WHEEL_TYPE,
    archived_names,
    base_tag,
    ensure_base,
    fetch_input,
    file_digest,
    input_file,
    inputs_tag,
    push_inputs,
)
from imagesmith.inputs.debs import deb_cache
from imagesmith.inputs.tool_wheel import tool_digest, wheel_name
from imagesmith.model.lock import AptPackage, Lock, read_lock
from imagesmith.model.records import read_push_record
from imagesmith.model.reference import parse_reference
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.push import push
from imagesmith.registry.client import RegistryClient
from tests.fixtures.make_lock import make_lock
from tests.integration.conftest import ImageTracker, Registry, second_podman

pytestmark = pytest.mark.registry
IMAGESMITH = shutil.which("imagesmith") or "imagesmith"


@pytest.fixture
def logged_in(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", registry.username)
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", registry.password)
    return registry


def _file(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def test_push_then_fetch_by_digest_and_dedup(
    logged_in: Registry, example_dir: Path, tmp_path: Path
) -> None:
    lock = make_lock(example_dir / "env.toml")
    repo = parse_reference(f"{logged_in.host}/lab/inputs-{uuid.uuid4().hex[:8]}")
    deb = input_file(DEB_TYPE, _file(tmp_path / "in", "tool_1.0_amd64.deb", b"deb 1.0" * 1000))
    wheel = input_file(WHEEL_TYPE, _file(tmp_path / "in", "w-1-py3-none-any.whl", b"wheel"))
    subject = "sha256:" + "ab" * 32

    first = push_inputs([deb, wheel], repo, lock=lock, subject_digest=subject, subject_size=10)
    assert (first.files, first.new_files) == (2, 2)
    assert first.new_bytes == deb.size + wheel.size
    again = push_inputs([deb, wheel], repo, lock=lock, subject_digest=subject, subject_size=10)
    assert again.new_files == 0 and again.digest == first.digest  # same bytes, nothing sent

    # A second image sharing the .deb adds only its own file.
    other = input_file(DEB_TYPE, _file(tmp_path / "in", "other_2.0_amd64.deb", b"other"))
    second = push_inputs(
        [deb, other], repo, lock=lock, subject_digest="sha256:" + "cd" * 32, subject_size=10
    )
    assert (second.new_files, second.new_bytes) == (1, other.size)

    # The tag names the archive; its manifest says what it is and what image it is for.
    _, _, body = RegistryClient(repo.registry).manifest(repo.path, inputs_tag(lock))
    manifest = json.loads(body)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["subject"]["digest"] == "sha256:" + "cd" * 32
    assert archived_names(repo, lock) == {deb.digest: deb.name, other.digest: other.name}

    # Anything pushed comes back by its digest alone, checked.
    out = tmp_path / "out" / "x.deb"
    assert fetch_input(repo, deb.digest, out) is None
    assert out.read_bytes() == deb.path.read_bytes()
    missing = "sha256:" + hashlib.sha256(b"never pushed").hexdigest()
    reason = fetch_input(repo, missing, tmp_path / "out" / "y.deb")
    assert reason is not None and "not there" in reason
    assert not (tmp_path / "out" / "y.deb").exists()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.deb"]  # no partial left


def test_a_blob_damaged_in_the_registry_is_refused(
    logged_in: Registry, example_dir: Path, tmp_path: Path
) -> None:
    lock = make_lock(example_dir / "env.toml")
    repo = parse_reference(f"{logged_in.host}/lab/damaged-{uuid.uuid4().hex[:8]}")
    data = b"precious .deb bytes" * 100
    deb = input_file(DEB_TYPE, _file(tmp_path / "in", "p_1_amd64.deb", data))
    push_inputs([deb], repo, lock=lock, subject_digest="sha256:" + "ef" * 32, subject_size=1)
    assert logged_in.root is not None
    storage = logged_in.root / "data" / "docker" / "registry" / "v2"
    blob = storage / "blobs" / "sha256" / deb.digest[7:9] / deb.digest[7:] / "data"
    saved = blob.read_bytes()
    try:
        blob.write_bytes(data.replace(b"precious", b"PRECIOUS"))
        out = tmp_path / "out.deb"
        reason = fetch_input(repo, deb.digest, out)
        assert reason is not None and f"when asked for blob {deb.digest}" in reason
        assert not out.exists()
    finally:
        blob.write_bytes(saved)


@pytest.mark.integration
def test_rebuild_takes_what_the_archives_no_longer_serve_from_the_registry(
    engine: Engine,
    base_image: str,
    logged_in: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Build and push with inputs; then, with an empty imagesmith cache and neither
    Debian's archive nor the package index reachable (as when both have moved on), the
    same lock rebuilds to the same digest from the registry's input archive alone; a
    repository without the archive fails naming each missing .deb and where it looked."""
    name = f"it-inputs-{uuid.uuid4().hex[:8]}"
    repo = f"{logged_in.host}/lab/{name}"
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "{name}"\n[base]\nimage = "{base_image}"\n[apt]\npackages = ["jq"]\n'
        '[python]\nrequirements = ["six==1.17.0"]\n'
        f'[registry]\nrepository = "{repo}"\n'
    )
    spec = load_spec(folder / "env.toml")
    first = build(spec, engine)
    try:
        lock = read_lock(spec.lock_path)
        # The image goes up, its inputs cannot be gathered (jq's .deb gone from the cache,
        # no source reachable): one line saying so, and the push record still tells the
        # truth about the image. (The next push fetches the .deb again.)
        (deb_cache() / str(lock_jq(lock).sha256)).unlink()
        with monkeypatch.context() as offline:
            _unreachable(offline)
            with pytest.raises(OperationError) as failed:
                push(spec, lock)
        assert str(failed.value).startswith(f"pushed {repo}@{first.digest}, but storing its")
        assert "(push again, or pass --no-inputs)" in str(failed.value)
        assert read_push_record(spec.path, lock.lock_hash) is not None
        push(spec, lock)
        _, _, body = RegistryClient(logged_in.host).manifest(f"lab/{name}", inputs_tag(lock))
        layers = json.loads(body)["layers"]
        debs = {layer["digest"] for layer in layers if layer["mediaType"] == DEB_TYPE}
        assert debs == {f"sha256:{p.sha256}" for p in lock.apt.packages}
        assert [
            layer["annotations"][TITLE] for layer in layers if layer["mediaType"] == WHEEL_TYPE
        ] == ["six-1.17.0-py2.py3-none-any.whl"]
        # The imagesmith that wrote the lock is kept too, and comes back installable.
        (tool,) = [layer for layer in layers if layer["mediaType"] == TOOL_TYPE]
        assert tool["digest"] == lock.imagesmith_wheel == tool_digest()
        fetched = subprocess.run(
            [IMAGESMITH, "fetch-tool", str(folder / "env.toml"), "-o", str(tmp_path / "tool")],
            capture_output=True,
            text=True,
        )
        assert fetched.returncode == 0, fetched.stderr
        wheel = tmp_path / "tool" / wheel_name(lock.imagesmith_version)
        assert file_digest(wheel) == lock.imagesmith_wheel
        assert "install: python3 -m venv venv && venv/bin/pip install" in fetched.stdout
        venv = tmp_path / "tool-venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True
        )
        version = subprocess.run(
            [venv / "bin" / "python", "-c", "import imagesmith; print(imagesmith.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert version.stdout.strip() == lock.imagesmith_version
        assert (venv / "bin" / "imagesmith").is_file()

        # A machine with only env.toml, env.lock and the registry: no cache, and every
        # public source unreachable (a proxy that answers nothing; the registry is local).
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
        _unreachable(monkeypatch)
        again = build(spec, engine, no_cache=True)
        assert again.digest == first.digest
        cached = tmp_path / "empty-cache" / "imagesmith"
        assert len(list((cached / "debs").glob("[0-9a-f]*"))) == len(lock.apt.packages)
        wheels = list((cached / "wheels").glob("*/wheels/*"))
        assert [w.name for w in wheels] == ["six-1.17.0-py2.py3-none-any.whl"]

        # The same lock with a repository that holds no archive: nothing serves the .debs.
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache-2"))
        toml = (folder / "env.toml").read_text().replace(f'lab/{name}"', f'lab/{name}-none"')
        (folder / "env.toml").write_text(toml)
        with pytest.raises(ImagesmithError) as caught:
            build(load_spec(folder / "env.toml"), engine, no_cache=True)
        lines = str(caught.value).splitlines()
        assert len(lines) == len(lock.apt.packages)
        jq = next(line for line in lines if line.startswith("apt: jq "))
        assert "not found; looked in: host cache" in jq
        assert f"{logged_in.host}/lab/{name}-none:{inputs_tag(lock)}: no input archive there" in jq
        assert f"{lock_jq(lock).source}/{lock_jq(lock).path} (cannot fetch" in jq
    finally:
        for tag in first.tags:
            engine.remove_image(tag, force=True)


@pytest.mark.integration
def test_a_second_machine_builds_the_lock_from_the_registry_alone(
    engine: Engine,
    base_image: str,
    podman_engine: Engine,
    logged_in: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: ImageTracker,
) -> None:
    """A lock whose base was made on this machine and never pushed, and whose spec copies a
    folder in, built, pushed with its inputs; then a podman with a storage of its own and
    an empty imagesmith cache (a second machine) builds it with nothing but env.toml,
    env.lock and the registry: the base and the copied files come from there."""
    marker = uuid.uuid4().hex
    local_base = images.derive(
        "local-base", f"FROM {base_image}\nRUN echo {marker} > /etc/lab-base-marker\n", tmp_path
    )
    name = f"it-base-{marker[:8]}"
    repo = f"{logged_in.host}/lab/{name}"
    folder = tmp_path / "lab"
    script = _file(
        folder / "scripts", "run.sh", b"#!/bin/sh\ncat /etc/lab-base-marker /opt/lab/data/p.txt\n"
    )
    script.chmod(0o755)
    _file(folder / "scripts" / "data", "p.txt", f"params {marker}\n".encode())
    (folder / "env.toml").write_text(
        f'name = "{name}"\n[base]\nimage = "{local_base}"\n'
        '[image]\ncmd = ["/opt/lab/run.sh"]\n'
        'copy = [{ src = "scripts", dest = "/opt/lab" }]\n'
        f'[registry]\nrepository = "{repo}"\n'
    )
    spec = load_spec(folder / "env.toml")
    first = build(spec, engine)
    for tag in first.tags:
        images.add(tag)
    lock = read_lock(spec.lock_path)
    assert lock.base.local
    push(spec, lock)
    _, _, body = RegistryClient(logged_in.host).manifest(f"lab/{name}", base_tag(lock))
    assert json.loads(body)["config"]["digest"] == lock.base.digest  # the very image ID

    with second_podman(tmp_path, monkeypatch) as second:
        assert not second.image_exists(lock.base.digest)
        # Without the lab's registry, one line says where the base is and how to get it,
        # instead of the engine trying Docker Hub for an image ID.
        with pytest.raises(
            EngineError,
            match=r"is not in podman's image store: it exists "
            r"only where it was made\. Made by `imagesmith base`\? Make it here",
        ):
            ensure_base(second, lock, None)
        machine = tmp_path / "second-machine-folder"
        machine.mkdir()
        for file in ("env.toml", "env.lock"):
            shutil.copy(folder / file, machine / file)
        built = subprocess.run(
            [IMAGESMITH, "build", "--engine", "podman", "--json", str(machine / "env.toml")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert built.returncode == 0, built.stderr
        assert json.loads(built.stdout)["digest"] == first.digest
        assert f"copy: scripts was not in {machine}; restored it from the input archive" in (
            built.stderr
        )
        assert (machine / "scripts" / "run.sh").read_bytes() == script.read_bytes()
        assert (machine / "scripts" / "run.sh").stat().st_mode & 0o111
        assert (machine / "scripts" / "data" / "p.txt").read_text() == f"params {marker}\n"
        run = second.run(json.loads(built.stdout)["tags"][0], [])
        assert run.output.split() == [marker, "params", marker]

        # Neither the host cache nor the registry (a wrong password) has the copy: one line
        # naming each place looked in, and nothing written.
        shutil.rmtree(machine / "scripts")
        shutil.rmtree(tmp_path / "second-machine" / "cache" / "imagesmith" / "copies")
        missing = subprocess.run(
            [IMAGESMITH, "build", "--engine", "podman", str(machine / "env.toml")],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "IMAGESMITH_REGISTRY_PASSWORD": "wrong"},
        )
        assert missing.returncode == 1, missing.stderr
        assert "Traceback" not in missing.stderr
        errors = [line for line in missing.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, missing.stderr
        assert errors[0].startswith(
            f"error: [image] copy: scripts ({lock.copy[0].sha256[:19]}...) not found; looked "
            f"in: {machine / 'scripts'} (absent); host cache "
        )
        assert f" (absent); {logged_in.host}/lab/{name}:{inputs_tag(lock)}: " in errors[0]
        assert not (machine / "scripts").exists()


def lock_jq(lock: Lock) -> AptPackage:
    return next(p for p in lock.apt.packages if p.name == "jq")


def _unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every public source unreachable from this process and its children: a proxy that
    answers nothing (the registry on 127.0.0.1 stays reachable)."""
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("PIP_RETRIES", "0")
    # urllib reads the proxy variables when it makes its opener: make it again.
    monkeypatch.setattr(urllib.request, "_opener", None)
