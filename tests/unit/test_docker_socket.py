"""DockerEngine's ping and inspect over the local socket, without docker-py.

A small fake daemon on a unix socket the test owns answers as the test says: an image,
no such image, a server error, or an answer cut short. The real daemon is never touched.
The no-op build's use of this path against a real daemon is in the integration tier
(test_build_docker: the no-op rebuild).
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.docker import DockerEngine
from imagesmith.engine.docker_socket import BrokenAnswer, parse_answer
from imagesmith.errors import EngineError, NoLocalImageError

IMAGE = {
    "Id": "sha256:" + "ab" * 32,
    "RepoTags": ["lab:1.0", "<none>:<none>"],
    "RepoDigests": [],
    "Size": 1234,
    "Architecture": "amd64",
    "Os": "linux",
    "Config": {"User": "10001", "WorkingDir": "/work", "Env": ["A=1"], "Labels": {"k": "v"}},
}


class FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path) -> None:
        self.inspect = "image"  # image | missing | error | cut | chunked-open
        self.requests: list[str] = []
        super().__init__(str(path), _Handler)


class _Handler(socketserver.StreamRequestHandler):
    server: FakeDaemon

    def handle(self) -> None:
        line = self.rfile.readline().decode("latin-1")
        while self.rfile.readline().strip():
            pass
        target = line.split(" ")[1]
        self.server.requests.append(target)
        if target == "/_ping":
            self._answer(200, b"OK")
        elif self.server.inspect == "image":
            self._answer(200, json.dumps(IMAGE).encode())
        elif self.server.inspect == "missing":
            self._answer(404, b'{"message":"No such image: lab:2.0"}')
        elif self.server.inspect == "error":
            self._answer(500, b'{"message":"layer store broken\\nmore detail"}')
        elif self.server.inspect == "chunked-open":  # chunks, then the connection stays open
            body = json.dumps(IMAGE).encode()
            self.wfile.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                + f"{len(body[:10]):x}\r\n".encode()
                + body[:10]
                + f"\r\n{len(body[10:]):x}\r\n".encode()
                + body[10:]
                + b"\r\n0\r\n\r\n"
            )
            self.wfile.flush()
            self.rfile.read()  # until the client closes
        else:  # cut: a Content-Length longer than the body, then the connection closes
            self.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"Id":')
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    def _answer(self, status: int, body: bytes) -> None:
        self.wfile.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.wfile.flush()


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    path = tmp_path / "docker.sock"
    server = FakeDaemon(path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_inspect_over_the_socket_reads_the_image(daemon: FakeDaemon) -> None:
    engine = DockerEngine()
    info = engine.inspect_image("lab:1.0")
    assert info.id == IMAGE["Id"]
    assert info.repo_tags == ("lab:1.0",)
    assert (info.size, info.user, info.workdir, info.env, info.labels) == (
        1234,
        "10001",
        "/work",
        {"A": "1"},
        {"k": "v"},
    )
    assert engine.image_exists("lab:1.0")
    assert daemon.requests == ["/_ping", "/images/lab:1.0/json", "/images/lab:1.0/json"]


def test_a_missing_image_is_no_local_image(daemon: FakeDaemon) -> None:
    daemon.inspect = "missing"
    engine = DockerEngine()
    assert not engine.image_exists("lab:2.0")
    with pytest.raises(NoLocalImageError):
        engine.inspect_image("lab:2.0")


def test_chunks_on_a_connection_left_open_are_read_to_the_last(daemon: FakeDaemon) -> None:
    daemon.inspect = "chunked-open"
    assert DockerEngine().inspect_image("lab:1.0").id == IMAGE["Id"]


def test_a_daemon_error_is_one_line(daemon: FakeDaemon) -> None:
    daemon.inspect = "error"
    with pytest.raises(EngineError) as caught:
        DockerEngine().inspect_image("lab:1.0")
    assert caught.value.lines() == ["docker: inspect lab:1.0: layer store broken"]


def test_an_answer_cut_short_is_a_broken_connection(daemon: FakeDaemon) -> None:
    daemon.inspect = "cut"
    with pytest.raises(EngineError) as caught:
        DockerEngine().inspect_image("lab:1.0")
    (line,) = caught.value.lines()
    assert line.startswith("docker: inspect lab:1.0: the connection to the Docker daemon at")
    assert "nothing was tagged or recorded" in line


def test_no_daemon_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nobody.sock")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    with pytest.raises(EngineError) as caught:
        DockerEngine()
    assert caught.value.lines() == [
        f"no Docker daemon answers at unix://{tmp_path}/nobody.sock: start it (dockerd &, or "
        "scripts/start-dockerd.sh) or use --engine podman"
    ]


def test_ping_and_inspect_do_not_import_docker_py(daemon: FakeDaemon) -> None:
    """The point of the socket path: an unchanged build does not pay for docker-py."""
    script = (
        "import sys\n"
        "from imagesmith.engine import get_engine\n"
        "engine = get_engine('docker')\n"
        "print(engine.inspect_image('lab:1.0').id)\n"
        "print(sorted(m for m in ('docker', 'requests', 'urllib3', 'http.client') "
        "if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
    ).stdout.splitlines()
    assert out == [IMAGE["Id"], "[]"]


def test_an_answer_in_chunks_is_joined() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4\r\n{"Id\r\n6;ext=1\r\n": 1}\n\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    assert parse_answer(raw) == (200, b'{"Id": 1}\n')


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"", "the answer ended after 0 bytes, before its headers"),
        (b"HTTP/1.0 200 OK\r\nContent-Len", "the answer ended after 28 bytes, before its headers"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "the answer ended after 19 bytes, before its headers"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 9\r\n\r\n{}", "the answer ended after 2 of 9 bytes"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: x\r\n\r\n{}", "the answer's Content-Length is b'x'"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab", "inside its chunks"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "inside its chunks"),
    ],
)
def test_an_unreadable_answer_is_broken(raw: bytes, problem: str) -> None:
    with pytest.raises(BrokenAnswer) as caught:
        parse_answer(raw)
    assert problem in str(caught.value)


def test_a_body_without_length_runs_to_the_close() -> None:
    assert parse_answer(b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\nno such image") == (
        404,
        b"no such image",
    )
