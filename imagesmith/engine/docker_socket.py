"""The Docker API calls an unchanged build makes (ping, inspect one image), over the local
unix socket with the standard library alone.

docker-py, with requests and urllib3, takes about 50 ms to import: a sixth of a no-op
`build`, which needs one inspect call. So `DockerEngine` asks these through this module
when the daemon is a local socket, and imports docker-py only for the first call that
needs more (a build, a run, a load...).
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import quote_plus


class BrokenAnswer(Exception):
    """The daemon's answer ended early or could not be read as HTTP."""


class DockerSocket:
    """GET requests to the daemon listening on `path`; each call opens its own connection.

    Each request is HTTP/1.0, so the daemon answers with the whole body and closes the
    connection: no keep-alive, and no chunks to join (read anyway when sent). That takes
    a few lines here instead of `http.client`, whose import (with `email` and `ssl`) cost
    more than the inspect call itself. Raises OSError when the socket refuses or breaks,
    BrokenAnswer when an answer is cut short or garbled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, target: str, *, timeout: float) -> tuple[int, bytes]:
        """(status, body) of `GET target`."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(self.path)
            sock.sendall(f"GET {target} HTTP/1.0\r\nHost: docker\r\n\r\n".encode("ascii"))
            received = bytearray()
            while not _whole(received) and (chunk := sock.recv(1 << 16)):
                received += chunk
        return parse_answer(bytes(received))

    def ping(self, *, timeout: float) -> bool:
        """Whether the daemon answers its ping (OSError when nothing listens)."""
        status, _ = self.get("/_ping", timeout=timeout)
        return status == 200

    def inspect_image(self, ref: str, *, timeout: float) -> tuple[int, Any]:
        """(status, decoded JSON) of `GET /images/REF/json`: 200 and the image's
        description, 404 and the daemon's message, or another status and its message."""
        # The quoting docker-py uses for the same call.
        status, body = self.get(f"/images/{quote_plus(ref, safe='/:')}/json", timeout=timeout)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, {"message": body.decode("utf-8", "replace").strip()}


def error_message(answer: Any) -> str:
    """The daemon's error text from a decoded error answer."""
    if isinstance(answer, dict) and answer.get("message"):
        return str(answer["message"])
    return str(answer)


def parse_answer(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of an HTTP answer from all that was read of it (`DockerSocket.get`)."""
    head, ended, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = lines[0].split(None, 2)
    if (
        not ended
        or len(status) < 2
        or not status[0].startswith(b"HTTP/")
        or not status[1].isdigit()
    ):
        raise BrokenAnswer(f"the answer ended after {len(raw)} bytes, before its headers")
    headers = _headers(lines[1:])
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return int(status[1]), _joined_chunks(body)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            raise BrokenAnswer(f"the answer's Content-Length is {length!r}")
        if len(body) < int(length):
            raise BrokenAnswer(f"the answer ended after {len(body)} of {int(length)} bytes")
        body = body[: int(length)]
    return int(status[1]), body


def _whole(raw: bytearray) -> bool:
    """Whether `raw` is an answer whose Content-Length has arrived, or whose last chunk
    has: then it is read to the end even if the server keeps the connection open (as one
    that ignores HTTP/1.0 may). Otherwise the answer ends when the server closes it."""
    head, ended, body = bytes(raw).partition(b"\r\n\r\n")
    if not ended:
        return False
    headers = _headers(head.split(b"\r\n")[1:])
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return body == b"0\r\n\r\n" or body.endswith(b"\r\n0\r\n\r\n")
    length = headers.get(b"content-length", b"")
    return length.isdigit() and len(body) >= int(length)


def _headers(lines: list[bytes]) -> dict[bytes, bytes]:
    """Header lines as {lower-case name: value}."""
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _joined_chunks(body: bytes) -> bytes:
    """The data of a chunked body (RFC 9112 section 7.1), trailers dropped."""
    data: list[bytes] = []
    at = 0
    while True:
        line_end = body.find(b"\r\n", at)
        size_text = body[at:line_end].split(b";", 1)[0].strip() if line_end >= 0 else b""
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BrokenAnswer("the answer ended inside its chunks") from None
        if size == 0:
            return b"".join(data)
        start = line_end + 2
        if len(body) < start + size + 2:
            raise BrokenAnswer("the answer ended inside its chunks")
        data.append(body[start : start + size])
        at = start + size + 2
