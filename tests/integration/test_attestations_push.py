"""SBOMs and provenance attached on push, against a real docker-registry (distribution 2.8,
no referrers API) on 127.0.0.1: the referrers tag schema, re-push idempotence, another
tool's referrer kept, the documents fetched back by digest, a signed provenance."""

from __future__ import annotations

import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.attest.inventory import inventory
from imagesmith.attest.referrers import MEDIA_INDEX, Referrers
from imagesmith.attest.sbom import render_sbom
from imagesmith.attest.signing import load_public_key, verify_envelope
from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.model.lock import read_lock
from imagesmith.model.reference import parse_reference
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.registry.artifacts import MANIFEST_TYPE as MEDIA_MANIFEST
from imagesmith.registry.client import Pusher, RegistryClient
from tests.integration.conftest import ensure_test_base
from tests.unit.test_provenance import _check_slsa
from tests.unit.test_sbom import _pyspdxtools

pytestmark = [pytest.mark.integration, pytest.mark.registry, pytest.mark.docker]
runner = CliRunner()


@pytest.fixture
def built_spec(
    docker_engine: Engine, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Spec]:
    base = ensure_test_base(docker_engine, request)
    name = f"it-attest-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base}"\n[env]\nMARK = "x"\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    result = build(spec, docker_engine)
    yield spec
    for tag in result.tags:
        docker_engine.remove_image(tag, force=True)
    docker_engine.remove_image(result.image_id, force=True)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _other_tools_referrer(host: str, path: str, subject: str) -> str:
    """What another tool (a signer, say) leaves: an artifact and the referrers tag index."""
    client = RegistryClient(host)
    pusher = Pusher(client, path, None)
    _, media, body = client.manifest(path, subject)
    folder = Path(f"/tmp/imagesmith-it-{uuid.uuid4().hex}")
    folder.mkdir()
    try:
        for blob in (b"{}", b"a signature"):
            (folder / "b").write_bytes(blob)
            pusher.push_blob(_sha(blob), folder / "b")
    finally:
        (folder / "b").unlink(missing_ok=True)
        folder.rmdir()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": _sha(b"{}"),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": _sha(b"a signature"),
                    "size": 11,
                }
            ],
            "subject": {"mediaType": media, "digest": subject, "size": len(body)},
        }
    ).encode()
    digest = _sha(manifest)
    pusher.push_manifest(digest, manifest, MEDIA_MANIFEST)
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": digest,
                "size": len(manifest),
                "artifactType": "application/vnd.example.signature",
            }
        ],
    }
    pusher.push_manifest("sha256-" + subject[7:], json.dumps(index).encode(), MEDIA_INDEX)
    return digest


def test_push_attaches_sboms_and_provenance_as_referrers(
    built_spec: Spec,
    open_registry: str,
    docker_engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = f"lab/{built_spec.name}"
    to = f"{open_registry}/{path}"
    spec_file = str(built_spec.path)
    first = runner.invoke(app, ["push", spec_file, "--to", to, "--no-attestations"])
    assert first.exit_code == 0, first.output
    digest = json.loads(built_spec.path.with_suffix(".pushed.json").read_text())["digest"]
    referrers = Referrers(parse_reference(to), digest)
    assert not referrers.has_referrers_api()  # distribution 2.8: the tag schema it is
    assert referrers.entries() == []  # --no-attestations attached nothing
    others = _other_tools_referrer(open_registry, path, digest)

    for _ in range(2):  # the second push must leave the same referrers, not more
        pushed = runner.invoke(app, ["push", spec_file, "--to", to])
        assert pushed.exit_code == 0, pushed.output
        assert "attached 3 attestations" in pushed.stderr
        entries = referrers.entries()
        assert entries[0]["digest"] == others  # another tool's referrer is kept
        assert sorted(e["artifactType"] for e in entries) == [
            "application/spdx+json",
            "application/vnd.cyclonedx+json",
            "application/vnd.example.signature",
            "application/vnd.in-toto+json",
        ]
    # the image itself did not change
    assert RegistryClient(open_registry).manifest(path, "1.0")[0] == digest

    lock = read_lock(built_spec.lock_path)
    shown = runner.invoke(app, ["inspect", f"{built_spec.name}:1.0", "--engine", "docker"])
    assert shown.exit_code == 0, shown.output
    listed = 1 + len(lock.apt.packages)  # the base, then what apt installed (none here)
    assert f"  sbom:  {listed} packages, {listed} licenses unknown" in shown.stdout
    by_type = {e["artifactType"]: e for e in entries}
    spdx = referrers.fetch(by_type["application/spdx+json"])
    assert spdx.decode() == render_sbom(inventory(lock), "spdx")
    (tmp_path / "pulled.spdx.json").write_bytes(spdx)
    assert _pyspdxtools(tmp_path / "pulled.spdx.json").returncode == 0
    cdx = referrers.fetch(by_type["application/vnd.cyclonedx+json"])
    assert cdx.decode() == render_sbom(inventory(lock), "cyclonedx")
    for fmt in ("spdx", "cyclonedx"):  # `imagesmith sbom REF@sha256:…` fetches them
        fetched = runner.invoke(app, ["sbom", f"{to}@{digest}", "--format", fmt])
        assert fetched.exit_code == 0, fetched.output
        assert fetched.stdout == render_sbom(inventory(lock), fmt)
    bare = runner.invoke(app, ["sbom", f"{to}@{others}"])  # another tool's artifact: no SBOM
    assert bare.exit_code == 1
    assert bare.stderr.startswith(f"error: {to}@{others} has no application/spdx+json attached")
    statement = json.loads(referrers.fetch(by_type["application/vnd.in-toto+json"]))
    _check_slsa(statement)
    assert statement["subject"][0]["digest"] == {"sha256": digest[7:]}
    # each referrer's manifest names the image as its subject
    manifest = json.loads(
        RegistryClient(open_registry).manifest(path, by_type["application/spdx+json"]["digest"])[2]
    )
    assert manifest["subject"]["digest"] == digest

    # signed: the provenance referrer becomes a DSSE envelope the lab's key verifies
    key = tmp_path / "lab.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    monkeypatch.setenv("IMAGESMITH_SIGNING_KEY", key.read_text())
    signed = runner.invoke(app, ["push", spec_file, "--to", to])
    assert signed.exit_code == 0, signed.output
    entries = referrers.entries()
    provenance = [e for e in entries if e["artifactType"] == "application/vnd.in-toto+json"]
    assert len(provenance) == 1 and len(entries) == 4
    envelope = referrers.fetch(provenance[0]).decode()
    assert verify_envelope(envelope, load_public_key(str(key)))["subject"] == statement["subject"]

    # pull lists what is attached, and --verify-key checks the signed provenance first
    public, other = tmp_path / "lab.pub", tmp_path / "other.pub"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-out", str(public)], check=True)
    other_key = tmp_path / "other.key"
    subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(other_key)], check=True
    )
    subprocess.run(
        ["openssl", "pkey", "-in", str(other_key), "-pubout", "-out", str(other)], check=True
    )
    pinned = f"{to}@{digest}"
    try:
        refused = runner.invoke(app, ["pull", pinned, "-e", "docker", "--verify-key", str(other)])
        assert refused.exit_code == 1
        assert "does not verify" in refused.stderr
        assert not docker_engine.image_exists(pinned)  # checked before pulling
        pulled = runner.invoke(app, ["pull", pinned, "-e", "docker", "--verify-key", str(public)])
        assert pulled.exit_code == 0, pulled.output
        assert "  provenance: signed with" in pulled.stdout
        attached = [line for line in pulled.stdout.splitlines() if line.startswith("  attached: ")]
        assert sorted(line.split()[1] for line in attached) == sorted(
            e["artifactType"] for e in entries
        )
    finally:
        docker_engine.remove_image(pinned, force=True)
