"""A private package index that needs a password: the password comes from ~/.netrc and
reaches uv and pip on the host, never env.lock or a command line (no engine; a real HTTP
index on 127.0.0.1 that refuses requests without the credentials)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import ResolveError
from imagesmith.inputs.context import fetch_wheels
from imagesmith.locking.python_pins import resolve_python
from imagesmith.model.spec import spec_from_valid_data
from tests.unit.test_venv import make_wheel

pytestmark = pytest.mark.integration

USER, SECRET = "alice", "s3cr3t-index-token"


class PrivateIndex:
    """A PEP 503 simple index with one wheel, behind HTTP basic auth."""

    def __init__(self, wheel: Path) -> None:
        self.wheel = wheel
        self.seen: list[tuple[str, bool]] = []  # (path, authorized)
        expected = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        index = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self.do_GET(head=True)

            def do_GET(self, head: bool = False) -> None:
                authorized = self.headers.get("Authorization") == expected
                index.seen.append((self.path, authorized))
                if not authorized:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="lab"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = index.answer(self.path)
                self.send_response(200 if body is not None else 404)
                html = self.path.startswith("/simple")
                self.send_header(
                    "Content-Type", "text/html" if html else "application/octet-stream"
                )
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                if not head:
                    self.wfile.write(body or b"")

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, path: str) -> bytes | None:
        data = self.wheel.read_bytes()
        if path.rstrip("/") in ("/simple/demo", "/simple/demo/index.html"):
            sha = hashlib.sha256(data).hexdigest()
            link = f'<a href="/files/{self.wheel.name}#sha256={sha}">{self.wheel.name}</a>'
            return f"<html><body>{link}</body></html>".encode()
        if path == f"/files/{self.wheel.name}":
            return data
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[PrivateIndex]:
    (tmp_path / "dist").mkdir()
    served = PrivateIndex(make_wheel(tmp_path / "dist", name="demo", version="1.0"))
    yield served
    served.close()


def _spec(index_url: str) -> Any:
    data = {
        "name": "x",
        "base": {"image": "debian"},
        "python": {"requirements": ["demo"], "index_url": index_url},
    }
    return spec_from_valid_data(data, path=Path("/nonexistent/env.toml"))


def test_netrc_credentials_reach_uv_and_pip_but_no_lock_or_command_line(
    index: PrivateIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin {USER}\npassword {SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    argvs: list[list[str]] = []
    real_run = subprocess.run

    def spy_run(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        argvs.append([str(a) for a in argv])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr("subprocess.run", spy_run)
    lock = resolve_python(
        _spec(index.url), python_version="3.11", wheel_platform="x86_64-manylinux_2_36"
    )
    (demo,) = lock.packages
    assert (demo.name, demo.version) == ("demo", "1.0") and demo.hashes
    wheels = fetch_wheels(lock)
    assert [p.name for p in (wheels / "wheels").iterdir()] == ["demo-1.0-py3-none-any.whl"]

    assert any(ok for path, ok in index.seen if path.startswith("/simple")), index.seen  # uv
    assert any(ok for path, ok in index.seen if path.startswith("/files")), index.seen  # pip
    assert argvs and any("uv" in argv[0] for argv in argvs)
    assert any("pip" in argv for argv in argvs)
    assert not [argv for argv in argvs if any(SECRET in a or f"{USER}@" in a for a in argv)]
    assert SECRET not in repr(lock) and USER not in lock.requirements_txt()
    assert lock.index_url == index.url


def test_without_credentials_the_index_refuses(
    index: PrivateIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ResolveError):
        resolve_python(
            _spec(index.url), python_version="3.11", wheel_platform="x86_64-manylinux_2_36"
        )
    assert index.seen and not any(ok for _, ok in index.seen)
