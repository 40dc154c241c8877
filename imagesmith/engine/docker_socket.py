"""The Docker API calls an unchanged build makes (ping, inspect one image), over the local
unix socket with the standard library alone.

docker-py, with requests and urllib3, takes about 50 ms to import: a sixth of a no-op
`build`, which needs one inspect call. So `DockerEngine` asks these through this module
when the daemon is a local socket, and imports docker-py only for the first call that
needs more (a build, a run, a load...).
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote_plus


class _UnixConnection(http.client.HTTPConnection):
    """An HTTP/1.1 connection over a unix socket (the Host header is a placeholder)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class DockerSocket:
    """GET requests to the daemon listening on `path`; each call opens its own connection.

    Raises what the standard library raises: OSError when the socket refuses or breaks,
    http.client.HTTPException when an answer is cut short (both for `IncompleteRead`'s
    kin, which the engine words as a broken connection)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, target: str, *, timeout: float) -> tuple[int, bytes]:
        """(status, body) of `GET target`."""
        connection = _UnixConnection(self.path, timeout)
        try:
            connection.request("GET", target)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

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
