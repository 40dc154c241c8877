"""push and pull against a real registry process (docker-registry) on 127.0.0.1.

Covers: the registry digest equals the build digest on both engines, a pull into the
other engine runs, credentials from the environment, a wrong password, a registry that
is down, and one that drops the connection in the middle of an upload.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import RegistryError
from imagesmith.model.lock import read_lock
from imagesmith.model.records import push_record_path
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.push import pull, push
from imagesmith.registry.client import RegistryClient
from tests.integration.conftest import Registry

pytestmark = [pytest.mark.integration, pytest.mark.registry]


@pytest.fixture
def small_spec(engine: Engine, base_image: str, tmp_path: Path) -> Iterator[Spec]:
    """A quick spec (no packages) built on `engine`; its image and tags removed afterwards."""
    name = f"it-push-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "2.0"\n[base]\nimage = "{base_image}"\n'
        '[env]\nMARK = "pushed"\n[image]\ncmd = ["/bin/sh", "-c", "id -u; echo $MARK"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    result = build(spec, engine)
    yield spec
    for tag in result.tags:
        engine.remove_image(tag, force=True)
    engine.remove_image(result.image_id, force=True)


def _digest_in_registry(
    registry: str, path: str, reference: str, creds: Registry | None = None
) -> str:
    from imagesmith.registry.client import Credentials

    client = RegistryClient(
        registry, Credentials(creds.username, creds.password) if creds else None
    )
    digest, _, _ = client.manifest(path, reference)
    return digest


def test_push_gives_the_build_digest_and_pulls_into_the_other_engine(
    engine: Engine,
    small_spec: Spec,
    open_registry: str,
    docker_engine: Engine,
    podman_engine: Engine,
) -> None:
    lock = read_lock(small_spec.lock_path)
    built = (small_spec.path.with_suffix(".build.json")).read_text()
    record = push(small_spec, lock, to=f"{open_registry}/lab/{small_spec.name}")
    assert f'"digest": "{record.digest}"' in built  # registry digest == build digest
    assert _digest_in_registry(open_registry, f"lab/{small_spec.name}", "2.0") == record.digest
    assert push_record_path(small_spec.path).exists()

    other = podman_engine if engine.name == "docker" else docker_engine
    pinned = pull(other, record.pinned)
    try:
        run = other.run(pinned, [])
        assert run.exit_code == 0, run.output
        assert run.output.split() == ["10001", "pushed"]
    finally:
        other.remove_image(pinned, force=True)


def test_push_with_credentials_from_the_environment(
    engine: Engine, small_spec: Spec, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", registry.username)
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", registry.password)
    record = push(small_spec, read_lock(small_spec.lock_path), to=f"{registry.host}/lab/auth")
    assert _digest_in_registry(registry.host, "lab/auth", record.digest, registry) == record.digest


def test_wrong_password_fails_clearly_and_records_nothing(
    engine: Engine, small_spec: Spec, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", registry.username)
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", "not-the-password")
    with pytest.raises(RegistryError) as caught:
        push(small_spec, read_lock(small_spec.lock_path), to=f"{registry.host}/lab/auth")
    assert str(caught.value) == f"unauthorized: check the credentials for {registry.host}"
    assert caught.value.exit_code == 1
    assert "not-the-password" not in str(caught.value)
    assert not push_record_path(small_spec.path).exists()


def test_registry_down_fails_after_bounded_retries(
    engine: Engine, small_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("imagesmith.registry.client.RETRIES", 3)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    lines: list[str] = []
    with pytest.raises(RegistryError) as caught:
        push(
            small_spec,
            read_lock(small_spec.lock_path),
            to=f"127.0.0.1:{port}/lab/down",
            on_line=lines.append,
        )
    assert "failed after" in str(caught.value) and "cannot reach registry" in str(caught.value)
    assert sum("retrying" in line for line in lines) == 2
    assert not push_record_path(small_spec.path).exists()


class DroppingProxy:
    """A loopback TCP proxy that cuts the first `drops` blob uploads off halfway through."""

    def __init__(self, upstream_port: int, drops: int) -> None:
        self.upstream_port = upstream_port
        self.drops = drops
        self.dropped = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            if (
                head.startswith(b"PUT ")
                and b"/blobs/uploads/" in head
                and self.dropped < self.drops
            ):
                self.dropped += 1
                return  # mid-upload: the body is never read, the connection just closes
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(head)
                threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
                _pump(upstream, client)

    def close(self) -> None:
        self.server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_dropped_connection_mid_upload_is_retried(
    engine: Engine, small_spec: Spec, open_registry: str
) -> None:
    proxy = DroppingProxy(int(open_registry.rsplit(":", 1)[1]), drops=2)
    try:
        lines: list[str] = []
        record = push(
            small_spec,
            read_lock(small_spec.lock_path),
            to=f"127.0.0.1:{proxy.port}/lab/flaky",
            on_line=lines.append,
        )
    finally:
        proxy.close()
    assert proxy.dropped == 2
    assert sum("retrying" in line for line in lines) >= 2
    assert _digest_in_registry(open_registry, "lab/flaky", "2.0") == record.digest


def test_lock_resolves_a_base_from_the_registry_and_picks_the_platform_from_an_index(
    engine: Engine, small_spec: Spec, open_registry: str
) -> None:
    import json

    from imagesmith.locking.resolve import resolve_base
    from imagesmith.pipeline.canonical_build import layout_dir
    from imagesmith.registry.client import Pusher

    record = push(small_spec, read_lock(small_spec.lock_path), to=f"{open_registry}/lab/base")
    ref = f"{open_registry}/lab/base:2.0"
    assert not engine.image_exists(ref)  # only the registry knows it: the distribution API answers
    base = resolve_base(ref, engine, "linux/amd64")
    assert (base.digest, base.index_digest, base.local) == (record.digest, None, False)
    assert base.pinned == f"{open_registry}/lab/base@{record.digest}"

    # A multi-platform index: the lock records the index and the linux/amd64 entry.
    layout = layout_dir(record.digest)
    manifest_bytes = (layout / "blobs" / "sha256" / record.digest[7:]).read_bytes()
    oci_manifest = "application/vnd.oci.image.manifest.v1+json"
    pusher = Pusher(RegistryClient(open_registry), "lab/base", None)
    # Another manifest over the same blobs stands in for the arm64 image.
    other = json.dumps(
        {**json.loads(manifest_bytes), "annotations": {"stand-in": "arm64"}}
    ).encode()
    other_digest = pusher.push_manifest("arm64", other, oci_manifest)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": oci_manifest,
                    "digest": other_digest,
                    "size": len(other),
                    "platform": {"os": "linux", "architecture": "arm64"},
                },
                {
                    "mediaType": oci_manifest,
                    "digest": record.digest,
                    "size": len(manifest_bytes),
                    "platform": {"os": "linux", "architecture": "amd64"},
                },
            ],
        }
    ).encode()
    index_digest = pusher.push_manifest("multi", index, "application/vnd.oci.image.index.v1+json")
    multi = resolve_base(f"{open_registry}/lab/base:multi", engine, "linux/amd64")
    assert (multi.digest, multi.index_digest) == (record.digest, index_digest)
    arm = resolve_base(f"{open_registry}/lab/base:multi", engine, "linux/arm64")
    assert (arm.digest, arm.index_digest) == (other_digest, index_digest)
    with pytest.raises(RegistryError, match="has no image for linux/s390x"):
        resolve_base(f"{open_registry}/lab/base:multi", engine, "linux/s390x")
