"""SLSA v1 provenance from a lock, checked against the in-toto attestation protos; DSSE
signing with real ed25519 keys (securesystemslib): right key, wrong key, tampered payload."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement
from typer.testing import CliRunner

from imagesmith.attest.inventory import inventory
from imagesmith.attest.provenance import (
    BUILD_TYPE,
    PREDICATE_TYPE,
    BuildRun,
    dump_statement,
    provenance_statement,
)
from imagesmith.attest.signing import (
    VerificationFailed,
    load_public_key,
    load_signer,
    sign_statement,
    verify_envelope,
)
from imagesmith.cli import app
from imagesmith.errors import InputError
from imagesmith.model.lock import Lock, write_lock
from imagesmith.model.records import BuildRecord, build_record_path, write_record
from tests.fixtures.make_lock import make_lock

runner = CliRunner()
DIGEST = "sha256:" + "b" * 64
RUN = BuildRun(
    repository="registry.example.edu/lab/analysis",
    digest=DIGEST,
    engine="docker",
    builder_id="urn:imagesmith:builder:ci-1",
    started="2026-12-01T10:00:00Z",
    finished="2026-12-01T10:01:30Z",
)


@pytest.fixture
def lock(example_dir: Path) -> Lock:
    return make_lock(example_dir / "env.toml")


def _keypair(folder: Path, name: str, algorithm: str = "ed25519") -> tuple[Path, Path]:
    """PEM files as `openssl genpkey` / `openssl pkey -pubout` write them (PKCS#8, SPKI);
    the integration test signs with keys openssl made."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (
        ed25519.Ed25519PrivateKey.generate()
        if algorithm == "ed25519"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


def _check_slsa(statement: dict[str, Any]) -> provenance_pb2.Provenance:  # type: ignore[name-defined]
    """Parse strictly (an unknown or mistyped field fails) and apply the spec's own checks."""
    parsed = json_format.Parse(json.dumps(statement), statement_pb2.Statement())  # type: ignore[attr-defined]
    Statement.copy_from_pb(parsed).validate()
    predicate = json_format.Parse(json.dumps(statement["predicate"]), provenance_pb2.Provenance())  # type: ignore[attr-defined]
    definition = predicate.build_definition
    assert definition.build_type and definition.external_parameters
    assert predicate.run_details.builder.id
    for dependency in definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dependency).validate()
    return predicate


def test_statement_is_slsa_v1_provenance(lock: Lock) -> None:
    statement = provenance_statement(lock, inventory(lock), RUN)
    predicate = _check_slsa(statement)
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["subject"] == [
        {"name": "registry.example.edu/lab/analysis", "digest": {"sha256": "b" * 64}}
    ]
    assert predicate.build_definition.build_type == BUILD_TYPE
    params = statement["predicate"]["buildDefinition"]["externalParameters"]
    assert params["specHash"] == lock.spec_hash and params["lockHash"] == lock.lock_hash
    assert predicate.run_details.metadata.started_on.seconds < (
        predicate.run_details.metadata.finished_on.seconds
    )
    assert statement["predicate"]["runDetails"]["builder"]["version"]["engine"] == "docker"


def test_the_validator_refuses_a_broken_statement(lock: Lock) -> None:
    statement = provenance_statement(lock, inventory(lock), RUN)
    statement["predicate"]["runDetails"]["metadata"]["startedOn"] = "yesterday"
    with pytest.raises(json_format.ParseError):
        _check_slsa(statement)
    statement = provenance_statement(lock, inventory(lock), RUN)
    statement["subject"][0]["digest"] = {}
    with pytest.raises(ValueError, match="digest"):
        _check_slsa(statement)


def test_every_deb_and_wheel_and_the_base_are_resolved_dependencies(lock: Lock) -> None:
    assert lock.python is not None
    deps = provenance_statement(lock, inventory(lock), RUN)["predicate"]["buildDefinition"][
        "resolvedDependencies"
    ]
    digests = {d["digest"]["sha256"] for d in deps}
    assert deps[0]["uri"].startswith("pkg:oci/debian@" + lock.base.digest)
    assert lock.base.digest.removeprefix("sha256:") in digests
    for deb in lock.apt.packages:
        assert deb.sha256 is not None and deb.sha256.removeprefix("sha256:") in digests
    for dist in lock.python.packages:
        for h in dist.hashes:
            assert h.removeprefix("sha256:") in digests
    hashes = sum(len(d.hashes) for d in lock.python.packages)
    assert len(deps) == 1 + len(lock.apt.packages) + hashes


def test_two_builders_agree_on_the_build_definition(lock: Lock) -> None:
    other = BuildRun(
        repository=RUN.repository,
        digest=DIGEST,
        engine="podman",
        builder_id="urn:imagesmith:builder:laptop",
    )
    a = provenance_statement(lock, inventory(lock), RUN)
    b = provenance_statement(lock, inventory(lock), other)
    assert a["subject"] == b["subject"]
    assert a["predicate"]["buildDefinition"] == b["predicate"]["buildDefinition"]
    assert a["predicate"]["runDetails"] != b["predicate"]["runDetails"]
    _check_slsa(b)  # no times known: still valid


# -- DSSE signing ------------------------------------------------------------------------


def test_signed_statement_verifies_with_the_right_key_only(lock: Lock, tmp_path: Path) -> None:
    private, public = _keypair(tmp_path, "lab")
    _, other_public = _keypair(tmp_path, "other")
    text = dump_statement(provenance_statement(lock, inventory(lock), RUN))
    envelope = sign_statement(text, load_signer(str(private)))
    assert json.loads(envelope)["payloadType"] == "application/vnd.in-toto+json"
    assert verify_envelope(envelope, load_public_key(str(public))) == json.loads(text)
    # the private key file also serves as the public key
    assert verify_envelope(envelope, load_public_key(str(private))) == json.loads(text)
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify_envelope(envelope, load_public_key(str(other_public)))


def test_a_tampered_statement_fails(lock: Lock, tmp_path: Path) -> None:
    private, public = _keypair(tmp_path, "lab")
    text = dump_statement(provenance_statement(lock, inventory(lock), RUN))
    data = json.loads(sign_statement(text, load_signer(str(private))))
    statement = json.loads(base64.b64decode(data["payload"]))
    statement["subject"][0]["digest"]["sha256"] = "c" * 64
    data["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(VerificationFailed, match="does not verify"):
        verify_envelope(json.dumps(data), load_public_key(str(public)))


def test_keys_that_are_not_ed25519_keys_are_input_errors(tmp_path: Path) -> None:
    rsa, rsa_public = _keypair(tmp_path, "rsa", "rsa")
    not_a_key = tmp_path / "env.toml"
    not_a_key.write_text('name = "x"\n')
    with pytest.raises(InputError, match="not an unencrypted PEM private key"):
        load_signer(str(not_a_key))
    with pytest.raises(InputError, match=r"not an ed25519 key \(RSAPrivateKey\)"):
        load_signer(str(rsa))
    with pytest.raises(InputError, match="not a PEM public key"):
        load_public_key(str(not_a_key))
    with pytest.raises(InputError, match="not an ed25519 key"):
        load_public_key(str(rsa_public))
    with pytest.raises(InputError, match="cannot read the key"):
        load_signer(str(tmp_path / "missing.key"))


def test_not_an_envelope_is_an_input_error(tmp_path: Path) -> None:
    _, public = _keypair(tmp_path, "lab")
    with pytest.raises(InputError, match="not a DSSE envelope"):
        verify_envelope('{"payload": "%%"}', load_public_key(str(public)))


# -- the commands ------------------------------------------------------------------------


def _built(lock: Lock, example_dir: Path) -> str:
    write_lock(lock, example_dir / "env.lock")
    write_record(
        build_record_path(example_dir / "env.toml"),
        BuildRecord(
            image_id="sha256:" + "a" * 64,
            digest=DIGEST,
            tags=("lab-analysis:1.0.0",),
            engine="podman",
            lock_hash=lock.lock_hash,
            uid=1000,
            gid=1000,
            started=RUN.started,
            finished=RUN.finished,
        ),
    )
    return str(example_dir / "env.toml")


def test_cli_provenance_sign_and_verify(lock: Lock, example_dir: Path, tmp_path: Path) -> None:
    spec = _built(lock, example_dir)
    private, public = _keypair(tmp_path, "lab")
    _, other = _keypair(tmp_path, "other")
    plain = runner.invoke(app, ["provenance", spec, "--builder-id", "urn:x:ci"])
    assert plain.exit_code == 0, plain.output
    statement = json.loads(plain.stdout)
    _check_slsa(statement)
    assert statement["predicate"]["runDetails"]["builder"]["id"] == "urn:x:ci"
    assert statement["predicate"]["runDetails"]["metadata"]["finishedOn"] == RUN.finished
    out = tmp_path / "prov.dsse.json"
    signed = runner.invoke(app, ["provenance", spec, "--sign-key", str(private), "-o", str(out)])
    assert signed.exit_code == 0, signed.output
    ok = runner.invoke(
        app, ["verify-provenance", str(out), "--key", str(public), "--digest", DIGEST]
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith(f"verified: registry.example.edu/lab/analysis@{DIGEST}")
    wrong = runner.invoke(app, ["verify-provenance", str(out), "--key", str(other)])
    assert wrong.exit_code == 1 and "does not verify" in wrong.stderr
    other_digest = runner.invoke(
        app, ["verify-provenance", str(out), "--key", str(public), "--digest", "sha256:" + "c" * 64]
    )
    assert other_digest.exit_code == 1 and "its subject is" in other_digest.stderr


def test_cli_signing_key_from_the_environment(
    lock: Lock, example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _built(lock, example_dir)
    private, public = _keypair(tmp_path, "lab")
    monkeypatch.setenv("IMAGESMITH_SIGNING_KEY", private.read_text())
    result = runner.invoke(app, ["provenance", spec])
    assert result.exit_code == 0, result.output
    assert verify_envelope(result.stdout, load_public_key(str(public)))["subject"]
    monkeypatch.setenv("IMAGESMITH_SIGNING_KEY", "not a key")
    result = runner.invoke(app, ["provenance", spec])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: IMAGESMITH_SIGNING_KEY: not an unencrypted PEM")


def test_cli_bad_key_file_and_no_build(lock: Lock, example_dir: Path, tmp_path: Path) -> None:
    write_lock(lock, example_dir / "env.lock")
    spec = str(example_dir / "env.toml")
    out = tmp_path / "prov.json"
    result = runner.invoke(app, ["provenance", spec, "--sign-key", spec, "-o", str(out)])
    assert result.exit_code == 2
    assert (
        len(result.stderr.splitlines()) == 1
        and "not an unencrypted PEM private key" in result.stderr
    )
    assert not out.exists()
    result = runner.invoke(app, ["provenance", spec])
    assert result.exit_code == 2
    assert "run `imagesmith build env.toml` first" in result.stderr
    assert "Traceback" not in result.output


def test_an_encrypted_key_is_refused_with_a_clear_line(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = tmp_path / "locked.key"
    key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InputError, match="not an unencrypted PEM private key"):
        load_signer(str(key))


def test_without_securesystemslib_signing_is_one_clear_line(
    lock: Lock, example_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _built(lock, example_dir)
    private, _ = _keypair(tmp_path, "lab")
    monkeypatch.setitem(sys.modules, "securesystemslib.signer", None)  # import fails
    result = runner.invoke(app, ["provenance", spec, "--sign-key", str(private)])
    assert result.exit_code == 2
    assert result.stderr == (
        "error: signing and verifying need securesystemslib and cryptography: "
        "pip install 'imagesmith[sign]'\n"
    )
