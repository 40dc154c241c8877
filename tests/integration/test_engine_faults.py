"""Engine faults and host secrets, on the real engines.

- podman killed in the middle of a build: one line, exit 1, no tag, no record; the next
  build succeeds (podman is daemonless: killing our own `podman build` child is safe).
- a Docker connection dropped mid-build (a fake daemon on the test's own socket, see
  tests/unit/test_engine_faults.py), then the real daemon: the next build succeeds.
- credentials planted on the host (a Docker config with auths and proxies, the registry
  password variable, proxy variables with passwords) reach neither env.lock,
  env.build.json, the rendered Containerfile, the printed build log, nor the image's
  layers and config.

The imagesmith CLI runs as a subprocess, as a user runs it, with its own environment.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.model.records import build_record_path

pytestmark = pytest.mark.integration

IMAGESMITH = str(Path(sys.executable).with_name("imagesmith"))


def _spec(folder: Path, base_image: str, *, name: str, run: str = "") -> Path:
    folder.mkdir(parents=True)
    run_line = f"[image]\nrun = [{json.dumps(run)}]\n" if run else ""
    (folder / "env.toml").write_text(
        f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n{run_line}'
    )
    return folder / "env.toml"


@pytest.fixture
def built(engine: Engine) -> Iterator[list[Path]]:
    """Specs whose recorded images and tags are removed at the end."""
    specs: list[Path] = []
    yield specs
    for spec in specs:
        record = build_record_path(spec)
        if record.exists():
            data = json.loads(record.read_text())
            for tag in data["tags"]:
                engine.remove_image(tag, force=True)
            engine.remove_image(data["image_id"], force=True)


def _children(pid: int, command: str, subcommand: str) -> list[int]:
    """The children of `pid` running `command subcommand ...` (imagesmith runs other podman
    commands beside the build: the rewrite of finished stages reads their images)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        if int(stat.rsplit(")", 1)[1].split()[1]) != pid or comm != command:
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if subcommand.encode() in argv[1:2]:
            found.append(int(entry))
    return found


def _working_containers() -> set[str]:
    """IDs of buildah's working containers (what a `podman build` holds while it runs)."""
    if shutil.which("buildah") is None:
        return set()
    listed = subprocess.run(
        ["buildah", "containers", "--quiet", "--notruncate"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(listed.stdout.split())


@pytest.fixture
def killed_build_leftovers() -> Iterator[None]:
    """A podman killed with SIGKILL cannot remove its working containers (nothing can, but
    the next podman that knows their IDs): remove those that appeared during the test."""
    before = _working_containers()
    yield
    new = sorted(_working_containers() - before)
    if new:
        subprocess.run(["buildah", "rm", *new], capture_output=True, check=False)


@pytest.mark.podman
@pytest.mark.parametrize("engine", ["podman"], indirect=True)
def test_podman_killed_mid_build_is_one_line_and_the_next_build_succeeds(
    engine: Engine, base_image: str, tmp_path: Path, built: list[Path], killed_build_leftovers: None
) -> None:
    name = f"it-killed-{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path / "lab", base_image, name=name, run="sleep 6 && echo slept")
    built.append(spec)
    env = {**os.environ, "CI": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    seen: list[str] = []
    killed: list[int] = []
    deadline = time.monotonic() + 300
    with subprocess.Popen(
        [IMAGESMITH, "build", str(spec), "--engine", "podman", "--no-cache"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            seen.append(line)
            if "sleep 6" in line and not killed:
                time.sleep(1)  # the RUN step is running
                podman = _children(proc.pid, "podman", "build")
                assert podman, seen
                os.kill(podman[0], signal.SIGKILL)
                killed.append(podman[0])
            assert time.monotonic() < deadline, seen
        stdout = proc.stdout.read()
        assert proc.wait() == 1, "".join(seen) + stdout
    assert killed, seen
    assert seen[-1].startswith("error: podman build was killed (SIGKILL) before it finished")
    assert [line for line in seen if line.startswith("error")] == [seen[-1]]
    assert "Traceback" not in "".join(seen)
    assert not build_record_path(spec).exists()
    assert not engine.image_exists(f"{name}:1")

    again = subprocess.run(
        [IMAGESMITH, "build", str(spec), "--engine", "podman"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert build_record_path(spec).exists() and engine.image_exists(f"{name}:1")


@pytest.mark.docker
@pytest.mark.parametrize("engine", ["docker"], indirect=True)
def test_docker_connection_lost_mid_build_then_the_real_daemon_builds(
    engine: Engine, base_image: str, tmp_path: Path, built: list[Path]
) -> None:
    from tests.unit.test_engine_faults import FakeDocker

    name = f"it-dropped-{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path / "lab", base_image, name=name, run="echo built")
    built.append(spec)
    env = {**os.environ, "CI": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("DOCKER_HOST", None)
    locked = subprocess.run(
        [IMAGESMITH, "lock", str(spec), "--engine", "docker"], env=env, capture_output=True
    )
    assert locked.returncode == 0, locked.stderr
    fake = FakeDocker(tmp_path / "fake.sock", "mid-stream")
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    try:
        dropped = subprocess.run(
            [IMAGESMITH, "build", str(spec), "--engine", "docker"],
            env={**env, "DOCKER_HOST": f"unix://{tmp_path}/fake.sock"},
            capture_output=True,
            text=True,
        )
    finally:
        fake.shutdown()
        fake.server_close()
    assert dropped.returncode == 1, dropped.stderr
    assert dropped.stderr.splitlines()[-1].startswith("error: docker: build: the connection")
    assert "Traceback" not in dropped.stderr
    assert not build_record_path(spec).exists()

    again = subprocess.run(
        [IMAGESMITH, "build", str(spec), "--engine", "docker"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert build_record_path(spec).exists() and engine.image_exists(f"{name}:1")


def _blobs(data: bytes) -> Iterator[bytes]:
    """`data` and, inside it, every tar member and gzip stream, opened."""
    yield data
    if data[:2] == b"\x1f\x8b":
        yield from _blobs(gzip.decompress(data))
        return
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        yield from _blobs(handle.read())
    except tarfile.TarError:
        return


def test_host_credentials_reach_no_record_log_or_image(
    engine: Engine, base_image: str, tmp_path: Path, built: list[Path]
) -> None:
    secrets = {k: f"planted-{k}-{uuid.uuid4().hex}" for k in ("auth", "proxy", "password", "env")}
    config = tmp_path / "docker-config"
    config.mkdir()
    proxy = f"http://lab:{secrets['proxy']}@127.0.0.1:9"
    (config / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "registry.example.edu": {
                        "auth": base64.b64encode(f"lab:{secrets['auth']}".encode()).decode()
                    }
                },
                "proxies": {"default": {"httpProxy": proxy, "httpsProxy": proxy, "noProxy": "*"}},
            }
        )
    )
    name = f"it-secrets-{uuid.uuid4().hex[:8]}"
    spec = _spec(tmp_path / "lab", base_image, name=name, run="env | sort > /etc/build-env")
    built.append(spec)
    planted = f"http://lab:{secrets['env']}@127.0.0.1:9"
    env = {
        **os.environ,
        "CI": "1",
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "DOCKER_CONFIG": str(config),
        "IMAGESMITH_REGISTRY_USER": "lab",
        "IMAGESMITH_REGISTRY_PASSWORD": secrets["password"],
        "HTTP_PROXY": planted,
        "HTTPS_PROXY": planted,
        "http_proxy": planted,
        "https_proxy": planted,
        "ALL_PROXY": planted,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    result = subprocess.run(
        [IMAGESMITH, "build", str(spec), "--engine", engine.name, "--no-cache"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    rendered = subprocess.run(
        [IMAGESMITH, "render", str(spec)], env=env, capture_output=True, text=True
    )
    assert rendered.returncode == 0, rendered.stderr
    record = json.loads(build_record_path(spec).read_text())
    saved = tmp_path / "image.tar"
    engine.save(record["image_id"], saved)
    places = {
        "build log": (result.stdout + result.stderr).encode(),
        "env.lock": spec.with_suffix(".lock").read_bytes(),
        "env.build.json": build_record_path(spec).read_bytes(),
        "Containerfile": rendered.stdout.encode(),
        "image": saved.read_bytes(),
        "labels": json.dumps(engine.inspect_image(record["image_id"]).labels).encode(),
    }
    for place, data in places.items():
        for blob in _blobs(data):
            for secret in secrets.values():
                assert secret.encode() not in blob, f"{secret} found in the {place}"
