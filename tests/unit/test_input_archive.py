"""The input archive as a place a build looks in, without a registry that answers."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from imagesmith.inputs.archive import Archive
from imagesmith.model.reference import parse_reference


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there once the socket is closed


def test_a_registry_that_cannot_be_reached_is_tried_once_per_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build asks the archive for every .deb (tens, from 8 threads): a registry that is
    down must cost one attempt, not one per file, and say why in each 'looked in' line."""
    import imagesmith.registry.client

    attempts: list[str] = []
    real = imagesmith.registry.client.RegistryClient.request

    def counted(
        self: imagesmith.registry.client.RegistryClient, method: str, path: str, **kw: object
    ):  # type: ignore[no-untyped-def]
        attempts.append(path)
        return real(self, method, path, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(imagesmith.registry.client.RegistryClient, "request", counted)
    archive = Archive(parse_reference(f"127.0.0.1:{_closed_port()}/lab/x"), "lock-0.inputs")
    started = time.monotonic()
    reasons = [archive.fetch(f"sha256:{i:064x}", tmp_path / f"{i}.deb") for i in range(40)]
    assert time.monotonic() - started < 5
    assert len(attempts) == 1
    assert len(set(reasons)) == 1 and "cannot reach registry" in str(reasons[0])
    assert str(reasons[0]).startswith(archive.where)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
