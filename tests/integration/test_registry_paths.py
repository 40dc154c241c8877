"""The registry paths real users take, against a real docker-registry on 127.0.0.1.

- token (Bearer) auth, as Docker Hub, GitLab and Harbor do it: the registry is
  configured with `auth: token` and trusts a token issuer the test runs;
- credentials from a Docker config's `credHelpers` / `credsStore`: the helper is a script
  on PATH;
- a proxy between imagesmith and the registry that answers 429, 503 and 403 at chosen
  moments, or changes the digest the registry confirms or the manifest it serves.

Everything goes through the `imagesmith` command (Typer's runner): its exit code, the one
`error:` line, no traceback, and which records it leaves. The image pushed is a small
synthetic canonical layout (no engine needed).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.errors import RegistryError
from imagesmith.model.records import push_record_path
from imagesmith.pipeline.push import served_reference
from imagesmith.registry.client import Credentials, RegistryClient
from tests.integration.conftest import Registry
from tests.integration.registry_kit import (
    Fault,
    FaultProxy,
    TokenRegistry,
    is_blob_upload,
    is_manifest_put,
    pushable_spec,
    running_token_registry,
)

pytestmark = [pytest.mark.integration, pytest.mark.registry]

runner = CliRunner()
ALICE = ("alice", "alice-" + uuid.uuid4().hex)  # may pull and push
READER = ("reader", "reader-" + uuid.uuid4().hex)  # may only pull


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    users = {ALICE[0]: (ALICE[1], {"pull", "push"}), READER[0]: (READER[1], {"pull"})}
    with running_token_registry(tmp_path_factory.mktemp("token-registry"), users) as found:
        yield found


@dataclass
class Place:
    """A test's own HOME, docker config folder, imagesmith cache and PATH addition."""

    root: Path
    cache: Path
    docker_config: Path
    bin: Path

    def spec(self, repository: str | None = None) -> tuple[Path, str]:
        name = f"lab-{uuid.uuid4().hex[:8]}"
        return pushable_spec(self.root / name, self.cache, repository=repository)

    def write_config(self, config: dict[str, object]) -> None:
        self.docker_config.mkdir(parents=True, exist_ok=True)
        (self.docker_config / "config.json").write_text(json.dumps(config))

    def helper(self, name: str, script: str) -> Path:
        """`docker-credential-NAME` on PATH, running `script` (sh)."""
        path = self.bin / f"docker-credential-{name}"
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
        return path


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Place:
    """No credential from this machine reaches the test: HOME, DOCKER_CONFIG and the
    podman auth file all point into tmp_path."""
    found = Place(
        tmp_path, tmp_path / "cache" / "imagesmith", tmp_path / "docker", tmp_path / "bin"
    )
    found.bin.mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("DOCKER_CONFIG", str(found.docker_config))
    monkeypatch.setenv("PATH", f"{found.bin}{os.pathsep}{os.environ['PATH']}")
    for name in ("REGISTRY_AUTH_FILE", "IMAGESMITH_REGISTRY_USER", "IMAGESMITH_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return found


def as_user(monkeypatch: pytest.MonkeyPatch, user: tuple[str, str]) -> None:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", user[0])
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", user[1])


def push_cli(spec: Path, to: str) -> Result:
    return runner.invoke(app, ["push", str(spec), "--to", to, "--no-inputs", "--no-attestations"])


def the_error(result: Result) -> str:
    """The one `error:` line of a failed command (progress lines may come before it)."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def manifest_digest(host: str, path: str, reference: str, user: tuple[str, str] | None) -> str:
    credentials = Credentials(*user) if user else None
    return RegistryClient(host, credentials).manifest(path, reference)[0]


# -- token (Bearer) auth ----------------------------------------------------------------------


def test_push_and_read_back_through_the_token_flow(
    token_registry: TokenRegistry, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, issuer = token_registry.host, token_registry.issuer
    spec, digest = place.spec()
    as_user(monkeypatch, ALICE)
    before = len(issuer.requests)
    result = push_cli(spec, f"{host}/lab/token")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == f"pushed {host}/lab/token@{digest}"
    assert json.loads(push_record_path(spec).read_text())["digest"] == digest
    # The tokens came from the issuer, for alice, granting push on that repository.
    asked = issuer.requests[before:]
    assert asked and all(r["user"] == "alice" for r in asked)
    assert {"type": "repository", "name": "lab/token", "actions": ["pull", "push"]} in (
        grant for r in asked for grant in r["granted"]
    )

    assert manifest_digest(host, "lab/token", "1.0.0", ALICE) == digest
    assert manifest_digest(host, "lab/token", "1.0.0", READER) == digest  # pull-only is enough
    assert served_reference(f"{host}/lab/token@{digest}").digest == digest  # pull's check
    # The registry really checks the token: anonymous readers get nothing.
    monkeypatch.delenv("IMAGESMITH_REGISTRY_USER")
    with pytest.raises(RegistryError, match=f"unauthorized: {host} needs credentials"):
        manifest_digest(host, "lab/token", "1.0.0", None)


def test_wrong_password_at_the_token_issuer_is_one_line_and_exit_1(
    token_registry: TokenRegistry, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = place.spec()
    as_user(monkeypatch, (ALICE[0], "not-the-password"))
    before = len(token_registry.issuer.requests)
    result = push_cli(spec, f"{token_registry.host}/lab/token-wrong")
    assert result.exit_code == 1, result.output
    assert the_error(result) == (
        f"error: unauthorized: check the credentials for {token_registry.host} (401)"
    )
    assert "retrying" not in result.stderr  # a refused password is not worth another try
    assert token_registry.issuer.requests[before:] == [{"user": "alice", "granted": False}]
    assert "not-the-password" not in result.output
    assert not push_record_path(spec).exists()


def test_a_pull_only_token_cannot_push_and_says_so(
    token_registry: TokenRegistry, place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _ = place.spec()
    as_user(monkeypatch, READER)
    result = push_cli(spec, f"{token_registry.host}/lab/read-only")
    assert result.exit_code == 1, result.output
    assert the_error(result).startswith(
        f"error: denied: {token_registry.host} does not let these credentials push to "
        "lab/read-only (401: "
    )
    assert not push_record_path(spec).exists()


def test_login_to_a_token_registry_then_push_with_the_stored_credentials(
    token_registry: TokenRegistry, place: Place
) -> None:
    host = token_registry.host
    wrong = runner.invoke(app, ["login", host, "-u", "alice", "--password-stdin"], input="nope\n")
    assert wrong.exit_code == 1, wrong.output
    assert the_error(wrong) == f"error: unauthorized: check the credentials for {host} (401)"
    assert not (place.docker_config / "config.json").exists()

    login = runner.invoke(
        app, ["login", host, "-u", "alice", "--password-stdin"], input=ALICE[1] + "\n"
    )
    assert login.exit_code == 0, login.output
    config = json.loads((place.docker_config / "config.json").read_text())
    assert set(config["auths"]) == {host}
    assert stat.S_IMODE((place.docker_config / "config.json").stat().st_mode) == 0o600

    spec, digest = place.spec()
    result = push_cli(spec, f"{host}/lab/logged-in")
    assert result.exit_code == 0, result.output
    assert manifest_digest(host, "lab/logged-in", "1.0.0", ALICE) == digest


# -- credential helpers from the docker config ---------------------------------------------


def test_credhelpers_gives_the_token_registry_its_credentials(
    token_registry: TokenRegistry, place: Place
) -> None:
    host = token_registry.host
    asked = place.root / "asked"
    place.helper(
        "labstore",
        f'cat > {asked}\n[ "$1" = get ] || exit 3\n'
        f'printf \'{{"ServerURL":"%s","Username":"alice","Secret":"{ALICE[1]}"}}\' "$(cat {asked})"\n',
    )
    place.write_config({"credHelpers": {host: "labstore"}, "auths": {host: {}}})
    spec, digest = place.spec()
    result = push_cli(spec, f"{host}/lab/helper")
    assert result.exit_code == 0, result.output
    assert asked.read_text() == host  # the helper was asked, for this registry
    assert manifest_digest(host, "lab/helper", "1.0.0", ALICE) == digest


def test_credsstore_gives_the_basic_auth_registry_its_credentials(
    registry: Registry, place: Place
) -> None:
    place.helper(
        "desk",
        f'read server\n[ "$server" = "{registry.host}" ] || '
        '{ echo "credentials not found in native keychain"; exit 1; }\n'
        f'echo \'{{"Username":"{registry.username}","Secret":"{registry.password}"}}\'\n',
    )
    place.write_config({"credsStore": "desk"})
    spec, digest = place.spec()
    result = push_cli(spec, f"{registry.host}/lab/store")
    assert result.exit_code == 0, result.output
    creds = (registry.username, registry.password)
    assert manifest_digest(registry.host, "lab/store", "1.0.0", creds) == digest


@pytest.mark.parametrize(
    ("script", "wanted"),
    [
        (
            "echo 'the keyring is locked' >&2; exit 4",
            "docker-credential-broken (credential helper for {host}) failed with exit code 4: "
            "the keyring is locked; fix it, or give IMAGESMITH_REGISTRY_USER / "
            "IMAGESMITH_REGISTRY_PASSWORD",
        ),
        (
            "echo 'Username: alice, Secret: planted-secret'",
            "docker-credential-broken (credential helper for {host}) printed something that is "
            'not credentials (JSON with "Username" and "Secret"); fix it, or give '
            "IMAGESMITH_REGISTRY_USER / IMAGESMITH_REGISTRY_PASSWORD",
        ),
        (
            None,  # named in the config, not installed
            "the docker config names docker-credential-broken for {host}, and it is not on "
            "PATH; install it, or give IMAGESMITH_REGISTRY_USER / IMAGESMITH_REGISTRY_PASSWORD",
        ),
    ],
    ids=["fails", "prints-garbage", "missing"],
)
def test_a_broken_credential_helper_is_one_line_and_exit_1(
    token_registry: TokenRegistry, place: Place, script: str | None, wanted: str
) -> None:
    host = token_registry.host
    if script is not None:
        place.helper("broken", script + "\n")
    place.write_config({"credHelpers": {host: "broken"}})
    spec, _ = place.spec()
    result = push_cli(spec, f"{host}/lab/broken-helper")
    assert result.exit_code == 1, result.output
    assert the_error(result) == "error: " + wanted.format(host=host)
    assert "planted-secret" not in result.output
    assert not push_record_path(spec).exists()


def test_a_helper_without_credentials_for_it_leaves_the_registry_asking(
    token_registry: TokenRegistry, place: Place
) -> None:
    place.helper("empty", 'echo "credentials not found in native keychain"; exit 1\n')
    place.write_config({"credsStore": "empty"})
    spec, _ = place.spec()
    result = push_cli(spec, f"{token_registry.host}/lab/anonymous")
    assert result.exit_code == 1, result.output
    assert the_error(result).startswith(
        f"error: unauthorized: {token_registry.host} needs credentials (imagesmith login,"
    )


# -- a proxy that answers 429, 503, 403, or changes what the registry said ------------------


def test_429_and_503_during_a_push_are_retried_and_the_push_succeeds(
    open_registry: str, place: Place
) -> None:
    too_many = Fault(is_blob_upload, 429, times=2, headers={"Retry-After": "1"})
    unavailable = Fault(is_manifest_put, 503)
    proxy = FaultProxy(open_registry, [too_many, unavailable])
    spec, digest = place.spec()
    try:
        result = push_cli(spec, f"{proxy.host}/lab/flaky-status")
    finally:
        proxy.close()
    assert result.exit_code == 0, result.output
    assert (too_many.hits, unavailable.hits) == (2, 1)
    retries = [line for line in result.stderr.splitlines() if "retrying" in line]
    # "answered N": the line also names what was sent, whose digest may hold "429".
    assert [("answered 429" in line, "answered 503" in line) for line in retries] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert "retrying in 1.0 s" in retries[0]  # Retry-After: 1 outweighs the first 0.5 s
    # The registry answered each retried request itself (201), and holds the image.
    assert [s for m, p, s in proxy.seen if is_manifest_put(m, p)][:2] == [503, 201]
    assert manifest_digest(open_registry, "lab/flaky-status", "1.0.0", None) == digest
    assert json.loads(push_record_path(spec).read_text())["digest"] == digest


def test_403_during_a_push_is_one_line_naming_the_repository_and_no_record(
    open_registry: str, place: Place
) -> None:
    denied = Fault(lambda method, path: method == "POST" and "/blobs/uploads/" in path, 403)
    proxy = FaultProxy(open_registry, [denied])
    spec, _ = place.spec()
    try:
        result = push_cli(spec, f"{proxy.host}/lab/forbidden")
    finally:
        proxy.close()
    assert result.exit_code == 1, result.output
    assert the_error(result) == (
        f"error: denied: {proxy.host} does not let these credentials push to lab/forbidden "
        "(403: DENIED: injected 403)"
    )
    assert denied.hits == 1 and "retrying" not in result.stderr
    assert not push_record_path(spec).exists()


def test_a_confirmed_manifest_digest_that_differs_is_refused(
    open_registry: str, place: Place
) -> None:
    other = "sha256:" + hashlib.sha256(b"another manifest").hexdigest()

    def lie(
        method: str, path: str, status: int, headers: dict[str, str], body: bytes
    ) -> tuple[dict[str, str], bytes]:
        if is_manifest_put(method, path):
            headers = {k: v for k, v in headers.items() if k.lower() != "docker-content-digest"}
            headers["Docker-Content-Digest"] = other
        return headers, body

    proxy = FaultProxy(open_registry, [], rewrite=lie)
    spec, digest = place.spec()
    try:
        result = push_cli(spec, f"{proxy.host}/lab/lying")
    finally:
        proxy.close()
    assert result.exit_code == 1, result.output
    assert the_error(result) == (
        f"error: {proxy.host} stored the manifest as {other}, expected {digest}"
    )
    assert not push_record_path(spec).exists()


def test_pull_refuses_a_registry_that_serves_another_manifest(
    open_registry: str, place: Place
) -> None:
    spec, digest = place.spec()
    assert push_cli(spec, f"{open_registry}/lab/swapped").exit_code == 0

    def swap(
        method: str, path: str, status: int, headers: dict[str, str], body: bytes
    ) -> tuple[dict[str, str], bytes]:
        if method == "GET" and "/manifests/" in path and status == 200:
            body = json.dumps({**json.loads(body), "annotations": {"swapped": "yes"}}).encode()
        return headers, body

    proxy = FaultProxy(open_registry, [], rewrite=swap)
    try:
        result = runner.invoke(app, ["pull", f"{proxy.host}/lab/swapped@{digest}"])
    finally:
        proxy.close()
    assert result.exit_code == 1, result.output
    line = the_error(result)
    assert line.startswith(f"error: {proxy.host}/lab/swapped served a manifest whose digest is ")
    assert line.endswith(f"when asked for {digest}; not pulling it")
    assert "engine:" not in result.stderr  # refused before any engine was chosen


# -- a big blob is streamed, never held whole in memory -----------------------------------------


def test_a_big_blob_is_streamed_to_the_registry_not_read_into_memory(
    open_registry: str, tmp_path: Path
) -> None:
    import tracemalloc

    from imagesmith.registry.client import Pusher

    size = 48 << 20
    blob = tmp_path / "blob"
    hasher = hashlib.sha256()
    with blob.open("wb") as f:
        for _ in range(size >> 20):
            piece = os.urandom(1 << 20)
            hasher.update(piece)
            f.write(piece)
    digest = "sha256:" + hasher.hexdigest()
    pusher = Pusher(RegistryClient(open_registry), f"lab/big-{uuid.uuid4().hex[:8]}", None)

    tracemalloc.start()
    try:
        pusher.push_blob(digest, blob)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"pushing a {size >> 20} MiB blob held {peak / 2**20:.1f} MiB"
    assert pusher.has_blob(digest)

    class Counting:
        received = 0

        def write(self, data: bytes) -> int:
            self.received += len(data)
            return len(data)

    sink = Counting()
    assert RegistryClient(open_registry).download_blob(pusher.path, digest, sink)  # type: ignore[arg-type]
    assert sink.received == size  # and download_blob checked its digest
