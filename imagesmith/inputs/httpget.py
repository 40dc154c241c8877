"""HTTP GETs over kept-alive connections, each host name looked up once per process.

A lock's .debs are 50 to 300 files from one or two hosts. `urllib.request.urlopen`
opens a new connection for each, with its own DNS query (and TLS handshake for https).
On a network whose resolver loses the odd UDP query, glibc waits 5 s before asking
again, and a build paid that several times (measured here: 2 of 71 files took 5.0 s
each, the other 69 took 0.15 s together). apt itself keeps one connection per host.

Here each thread keeps one connection per origin (scheme, host, port, proxy), and each
host name is resolved once, then its addresses are reused. Proxies apply as urllib
applies them (`http_proxy`, `https_proxy`, `no_proxy`), except for loopback, which is
always reached directly: a proxy could not reach this machine's loopback.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import threading
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

from imagesmith.model.reference import is_loopback

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 5
#: A kept-alive connection the server has closed meanwhile fails on first use like this.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class HTTPStatusError(Exception):
    """The server answered with an error status (4xx/5xx)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"HTTP {code} {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    proxy: tuple[str, int] | None
    proxy_auth: str | None


_addresses: dict[tuple[str, int], list[tuple[int, int, int, object]]] = {}
_resolving = threading.Lock()


def _resolve(host: str, port: int) -> list[tuple[int, int, int, object]]:
    """`host`'s addresses, asked of DNS once per process (a failure is not remembered)."""
    key = (host, port)
    with _resolving:  # threads wait for the first answer rather than all asking
        found = _addresses.get(key)
        if found is None:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [(family, kind, proto, address) for family, kind, proto, _, address in infos]
            _addresses[key] = found
    return found


def _create_connection(
    address: tuple[str, int], timeout: float | None = None, source_address: object = None
) -> socket.socket:
    """`socket.create_connection` with the address looked up through `_resolve`."""
    host, port = address
    error: OSError | None = None
    for family, kind, proto, sockaddr in _resolve(host, port):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)  # type: ignore[arg-type]
            return sock
        except OSError as exc:
            error = exc
            sock.close()
    raise error or OSError(f"no address for {host}")


def _origin(url: str) -> tuple[_Origin, str]:
    """(where to connect for `url`, the request target to send there)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url}")
    host = parts.hostname
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    proxy_url = None if is_loopback(host) else urllib.request.getproxies().get(scheme)
    if proxy_url and urllib.request.proxy_bypass(parts.netloc.rpartition("@")[2]):
        proxy_url = None
    if not proxy_url:
        return _Origin(scheme, host, port, None, None), path
    if "://" not in proxy_url:
        proxy_url = "http://" + proxy_url
    proxy = urlsplit(proxy_url)
    auth = None
    if proxy.username is not None:
        pair = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    where = (proxy.hostname or "", proxy.port or 80)
    # Plain http goes to the proxy with the whole URL; https through a CONNECT tunnel.
    target = url.split("#", 1)[0] if scheme == "http" else path
    return _Origin(scheme, host, port, where, auth), target


class Fetcher:
    """GETs that reuse one connection per thread and origin; `close()` when done."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout
        self._local = threading.local()
        self._all: list[http.client.HTTPConnection] = []
        self._all_lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    def _connections(self) -> dict[_Origin, http.client.HTTPConnection]:
        found: dict[_Origin, http.client.HTTPConnection] | None = getattr(
            self._local, "connections", None
        )
        if found is None:
            found = self._local.connections = {}
        return found

    def _connect(self, origin: _Origin) -> http.client.HTTPConnection:
        host, port = origin.proxy or (origin.host, origin.port)
        conn: http.client.HTTPConnection
        if origin.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._tls)
            if origin.proxy is not None:
                tunnel = {"Proxy-Authorization": origin.proxy_auth} if origin.proxy_auth else None
                conn.set_tunnel(origin.host, origin.port, headers=tunnel)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self._timeout)
        conn._create_connection = _create_connection  # type: ignore[attr-defined]
        with self._all_lock:
            self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def get(
        self, url: str, headers: Mapping[str, str] | None = None
    ) -> Iterator[http.client.HTTPResponse]:
        """The response to GET `url` (redirects followed), to be read inside the block.

        Raises HTTPStatusError for a 4xx/5xx answer, OSError/HTTPException when the
        server cannot be reached or breaks off. A connection whose response was not read
        to the end is closed, never reused."""
        for _ in range(_MAX_REDIRECTS + 1):
            origin, target = _origin(url)
            response, conn = self._request(origin, target, url, headers or {})
            if response.status in _REDIRECTS and response.getheader("Location"):
                response.read()
                url = urljoin(url, response.getheader("Location", ""))
                continue
            if response.status >= 400:
                response.read()
                raise HTTPStatusError(response.status, response.reason)
            try:
                yield response
            finally:
                if not response.isclosed():
                    self._drop(origin, conn)
            return
        raise HTTPStatusError(310, f"more than {_MAX_REDIRECTS} redirects from {url}")

    def _request(
        self, origin: _Origin, target: str, url: str, headers: Mapping[str, str]
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        connections = self._connections()
        reused = origin in connections
        conn = connections.get(origin) or self._connect(origin)
        connections[origin] = conn
        send = dict(headers)
        if origin.proxy is not None and origin.scheme == "http" and origin.proxy_auth:
            send["Proxy-Authorization"] = origin.proxy_auth
        try:
            conn.request("GET", target, headers=send)
            return conn.getresponse(), conn
        except _STALE:
            self._drop(origin, conn)
            if not reused:
                raise
        except BaseException:
            self._drop(origin, conn)
            raise
        # The server closed the kept-alive connection meanwhile: once more, on a new one.
        conn = connections[origin] = self._connect(origin)
        try:
            conn.request("GET", target, headers=send)
            return conn.getresponse(), conn
        except BaseException:
            self._drop(origin, conn)
            raise

    def _drop(self, origin: _Origin, conn: http.client.HTTPConnection) -> None:
        conn.close()
        connections = self._connections()
        if connections.get(origin) is conn:
            del connections[origin]

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
