"""Real engines for the integration tests: Docker, podman, a local registry, a base image.

Nothing here is mocked. An engine that is not available skips its tests with the reason
(start Docker with scripts/start-dockerd.sh; install everything with scripts/install-host.sh).

The Debian base image (`imagesmith/debian:bookworm`, or $IMAGESMITH_TEST_BASE) is built once
per engine when missing, from one mmdebstrap rootfs per session (~15-50 s, network bound),
and kept afterwards: later runs reuse it. Everything else a test creates goes through `images`, which
removes it at teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.engine.podman import PodmanEngine
from imagesmith.errors import EngineError
from imagesmith.pipeline.debian_base import build_base, default_tag, make_rootfs

SUITE = "bookworm"
#: Repository prefix of every throwaway image the tests make.
TEST_REPOSITORY = "imagesmith-it"


def _untagged_image_ids(cli: str) -> list[str]:
    """Untagged images (intermediate build steps included), newest first."""
    run = subprocess.run(
        [cli, "images", "--all", "--no-trunc", "--format", "{{.ID}} {{.Repository}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [line.split()[0] for line in run.stdout.splitlines() if line.endswith(("<none>", " "))]


@contextlib.contextmanager
def _removing_untagged_leftovers(cli: str) -> Iterator[None]:
    """At the end of the session, remove the untagged images the session made: the
    engine's own pre-canonical builds and their intermediate steps. Images that were
    there before, and tagged ones (the bases kept for later runs), stay."""
    before = set(_untagged_image_ids(cli))
    yield
    # One `rmi` for all of them (one process per image took 1.5 min at the end of a run),
    # newest first: children before parents. Then one at a time whatever that left.
    made = [i for i in _untagged_image_ids(cli) if i not in before]
    if made:
        subprocess.run([cli, "rmi", *made], capture_output=True, check=False)
    for image_id in _untagged_image_ids(cli):
        if image_id not in before:
            subprocess.run([cli, "rmi", image_id], capture_output=True, check=False)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    from imagesmith.engine.docker import DockerEngine

    try:
        engine = DockerEngine()
    except EngineError as exc:
        pytest.skip(f"docker: {exc}")
    with _removing_untagged_leftovers("docker"):
        yield engine


@pytest.fixture(scope="session")
def podman_engine() -> Iterator[Engine]:
    from imagesmith.engine.podman import PodmanEngine

    try:
        engine = PodmanEngine()
        engine.info()
    except EngineError as exc:
        pytest.skip(f"podman: {exc}")
    with _removing_untagged_leftovers("podman"):
        yield engine


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("podman", marks=pytest.mark.podman),
    ],
)
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each test that takes `engine` runs once on Docker and once on podman."""
    found: Engine = request.getfixturevalue(f"{request.param}_engine")
    return found


@pytest.fixture(scope="session")
def docker_or_podman() -> Engine:
    """One engine, for tests that need to run once: Docker if a daemon answers, else podman."""
    from imagesmith.engine import get_engine

    try:
        return get_engine("auto")
    except EngineError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def session_rootfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A bookworm rootfs tarball made once per session (mmdebstrap): its path and sha256."""
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed: apt-get install mmdebstrap")
    dest = tmp_path_factory.mktemp("rootfs") / "rootfs.tar"
    return dest, make_rootfs(dest, suite=SUITE)


def ensure_test_base(engine: Engine, request: pytest.FixtureRequest) -> str:
    """The Debian base on `engine`, built when missing or made by an imagesmith whose base
    labels differ (the tests compare digests across engines: both bases must be alike)."""
    from imagesmith.model.labels import BASE_SUITE

    ref = os.environ.get("IMAGESMITH_TEST_BASE") or default_tag(SUITE)
    if engine.image_exists(ref) and BASE_SUITE not in engine.inspect_image(ref).labels:
        engine.remove_image(ref, force=True)
    if not engine.image_exists(ref):
        rootfs, _ = request.getfixturevalue("session_rootfs")
        build_base(engine, rootfs, suite=SUITE, tag=ref)
    return ref


@pytest.fixture(scope="session")
def base_image(engine: Engine, request: pytest.FixtureRequest) -> str:
    """The Debian base image on `engine`, built once (kept for later runs); its reference."""
    return ensure_test_base(engine, request)


@pytest.fixture(scope="session")
def marked_podman_image(
    podman_engine: Engine, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(podman image by digest, a marker only it holds): uid 1000 in /work, for kube play and
    Slurm. `localhost/NAME@sha256:<.Digest>` is how podman names a local-only image by digest."""
    base = ensure_test_base(podman_engine, request)
    folder = tmp_path_factory.mktemp("marked-image")
    marker = f"imagesmith-marker-{uuid.uuid4().hex}"
    (folder / "Containerfile").write_text(
        f"FROM {base}\n"
        "RUN useradd --no-log-init --uid 1000 --create-home lab"
        " && mkdir /work && chown 1000:1000 /work"
        f" && echo {marker} > /etc/imagesmith-marker\n"
        "USER 1000:1000\nWORKDIR /work\n"
    )
    tag = f"localhost/{TEST_REPOSITORY}/marked:{uuid.uuid4().hex[:12]}"
    podman_engine.build(context=folder, tags=[tag])
    try:
        digest = subprocess.run(
            ["podman", "image", "inspect", "--format", "{{.Digest}}", tag],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert digest.startswith("sha256:"), digest
        yield f"{tag.rsplit(':', 1)[0]}@{digest}", marker
    finally:
        podman_engine.remove_image(tag, force=True)


class ImageTracker:
    """Hands out unique tags and removes every image or tag recorded here at teardown."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.refs: list[str] = []

    def tag(self, name: str = "img") -> str:
        ref = f"{TEST_REPOSITORY}/{name}:{uuid.uuid4().hex[:12]}"
        self.refs.append(ref)
        return ref

    def add(self, ref: str) -> str:
        self.refs.append(ref)
        return ref

    def derive(self, name: str, containerfile: str, workdir: Path) -> str:
        """An image the engine builds from `containerfile` (its context: `workdir`/`name`,
        holding nothing else), tagged here for removal at teardown; its tag."""
        context = workdir / name
        context.mkdir()
        (context / "Containerfile").write_text(containerfile)
        ref = self.tag(name)
        self.engine.build(context=context, tags=[ref])
        return ref

    def cleanup(self) -> None:
        for ref in reversed(self.refs):
            try:
                self.engine.remove_image(ref, force=True)
            except EngineError as exc:  # pragma: no cover - reported, never fatal
                print(f"cleanup: could not remove {ref}: {exc}")


@pytest.fixture
def images(engine: Engine) -> Iterator[ImageTracker]:
    tracker = ImageTracker(engine)
    yield tracker
    tracker.cleanup()


@contextlib.contextmanager
def second_podman(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PodmanEngine]:
    """Another builder: podman with a storage of its own and an empty imagesmith cache.

    Its storage setting is undone on leaving, so that the clean-ups after it (the
    `images` fixture's, a test's own) reach this machine's store again.
    """
    storage = tmp_path / "second-machine"
    conf = tmp_path / "storage.conf"
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{storage / "root"}"\n'
        f'runroot = "{storage / "run"}"\n'
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(storage / "cache"))
    with pytest.MonkeyPatch.context() as storage_env:
        storage_env.setenv("CONTAINERS_STORAGE_CONF", str(conf))
        try:
            yield PodmanEngine()
        finally:
            # Named explicitly, so that this clean-up can only ever touch the second store.
            second_store = ["--root", str(storage / "root"), "--runroot", str(storage / "run")]
            subprocess.run(["podman", *second_store, "rmi", "-a", "-f"], capture_output=True)
            subprocess.run(["umount", "-R", str(storage / "root" / "overlay")], capture_output=True)
            shutil.rmtree(storage, ignore_errors=True)


# -- a local registry (docker-registry, distribution 2.8) with htpasswd auth ------------


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    username: str
    password: str
    root: Path | None = None
    """The folder the registry process keeps its config and storage in."""

    @property
    def auth(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_registry(root: Path, *, auth: Registry | None, auth_config: str = "") -> Iterator[str]:
    """A docker-registry process on a free loopback port, with htpasswd auth when `auth`,
    or the `auth:` section `auth_config` (token auth, say)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("needs docker-registry: apt-get install docker-registry")
    port = _free_port()
    if auth is not None:
        htpasswd = shutil.which("htpasswd")
        if htpasswd is None:
            pytest.skip("needs htpasswd: apt-get install apache2-utils")
        users = subprocess.run(
            [htpasswd, "-Bbn", auth.username, auth.password],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        (root / "htpasswd").write_text(users)
        auth_config = (
            f"auth:\n  htpasswd:\n    realm: imagesmith-test\n    path: {root / 'htpasswd'}\n"
        )
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth_config
    )
    log = (root / "registry.log").open("w")
    proc = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"docker-registry did not start: {(root / 'registry.log').read_text()}"
                    )
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry on 127.0.0.1 that wants a user name and password (htpasswd)."""
    wanted = Registry("", "imagesmith", uuid.uuid4().hex)
    root = tmp_path_factory.mktemp("registry")
    with running_registry(root, auth=wanted) as host:
        yield Registry(host, wanted.username, wanted.password, root)


@pytest.fixture(scope="session")
def open_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A registry on 127.0.0.1 without authentication; its host:port."""
    with running_registry(tmp_path_factory.mktemp("open-registry"), auth=None) as host:
        yield host


ContextMaker = Callable[..., Path]


@pytest.fixture
def make_context(tmp_path: Path) -> ContextMaker:
    """`make_context(containerfile_text, name=text, ...)`: a fresh build context directory."""
    counter = iter(range(1_000_000))

    def make(containerfile: str, **files: str) -> Path:
        directory = tmp_path / f"context{next(counter)}"
        directory.mkdir()
        (directory / "Containerfile").write_text(containerfile)
        for name, text in files.items():
            (directory / name).write_text(text)
        return directory

    return make
