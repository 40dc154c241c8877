"""Real parts around a real docker-registry, for the registry-path tests.

- `TokenIssuer`: the token server of the distribution token-auth spec, on 127.0.0.1: it
  checks a user's password (HTTP basic) and signs an RS256 JWT granting the actions that
  user may have, with the certificate the registry trusts in its header (`x5c`).
- `FaultProxy`: an HTTP proxy between imagesmith and the registry that answers a chosen
  status (429, 503, 403) to chosen requests, or changes what the registry answered.
- `pushable_spec`: a spec with a lock, a build record and the canonical OCI layout that
  record names in imagesmith's cache, made without any engine, ready for `imagesmith push`.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from imagesmith.model.lock import write_lock
from imagesmith.model.records import BuildRecord, build_record_path, write_record
from imagesmith.pipeline.canonical_build import layout_dir
from tests.fixtures.make_lock import make_lock
from tests.integration.conftest import running_registry
from tests.unit.test_canonical import canon, docker_image

SERVICE = "imagesmith-test-registry"
ISSUER = "imagesmith-test-issuer"
EXAMPLE = (
    Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "example"
)  # needs no file beside it


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_signing_cert(folder: Path) -> tuple[Path, Path]:
    """(RSA key, self-signed certificate) in PEM, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl CLI: apt-get install openssl")
    key, cert = folder / "issuer.key", folder / "issuer.crt"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-subj", f"/CN={ISSUER}", "-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=True,
    )
    return key, cert


def rs256(key: Path, message: bytes) -> bytes:
    """An RS256 (PKCS#1 v1.5, SHA-256) signature: `cryptography` if installed, else openssl."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:
        return subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(key)],
            input=message,
            capture_output=True,
            check=True,
        ).stdout
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(message, padding.PKCS1v15(), hashes.SHA256())


class TokenIssuer:
    """The token server a registry with `auth: token` sends clients to.

    `users` maps a user to (password, the actions it may have on any repository).
    Anonymous requests get a token that grants nothing. Every request is recorded.
    """

    def __init__(self, key: Path, cert: Path, users: dict[str, tuple[str, set[str]]]) -> None:
        self.key = key
        der = base64.b64decode(
            "".join(line for line in cert.read_text().splitlines() if "-----" not in line)
        )
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.requests: list[dict[str, Any]] = []
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer._answer(self)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        query = parse_qs(urlsplit(handler.path).query)
        user = None
        header = handler.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name, ("", set()))[0] != password or name not in self.users:
                self.requests.append({"user": name, "granted": False})
                _json(handler, 401, {"errors": [{"code": "UNAUTHORIZED"}]})
                return
            user = name
        allowed = self.users[user][1] if user else set()
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else ("", "", "")
            granted = [a for a in actions.split(",") if a in allowed]
            if kind == "repository" and granted:
                access.append({"type": kind, "name": name, "actions": granted})
        self.requests.append({"user": user, "scope": query.get("scope"), "granted": access})
        _json(handler, 200, {"token": self.token(user or "", access), "expires_in": 300})

    def token(self, subject: str, access: list[dict[str, Any]]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        return f"{signing_input}.{_b64url(rs256(self.key, signing_input.encode()))}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@dataclass
class TokenRegistry:
    host: str
    issuer: TokenIssuer


@contextlib.contextmanager
def running_token_registry(
    root: Path, users: dict[str, tuple[str, set[str]]]
) -> Iterator[TokenRegistry]:
    """A docker-registry with `auth: token`, trusting a token issuer that runs here."""
    key, cert = make_signing_cert(root)
    issuer = TokenIssuer(key, cert, users)
    auth = (
        "auth:\n  token:\n"
        f"    realm: {issuer.realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n"
        f"    rootcertbundle: {cert}\n"
    )
    try:
        with running_registry(root, auth=None, auth_config=auth) as host:
            yield TokenRegistry(host, issuer)
    finally:
        issuer.close()


# -- a proxy that fails on purpose -----------------------------------------------------------


@dataclass
class Fault:
    """Answer `status` (instead of the registry) to the first `times` requests that `matches`."""

    matches: Callable[[str, str], bool]
    status: int
    times: int = 1
    headers: dict[str, str] = field(default_factory=dict)
    hits: int = 0


def is_blob_upload(method: str, path: str) -> bool:
    return method == "PUT" and "/blobs/uploads/" in path


def is_manifest_put(method: str, path: str) -> bool:
    return method == "PUT" and "/manifests/" in path


class FaultProxy:
    """Forwards every request to the registry at `upstream`, except those a `Fault` answers;
    `rewrite(method, path, status, headers, body)` may change what the registry answered.
    The Host header goes through unchanged, so the upload URLs the registry hands out point
    back at the proxy."""

    def __init__(
        self,
        upstream: str,
        faults: list[Fault],
        rewrite: Callable[[str, str, int, dict[str, str], bytes], tuple[dict[str, str], bytes]]
        | None = None,
    ) -> None:
        self.upstream = upstream
        self.faults = faults
        self.rewrite = rewrite
        self.seen: list[tuple[str, str, int]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        for fault in self.faults:
            if fault.hits < fault.times and fault.matches(method, path):
                fault.hits += 1
                self.seen.append((method, path, fault.status))
                data = json.dumps(
                    {
                        "errors": [
                            {
                                "code": "DENIED" if fault.status == 403 else "TOOMANYREQUESTS",
                                "message": f"injected {fault.status}",
                            }
                        ]
                    }
                ).encode()
                handler.send_response(fault.status)
                for key, value in fault.headers.items():
                    handler.send_header(key, value)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(data)))
                handler.end_headers()
                if method != "HEAD":
                    handler.wfile.write(data)
                return
        upstream = http.client.HTTPConnection(self.upstream, timeout=30)
        headers = {k: v for k, v in handler.headers.items() if k.lower() != "connection"}
        upstream.request(
            method, path, body=body if method in ("PUT", "POST", "PATCH") else None, headers=headers
        )
        response = upstream.getresponse()
        answer = response.read()
        answered = {
            k: v
            for k, v in response.getheaders()
            if k.lower() not in ("connection", "transfer-encoding", "content-length")
        }
        upstream.close()
        self.seen.append((method, path, response.status))
        if self.rewrite is not None:
            answered, answer = self.rewrite(method, path, response.status, answered, answer)
        handler.send_response(response.status)
        for key, value in answered.items():
            handler.send_header(key, value)
        length_header = response.getheader("Content-Length")
        handler.send_header(
            "Content-Length", str(len(answer)) if method != "HEAD" else (length_header or "0")
        )
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(answer)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- an image to push, made without an engine ----------------------------------------------------


def pushable_spec(folder: Path, cache: Path, *, repository: str | None = None) -> tuple[Path, str]:
    """(env.toml, the canonical image's digest): a locked spec whose build record names a
    small synthetic canonical image kept in `cache` (imagesmith's cache; set XDG_CACHE_HOME
    to its parent). Unique content each call, so no registry already holds its blobs."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "env.toml"
    text = (EXAMPLE / "env.toml").read_text()
    if repository is None:
        text = text.replace('[registry]\nrepository = "registry.example.edu/lab/analysis"\n', "")
    else:
        text = text.replace("registry.example.edu/lab/analysis", repository)
    spec.write_text(text)
    lock = make_lock(spec)
    write_lock(lock, spec.with_suffix(".lock"))
    script = f"#!/bin/sh\necho {uuid.uuid4().hex}\n".encode()
    image = canon(docker_image(folder / "image.tar", script=script), folder, "layout")
    assert layout_dir(image.manifest_digest).is_relative_to(cache)
    shutil.copytree(image.layout, layout_dir(image.manifest_digest))
    write_record(
        build_record_path(spec),
        BuildRecord(
            image_id=image.config_digest,
            digest=image.manifest_digest,
            tags=(),
            engine="docker",
            lock_hash=lock.lock_hash,
            uid=10001,
            gid=10001,
        ),
    )
    return spec, image.manifest_digest
