"""The .debs on the host: fetched in parallel, resumed, hash-checked, cached by sha256.

Against a real HTTP server on 127.0.0.1 that this test runs (Range requests included),
never the network.
"""

from __future__ import annotations

import base64
import hashlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import LockError, OperationError
from imagesmith.inputs.debs import HashMismatch, fetch_debs
from imagesmith.model.lock import AptLock, AptPackage

#: Nothing listens there: a place that cannot be reached.
UNREACHABLE = "http://127.0.0.1:9"


@dataclass
class Archive:
    """What the test server serves, and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    delay: float = 0.0
    ignore_range: bool = False
    cut_after: int | None = None
    """Send this many bytes of the next response, then drop the connection."""
    drop_idle: bool = False
    """Close each connection after its response without saying so (a server's idle timeout)."""
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    most_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@pytest.fixture
def archive() -> Iterator[Archive]:
    state = Archive()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections alive, as real archives do

        def log_message(self, format: str, *args: object) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1

        def do_GET(self) -> None:
            with state.lock:
                state.requests.append((self.path, self.headers.get("Range")))
                state.headers.append(dict(self.headers))
                state.active += 1
                state.most_active = max(state.most_active, state.active)
            try:
                time.sleep(state.delay)
                body = state.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if match and not state.ignore_range:
                    start = int(match.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                if state.cut_after is not None:
                    self.wfile.write(body[start : start + state.cut_after])
                    state.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])
                if state.drop_idle:
                    self.close_connection = True
            finally:
                with state.lock:
                    state.active -= 1

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


def deb(name: str, body: bytes, source: str, *, version: str = "1.0-1") -> AptPackage:
    return AptPackage(
        name=name,
        version=version,
        arch="amd64",
        sha256=hashlib.sha256(body).hexdigest(),
        path=f"pool/main/{name[0]}/{name}/{name}_{version}_amd64.deb",
        size=len(body),
        source=source,
    )


def served(archive: Archive, name: str, body: bytes, **kw: str) -> AptPackage:
    package = deb(name, body, f"{archive.url}/debian", **kw)
    archive.files[f"/debian/{package.path}"] = body
    return package


def test_fetches_every_deb_in_parallel_into_the_cache(archive: Archive, tmp_path: Path) -> None:
    archive.delay = 0.3
    bodies = {f"pkg{i}": bytes([i]) * (100_000 + i) for i in range(6)}
    packages = [served(archive, name, body) for name, body in bodies.items()]
    lines: list[str] = []
    started = time.monotonic()
    found = fetch_debs(AptLock(suite="bookworm", packages=tuple(packages)), cache=tmp_path,
                       on_line=lines.append)  # fmt: skip
    elapsed = time.monotonic() - started
    assert archive.most_active > 1 and elapsed < 6 * archive.delay
    assert list(found) == sorted(bodies)
    for package in packages:
        path = found[package.name]
        assert path == tmp_path / str(package.sha256)
        assert path.read_bytes() == bodies[package.name]
        assert path.stat().st_mode & 0o777 == 0o644  # the build's apt reads it as _apt
    assert not list(tmp_path.glob("*.partial"))
    assert lines[0] == "apt: fetching 6 .debs (0.6 MB) on the host"
    # Cached now: a second run asks no place at all.
    archive.requests.clear()
    lines.clear()
    assert fetch_debs(AptLock(suite="bookworm", packages=tuple(packages)), cache=tmp_path,
                      on_line=lines.append) == found  # fmt: skip
    assert archive.requests == [] and lines == []


@pytest.mark.parametrize("ignore_range", [False, True])
def test_a_partial_download_is_resumed(
    archive: Archive, tmp_path: Path, ignore_range: bool
) -> None:
    body = bytes(range(256)) * 1000
    package = served(archive, "big", body)
    (tmp_path / f"{package.sha256}.partial").write_bytes(body[:100_000])
    archive.ignore_range = ignore_range  # a server that sends it whole: started over
    found = fetch_debs(AptLock(suite="bookworm", packages=(package,)), cache=tmp_path)
    assert archive.requests == [(f"/debian/{package.path}", "bytes=100000-")]
    assert found["big"].read_bytes() == body
    assert not (tmp_path / f"{package.sha256}.partial").exists()


def test_a_dropped_connection_keeps_what_came_and_the_next_build_resumes(
    archive: Archive, tmp_path: Path
) -> None:
    body = bytes(range(256)) * 400
    package = served(archive, "cut", body)
    apt = AptLock(suite="bookworm", packages=(package,))
    archive.cut_after = 30_000
    with pytest.raises(OperationError) as caught:
        fetch_debs(apt, cache=tmp_path)
    assert f"{archive.url}/debian/{package.path} (cannot fetch: " in caught.value.lines()[0]
    assert not isinstance(caught.value, HashMismatch)
    assert (tmp_path / f"{package.sha256}.partial").stat().st_size == 30_000
    assert fetch_debs(apt, cache=tmp_path)["cut"].read_bytes() == body
    assert archive.requests[-1] == (f"/debian/{package.path}", "bytes=30000-")


def test_a_partial_file_with_bad_bytes_is_fetched_again_whole(
    archive: Archive, tmp_path: Path
) -> None:
    body = b"the real file " * 1000
    package = served(archive, "rotten", body)
    (tmp_path / f"{package.sha256}.partial").write_bytes(b"X" * 5000)
    found = fetch_debs(AptLock(suite="bookworm", packages=(package,)), cache=tmp_path)
    assert found["rotten"].read_bytes() == body
    assert [r[1] for r in archive.requests] == ["bytes=5000-", None]


def test_a_download_that_does_not_match_stops_with_package_and_both_hashes(
    archive: Archive, tmp_path: Path
) -> None:
    good = served(archive, "good", b"fine")
    bad = served(archive, "evil", b"what the lock pinned")
    archive.files[f"/debian/{bad.path}"] = b"something else"
    with pytest.raises(HashMismatch) as caught:
        fetch_debs(AptLock(suite="bookworm", packages=(good, bad)), cache=tmp_path)
    actual = hashlib.sha256(b"something else").hexdigest()
    assert caught.value.lines() == [
        f"apt: evil 1.0-1 from {archive.url}/debian/{bad.path} does not match env.lock: "
        f"expected sha256:{bad.sha256}, got sha256:{actual}"
    ]
    assert caught.value.exit_code == 1
    assert not (tmp_path / str(bad.sha256)).exists()
    assert not (tmp_path / f"{bad.sha256}.partial").exists()


def test_a_corrupt_cache_entry_is_fetched_again(archive: Archive, tmp_path: Path) -> None:
    package = served(archive, "libfoo1", b"the real thing", version="2:1.0-1")
    (tmp_path / str(package.sha256)).write_bytes(b"the real thin")  # one byte short
    lines: list[str] = []
    found = fetch_debs(
        AptLock(suite="bookworm", packages=(package,)), cache=tmp_path, on_line=lines.append
    )
    assert found["libfoo1"].read_bytes() == b"the real thing"
    assert lines[0] == (
        f"cache: .deb libfoo1 2:1.0-1 sha256:{package.sha256} was corrupt; fetching it again"
    )
    assert len(archive.requests) == 1


def test_missing_inputs_list_each_package_and_every_place_looked(
    archive: Archive, tmp_path: Path
) -> None:
    there = served(archive, "there", b"here I am")
    gone = deb("gone", b"replaced upstream", f"{archive.url}/debian")
    far = deb("far", b"behind a wall", UNREACHABLE + "/debian")
    # Taken from the snapshot archive when the source no longer has it.
    old = deb("old", b"only in the snapshot", f"{archive.url}/debian")
    archive.files[f"/snap/debian-security/20250101T000000Z/{old.path}"] = b"only in the snapshot"
    apt = AptLock(suite="bookworm", snapshot="20250101T000000Z", packages=(there, gone, far, old))
    with pytest.raises(OperationError) as caught:
        fetch_debs(apt, cache=tmp_path, snapshot_archive=f"{archive.url}/snap")
    lines = caught.value.lines()
    assert len(lines) == 2
    snap = f"{archive.url}/snap"
    assert lines[0].startswith(f"apt: far 1.0-1 ({far.path}) not found; looked in: ")
    assert f"host cache {tmp_path / str(far.sha256)} (absent)" in lines[0]
    assert f"{UNREACHABLE}/debian/{far.path} (cannot fetch: " in lines[0]
    assert f"{snap}/debian/20250101T000000Z/{far.path} (HTTP 404 Not Found)" in lines[0]
    assert f"{snap}/debian-security/20250101T000000Z/{far.path} (HTTP 404" in lines[0]
    assert lines[1].startswith(f"apt: gone 1.0-1 ({gone.path}) not found; looked in: ")
    assert f"{archive.url}/debian/{gone.path} (HTTP 404 Not Found)" in lines[1]
    # What could be fetched is kept for next time.
    assert (tmp_path / str(there.sha256)).read_bytes() == b"here I am"
    assert (tmp_path / str(old.sha256)).read_bytes() == b"only in the snapshot"


def test_a_lock_that_does_not_say_where_a_deb_lives_is_refused(tmp_path: Path) -> None:
    old = AptPackage(name="curl", version="7.88.1-10", arch="amd64", sha256="ab" * 32)
    unsafe = deb("x", b"x", UNREACHABLE)
    unsafe = AptPackage(**{**vars(unsafe), "path": "pool/../../etc/x.deb"})
    with pytest.raises(LockError) as caught:
        fetch_debs(AptLock(suite="bookworm", packages=(old, unsafe)), cache=tmp_path)
    assert caught.value.exit_code == 2
    assert [line.split(":")[1] for line in caught.value.lines()] == [
        " apt package curl 7.88.1-10 does not say where its .deb lives (a lock from an older "
        "imagesmith); run `imagesmith lock` to pin it again",
        " apt package x",
    ]
    assert not list(tmp_path.iterdir())


def test_each_worker_keeps_one_connection_and_each_host_is_looked_up_once(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many .debs from one host: a few kept-alive connections and one DNS query, not one
    of each per file (a resolver that loses a query costs 5 s each time)."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def counted(host: str, *args: Any, **kwargs: Any) -> Any:
        lookups.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", counted)
    port = archive.url.rsplit(":", 1)[1]
    packages = []
    for i in range(30):
        body = bytes([i]) * (1000 + i)
        package = deb(f"pkg{i:02}", body, f"http://localhost:{port}/debian")
        archive.files[f"/debian/{package.path}"] = body
        packages.append(package)
    found = fetch_debs(AptLock(suite="bookworm", packages=tuple(packages)), cache=tmp_path,
                       workers=3)  # fmt: skip
    assert len(found) == 30 and len(archive.requests) == 30
    assert archive.connections <= 3
    assert lookups == ["localhost"]


def test_a_connection_the_server_closed_while_idle_is_opened_again(
    archive: Archive, tmp_path: Path
) -> None:
    archive.drop_idle = True
    bodies = {f"pkg{i}": bytes([i]) * 5000 for i in range(5)}
    packages = [served(archive, name, body) for name, body in bodies.items()]
    found = fetch_debs(AptLock(suite="bookworm", packages=tuple(packages)), cache=tmp_path,
                       workers=1)  # fmt: skip
    assert {name: path.read_bytes() for name, path in found.items()} == bodies
    assert archive.connections == 5


def test_the_environments_proxy_is_used_except_for_loopback_and_no_proxy(
    archive: Archive, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that is not loopback goes through `http_proxy` (the whole URL as the
    request target, its credentials as Proxy-Authorization); `no_proxy` hosts do not."""
    body = b"through the proxy" * 100
    package = deb("proxied", body, "http://debs.example.invalid/debian")
    archive.files[f"http://debs.example.invalid/debian/{package.path}"] = body
    monkeypatch.setenv("http_proxy", archive.url.replace("http://", "http://lab:s%40cret@"))
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    found = fetch_debs(AptLock(suite="bookworm", packages=(package,)), cache=tmp_path)
    assert found["proxied"].read_bytes() == body
    assert archive.requests == [(f"http://debs.example.invalid/debian/{package.path}", None)]
    expected = "Basic " + base64.b64encode(b"lab:s@cret").decode()
    assert archive.headers[0]["Proxy-Authorization"] == expected

    # Loopback never goes through it: the proxy could not reach this machine's loopback.
    local = served(archive, "local", b"direct" * 10)
    archive.requests.clear()
    fetch_debs(AptLock(suite="bookworm", packages=(local,)), cache=tmp_path)
    assert archive.requests == [(f"/debian/{local.path}", None)]

    # A no_proxy host is asked directly (here: a name that does not resolve).
    monkeypatch.setenv("no_proxy", "example.invalid")
    other = deb("other", b"x" * 10, "http://debs.example.invalid/debian")
    with pytest.raises(
        OperationError, match=r"other 1\.0-1 .*debs\.example\.invalid.*cannot fetch"
    ):
        fetch_debs(AptLock(suite="bookworm", packages=(other,)), cache=tmp_path)
