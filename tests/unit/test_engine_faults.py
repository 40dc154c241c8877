"""A Docker daemon that goes away mid-build: one line, exit 1, no tag, no record.

The daemon here is a small fake of the Docker API on a unix socket that the test owns
(docker-py talks to it through DOCKER_HOST, as to a real one): it answers the version
and ping probes, takes the build context, starts streaming the build and then drops the
connection, as a stopped or restarted dockerd does. The real daemon is never touched.
"""

from __future__ import annotations

import gc
import json
import socket
import socketserver
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.model.lock import write_lock
from tests.fixtures.make_lock import make_lock

runner = CliRunner()

SPEC = """\
name = "faulty"
version = "1.0"
[base]
image = "debian:bookworm"
[env]
MARK = "faulty"
"""


class FakeDocker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Just enough of the Docker API to start a build, then the connection breaks.

    `fault`: "mid-stream" sends a chunked 200 with two progress messages and closes in
    the middle of the third chunk; "no-answer" closes as soon as the build request is in.
    """

    daemon_threads = True

    def __init__(self, path: Path, fault: str) -> None:
        self.fault = fault
        self.requests: list[str] = []
        super().__init__(str(path), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: FakeDocker

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers: dict[str, str] = {}
            while (header := self.rfile.readline().decode("latin-1").strip()) != "":
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._read_body(headers)
            path = target.split("?")[0]
            self.server.requests.append(f"{method} {path}")
            if path.endswith(("/build", "/get")):
                self._broken_build()
                return
            if path.endswith("/_ping"):
                self._answer(200, b"OK", "text/plain")
            elif path.endswith("/version"):
                self._answer(
                    200, json.dumps({"ApiVersion": "1.41", "Version": "20.10.24"}).encode()
                )
            elif path.startswith("/images/sha256:") or "/images/sha256:" in path:
                # Holds every image named by its ID (the base a lock pins by ID), so a
                # build gets as far as the build request.
                image_id = path.split("/images/", 1)[1].removesuffix("/json")
                self._answer(200, json.dumps({"Id": image_id, "Config": {}}).encode())
            elif path.endswith("/info"):
                self._answer(
                    200, json.dumps({"Driver": "vfs", "DockerRootDir": "/nowhere"}).encode()
                )
            else:
                self._answer(404, json.dumps({"message": f"no {path} in this fake"}).encode())

    def _read_body(self, headers: dict[str, str]) -> None:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                self.rfile.read(size + 2)
                if size == 0:
                    return
        length = int(headers.get("content-length", "0"))
        while length > 0:
            length -= len(self.rfile.read(min(length, 65536)))

    def _answer(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.wfile.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nApi-Version: 1.41\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.wfile.flush()

    def _broken_build(self) -> None:
        if self.server.fault == "no-answer":
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for message in ({"stream": "Step 1/9 : FROM debian\n"}, {"stream": " ---> 0123abcd\n"}):
            data = json.dumps(message).encode() + b"\r\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.write(b"400\r\n" + b'{"stream": "Step 2/9 : RUN apt-get')  # 1024 promised
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture(autouse=True)
def _collect_docker_py_context_file() -> Iterator[None]:
    """docker-py leaves its build-context temporary file open when the request fails
    before an answer ("no-answer"); it is closed by the garbage collector later, with a
    ResourceWarning that pytest would pin on whichever test runs then. Collect it here."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    folder = tmp_path / "lab"
    folder.mkdir()
    (folder / "env.toml").write_text(SPEC)
    write_lock(make_lock(folder / "env.toml"), folder / "env.lock")
    return folder


@pytest.fixture(params=["mid-stream", "no-answer"])
def fake_docker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeDocker]:
    sock = tmp_path / "docker.sock"
    server = FakeDocker(sock, request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_daemon_that_drops_the_build_is_one_line_and_leaves_nothing(
    lab: Path, fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    lock_before = (lab / "env.lock").read_bytes()
    result = runner.invoke(app, ["build", str(lab / "env.toml"), "--engine", "docker"])
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]], lines
    assert lines[-1].startswith(
        f"error: docker: build: the connection to the Docker daemon at unix://{tmp_path}/docker.sock broke"
    )
    assert "Traceback" not in result.output
    assert any(r.endswith("/build") for r in fake_docker.requests), fake_docker.requests
    assert not [r for r in fake_docker.requests if "/tag" in r], fake_docker.requests
    assert not (lab / "env.build.json").exists()
    assert (lab / "env.lock").read_bytes() == lock_before
    assert sorted(p.name for p in lab.iterdir()) == ["env.lock", "env.toml"]


def test_proxies_with_a_password_are_kept_out_of_builds() -> None:
    from imagesmith.engine.base import build_proxies, proxy_warning

    kept, dropped = build_proxies(
        {
            "HTTP_PROXY": "http://lab:s3cr3t@proxy.example.edu:3128",
            "https_proxy": "http://token@proxy.example.edu:3128",
            "HTTPS_PROXY": "http://proxy.example.edu:3128",
            "NO_PROXY": "localhost,127.0.0.1",
            "IMAGESMITH_REGISTRY_PASSWORD": "not a proxy: untouched",
        }
    )
    assert kept == {
        "HTTPS_PROXY": "http://proxy.example.edu:3128",
        "NO_PROXY": "localhost,127.0.0.1",
        "IMAGESMITH_REGISTRY_PASSWORD": "not a proxy: untouched",
    }
    assert dropped == ["HTTP_PROXY", "https_proxy"]
    assert "s3cr3t" not in proxy_warning(dropped)
    assert proxy_warning(dropped).startswith("warning: HTTP_PROXY, https_proxy holds a user name")


def test_a_killed_podman_build_is_one_line(tmp_path: Path) -> None:
    """A `podman` that dies by a signal (here a stand-in script that kills itself; the real
    podman is killed in tests/integration/test_engine_faults.py): one EngineError line."""
    from imagesmith.engine.podman import PodmanEngine
    from imagesmith.errors import EngineError

    fake = tmp_path / "podman"
    fake.write_text("#!/bin/sh\necho 'STEP 1/2: FROM debian'\nkill -9 $$\n")
    fake.chmod(0o755)
    context = tmp_path / "context"
    context.mkdir()
    (context / "Containerfile").write_text("FROM debian\n")
    with pytest.raises(EngineError) as caught:
        PodmanEngine(str(fake)).build(context=context)
    assert caught.value.lines() == [
        "podman build was killed (SIGKILL) before it finished; nothing was tagged or "
        "recorded: run the build again"
    ]


@pytest.mark.parametrize(
    ("exit_code", "said", "failed"),
    [
        # rootless podman with no /dev/net/tun (as seen for real): its log line comes first.
        (
            126,
            'time="2026-12-03T16:39:49Z" level=warning msg="\\"/\\" is not a shared mount"\n'
            'Error: /usr/bin/slirp4netns failed: "open(\\"/dev/net/tun\\"): Permission denied"',
            'podman run img: /usr/bin/slirp4netns failed: "open(\\"/dev/net/tun\\"): '
            'Permission denied"',
        ),
        (125, "Error: unknown flag: --bogus", "podman run img: unknown flag: --bogus"),
        (126, "sh: 1: ./x: Permission denied", None),  # the command's own exit code
        (127, "sh: 1: nope: not found", None),
        # podman's words for a command that is not there or cannot run: the command's.
        (
            127,
            'Error: runc: runc create failed: unable to start container process: exec: "nope": '
            "executable file not found in $PATH: OCI runtime attempted to invoke a command "
            "that was not found",
            None,
        ),
        (126, "Error: crun: open executable: Permission denied: OCI permission denied", None),
        (
            126,
            'Error: runc: runc create failed: unable to start container process: exec: "/x": '
            "permission denied: OCI permission denied",
            None,
        ),
    ],
)
def test_podman_failing_to_start_a_container_is_the_engines_error(
    tmp_path: Path, exit_code: int, said: str, failed: str | None
) -> None:
    """podman's own failure is an EngineError naming it (not the command's exit code, which
    the probe would take for apt's); the command's own 126 or 127 is its result."""
    from imagesmith.engine.podman import PodmanEngine
    from imagesmith.errors import EngineError

    (tmp_path / "said").write_text(said + "\n")
    fake = tmp_path / "podman"
    fake.write_text(f"#!/bin/sh\ncat {tmp_path / 'said'}\nexit {exit_code}\n")
    fake.chmod(0o755)
    engine = PodmanEngine(str(fake))
    if failed is None:
        result = engine.run("img", ["sh", "-c", "x"])
        assert (result.exit_code, result.output) == (exit_code, said + "\n")
        return
    with pytest.raises(EngineError) as caught:
        engine.run("img", ["true"])
    assert caught.value.lines() == [failed]


def test_a_daemon_that_drops_a_save_stream_is_one_line(
    fake_docker: FakeDocker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import docker

    from imagesmith.engine.docker import DockerEngine
    from imagesmith.errors import EngineError

    host = f"unix://{tmp_path}/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)
    engine = DockerEngine(docker.DockerClient(base_url=host, version="1.41"))
    dest = tmp_path / "out" / "image.tar"
    dest.parent.mkdir()
    with pytest.raises(EngineError) as caught:
        engine.save("lab:1", dest)
    (line,) = caught.value.lines()
    assert line.startswith("docker: save ") and "the connection to the Docker daemon" in line
    assert list(dest.parent.iterdir()) == []  # no partial archive
