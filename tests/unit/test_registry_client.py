"""The registry client's decisions that need no registry: where credentials come from
(credential helpers are real scripts here), when to wait and retry, where credentials
must not go, and how a blob is sent."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from imagesmith.errors import RegistryError
from imagesmith.registry.client import (
    CredentialHelperError,
    Credentials,
    FileBody,
    RegistryClient,
    TransientError,
    _retry_after,
    find_credentials,
    with_retries,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME and docker config folder, and a bin folder first on PATH."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for name in ("REGISTRY_AUTH_FILE", "IMAGESMITH_REGISTRY_USER", "IMAGESMITH_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "bin").mkdir()
    (tmp_path / "docker").mkdir()
    return tmp_path


def config(home: Path, data: object) -> None:
    (home / "docker" / "config.json").write_text(json.dumps(data))


def helper(home: Path, name: str, script: str) -> None:
    path = home / "bin" / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_helper_named_for_the_registry_wins_over_credsstore(home: Path) -> None:
    helper(home, "one", 'read s; echo "{\\"Username\\":\\"u1\\",\\"Secret\\":\\"$s\\"}"')
    helper(home, "all", 'echo \'{"Username":"u2","Secret":"p2"}\'')
    config(home, {"credHelpers": {"reg.example.edu": "one"}, "credsStore": "all"})
    assert find_credentials("reg.example.edu") == Credentials("u1", "reg.example.edu")
    assert find_credentials("other.example.edu") == Credentials("u2", "p2")


def test_docker_hub_is_asked_for_under_the_name_docker_login_stores_it(home: Path) -> None:
    helper(home, "all", 'read s; echo "{\\"Username\\":\\"u\\",\\"Secret\\":\\"$s\\"}"')
    config(home, {"credsStore": "all"})
    assert find_credentials("docker.io") == Credentials("u", "https://index.docker.io/v1/")


def test_credentials_not_found_falls_through_to_auths(home: Path) -> None:
    helper(home, "empty", 'echo "credentials not found in native keychain"; exit 1')
    config(home, {"credsStore": "empty", "auths": {"reg.example.edu": {"auth": "dTpwdw=="}}})
    assert find_credentials("reg.example.edu") == Credentials("u", "pw")
    assert find_credentials("other.example.edu") is None


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"credHelpers": ["x"], "auths": "y"},
        {"auths": {"reg.example.edu": {"auth": 5}}},
        {"auths": {"reg.example.edu": {"auth": "%%%"}}},
        {"auths": {"reg.example.edu": {"auth": "bm8tY29sb24="}}},  # "no-colon"
    ],
)
def test_a_docker_config_of_the_wrong_shape_gives_no_credentials(home: Path, data: object) -> None:
    config(home, data)
    assert find_credentials("reg.example.edu") is None


def test_helper_problems_wait_until_the_registry_asks(home: Path) -> None:
    config(home, {"credsStore": "gone"})
    with pytest.raises(CredentialHelperError, match="docker-credential-gone .* not on PATH"):
        find_credentials("reg.example.edu")
    client = RegistryClient("reg.example.edu")  # an anonymous pull would not need it
    assert client.credentials is None
    with pytest.raises(CredentialHelperError, match="not on PATH"):
        client._authenticate('Bearer realm="https://auth.example.edu/token"', "repository:a:pull")
    assert "docker-credential-gone" in str(client.unauthorized())


def test_no_credentials_to_a_plain_http_token_realm_off_loopback() -> None:
    client = RegistryClient("reg.example.edu", Credentials("u", "secret"))
    with pytest.raises(RegistryError) as caught:
        client._authenticate(
            'Bearer realm="http://auth.example.edu/token",service="reg"', "repository:a:pull"
        )
    assert str(caught.value) == (
        "reg.example.edu sends its token requests to http://auth.example.edu/token, which is "
        "not HTTPS; no credentials are sent there"
    )


def test_retry_after_is_read_and_capped() -> None:
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({"retry-after": "3600"}) == 60.0
    assert _retry_after({"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}) is None
    assert _retry_after({}) is None


def test_retries_wait_what_the_registry_asks_then_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []
    monkeypatch.setattr("imagesmith.registry.client.time.sleep", waits.append)
    answers = iter([TransientError("429", retry_after=4.0), TransientError("503"), "done"])

    def action() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    lines: list[str] = []
    assert with_retries(action, what="uploading x", on_line=lines.append) == "done"
    assert waits == [4.0, 1.0]
    assert lines[0] == "push: uploading x: 429; retrying in 4.0 s (1/5)"


def test_a_file_body_is_sent_in_pieces_from_its_start_each_time(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = os.urandom((1 << 20) * 2 + 5)
    path.write_bytes(data)
    body = FileBody(path)
    assert body.size == len(data)
    first = list(body)
    assert [len(piece) for piece in first] == [1 << 20, 1 << 20, 5]
    assert b"".join(list(body)) == b"".join(first) == data  # a resent request sends it all
