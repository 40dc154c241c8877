"""The Docker daemon stopped in the middle of a build (issue 18).

The machine's own dockerd is shared, so the test starts a second dockerd of its own (own
data root, exec root, pidfile, socket, and a bridge of its own with no iptables rules) and
points imagesmith at it with DOCKER_HOST. Never `--bridge=none`: a dockerd started so
deletes the host's docker0 interface, which the machine's own daemon uses.

Stopped (SIGTERM, as `systemctl stop docker`) while a RUN step runs: one error line, exit 1,
no build record, no tag. Started again: the same build succeeds, with the digest the
machine's own daemon gives the same lock.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from tests.integration.conftest import ensure_test_base
from tests.integration.faults_kit import (
    IMAGESMITH,
    build_digest,
    environment,
    imagesmith,
    remove_recorded,
    tiny_spec,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.docker]


class SecondDockerd:
    """A dockerd of the test's own, in `root`, reachable at `host`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.host = f"unix://{root}/docker.sock"
        self.bridge = f"ismt{uuid.uuid4().hex[:8]}"  # at most 15 characters
        self.proc: subprocess.Popen[bytes] | None = None
        used = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
        free = [n for n in range(32, 250) if f"10.213.{n}." not in used]
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(
            ["ip", "addr", "add", f"10.213.{random.choice(free)}.1/24", "dev", self.bridge],
            check=True,
        )
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def start(self) -> None:
        r = self.root
        log = (r / "dockerd.log").open("ab")
        self.proc = subprocess.Popen(
            ["dockerd", f"--data-root={r}/data", f"--exec-root={r}/exec",
             f"--pidfile={r}/dockerd.pid", f"--host={self.host}", f"--bridge={self.bridge}",
             "--iptables=false", "--ip-masq=false", "--ip-forward=false",
             "--shutdown-timeout=2", "--log-level=warn"],
            stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while self.docker("info").returncode != 0:
            assert self.proc.poll() is None, (r / "dockerd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the second dockerd did not answer in 60 s"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "--host", self.host, *args], capture_output=True, text=True, check=False
        )

    def remove(self) -> None:
        """Stop it, end what it left running (its containerd, shims: found by our folder in
        their command lines, ended by process ID), unmount and delete its folder, delete
        its bridge."""
        self.stop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.root).encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                        os.kill(int(entry), signal.SIGKILL)
        mounts = Path("/proc/mounts").read_text().splitlines()
        for point in reversed([line.split()[1] for line in mounts]):
            if point.startswith(f"{self.root}/"):
                subprocess.run(["umount", "--lazy", point], check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], check=False)


@pytest.fixture(scope="module")
def second_dockerd(docker_engine: Engine) -> Iterator[SecondDockerd]:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("dockerd", "ip", "docker")):
        pytest.skip("needs root, dockerd, the docker CLI and ip to start a second dockerd")
    # Short: the daemon's sockets live under it (108 bytes at most for a socket path).
    daemon = SecondDockerd(Path(tempfile.mkdtemp(prefix="ism-dockerd-", dir="/tmp")))
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.remove()


def test_daemon_stopped_mid_build_then_started_again(
    second_dockerd: SecondDockerd,
    docker_engine: Engine,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    base = ensure_test_base(docker_engine, request)
    saved = subprocess.run(["docker", "save", base], capture_output=True, check=True).stdout
    loaded = subprocess.run(
        ["docker", "--host", second_dockerd.host, "load"], input=saved, capture_output=True
    )
    assert loaded.returncode == 0, loaded.stderr

    name = unique("it-stopped")
    run = '[image]\nrun = ["sleep 5 && echo slept"]\n'
    reference = tiny_spec(tmp_path / "reference", base, name=name, python=False, extra=run)
    request.addfinalizer(lambda: remove_recorded(docker_engine, reference))
    main = {**environment(tmp_path / "main")}
    main.pop("DOCKER_HOST", None)
    built = imagesmith(["build", str(reference), "--engine", "docker"], main)
    assert built.returncode == 0, built.stderr
    digest = build_digest(built.stdout)

    spec = tmp_path / "lab" / "env.toml"
    spec.parent.mkdir()
    shutil.copy(reference, spec)
    shutil.copy(reference.with_suffix(".lock"), spec.with_suffix(".lock"))
    env = environment(tmp_path / "second", DOCKER_HOST=second_dockerd.host)
    args = [IMAGESMITH, "build", str(spec), "--engine", "docker"]
    seen: list[str] = []
    with subprocess.Popen(
        args, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        for line in proc.stderr:
            seen.append(line)
            if "sleep 5" in line and second_dockerd.proc is not None:
                time.sleep(1.5)  # the RUN step is running
                second_dockerd.stop()
        out = proc.stdout.read()
        assert proc.wait() == 1, "".join(seen) + out
    errors = [line for line in seen if line.startswith("error")]
    assert len(errors) == 1, "".join(seen)
    # Only the error's own context may follow it (the failing step, its last lines).
    after = seen[seen.index(errors[0]) + 1 :]
    assert all(line.startswith(("failing step:", "last ", "  ")) for line in after), "".join(seen)
    # Which one depends on the moment: the build's stream cut, no daemon to ask next, or
    # (on a loaded machine, the step done before the daemon stops) the step's commit failing.
    assert errors[0].startswith(
        ("error: docker: ", "error: no Docker daemon answers", "error: docker build failed: ")
    ), errors
    assert "Traceback" not in "".join(seen)
    assert not spec.with_suffix(".build.json").exists()

    second_dockerd.start()
    assert second_dockerd.docker("image", "inspect", f"{name}:1").returncode != 0
    again = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    assert build_digest(again.stdout) == digest
    assert second_dockerd.docker("image", "inspect", f"{name}:1").returncode == 0
