"""What `push` attaches to an image: both SBOMs and the provenance, from the lock."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from imagesmith.attest.inventory import inventory
from imagesmith.attest.provenance import BuildRun, dump_statement, provenance_statement
from imagesmith.attest.referrers import Attestation, Referrers
from imagesmith.attest.sbom import MEDIA_TYPES, render_sbom
from imagesmith.image.config import rfc3339
from imagesmith.model.lock import Lock
from imagesmith.model.records import BuildRecord
from imagesmith.model.reference import ImageReference

MEDIA_IN_TOTO = "application/vnd.in-toto+json"
MEDIA_DSSE = "application/vnd.dsse.envelope.v1+json"


def default_builder_id() -> str:
    return f"urn:imagesmith:builder:{socket.gethostname()}"


def lock_attestations(lock: Lock, run: BuildRun, *, signer: Any = None) -> list[Attestation]:
    """SPDX, CycloneDX and the provenance (a DSSE envelope when there is a signer)."""
    contents = inventory(lock)
    found = [
        Attestation(fmt, MEDIA_TYPES[fmt], MEDIA_TYPES[fmt], render_sbom(contents, fmt).encode())
        for fmt in ("spdx", "cyclonedx")
    ]
    statement = dump_statement(provenance_statement(lock, contents, run))
    if signer is None:
        found.append(Attestation("provenance", MEDIA_IN_TOTO, MEDIA_IN_TOTO, statement.encode()))
    else:
        from imagesmith.attest.signing import sign_statement

        envelope = sign_statement(statement, signer)
        found.append(Attestation("provenance", MEDIA_IN_TOTO, MEDIA_DSSE, envelope.encode()))
    return found


def attach_attestations(
    lock: Lock,
    built: BuildRecord,
    repository: ImageReference,
    *,
    signer: Any = None,
    builder_id: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> list[str]:
    """Attach the lock's attestations to the pushed image; the referrer manifests' digests."""
    run = BuildRun(
        repository=repository.familiar_repository,
        digest=built.digest,
        engine=built.engine,
        builder_id=builder_id or default_builder_id(),
        started=built.started,
        finished=built.finished,
    )
    attestations = lock_attestations(lock, run, signer=signer)
    referrers = Referrers(repository, built.digest, on_line=on_line)
    return referrers.attach(attestations, created=rfc3339(lock.source_date_epoch))


def attached_summary(pinned: str) -> list[str]:
    """One line per referrer of `REGISTRY/PATH@sha256:…`: its artifact type and digest."""
    from imagesmith.model.reference import parse_reference

    ref = parse_reference(pinned)
    assert ref.digest is not None
    return [
        f"{entry.get('artifactType', 'unknown type')} {entry.get('digest', '')}"
        for entry in Referrers(ref, ref.digest).entries()
    ]


def verify_attached_provenance(pinned: str, key: Any) -> dict[str, Any]:
    """The provenance attached to `REGISTRY/PATH@sha256:…`, once `key` verified its
    signature and its subject is that digest; VerificationFailed otherwise."""
    from imagesmith.attest.signing import VerificationFailed, verify_envelope
    from imagesmith.model.reference import parse_reference

    ref = parse_reference(pinned)
    assert ref.digest is not None
    referrers = Referrers(ref, ref.digest)
    found = [e for e in referrers.entries() if e.get("artifactType") == MEDIA_IN_TOTO]
    if not found:
        raise VerificationFailed(f"{pinned} has no provenance attached to verify")
    statement = verify_envelope(
        referrers.fetch(found[-1]).decode("utf-8"), key, what=f"{pinned}'s provenance"
    )
    subjects = [s.get("digest", {}).get("sha256") for s in statement.get("subject", [])]
    if ref.digest.removeprefix("sha256:") not in subjects:
        raise VerificationFailed(f"{pinned}'s signed provenance is about another image")
    return statement
