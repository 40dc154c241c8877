"""What `push` attaches to an image: both SBOMs and the provenance, from the lock."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from imagesmith.attest.inventory import inventory
from imagesmith.attest.provenance import BuildRun, dump_statement, provenance_statement
from imagesmith.attest.referrers import Attestation, Referrers
from imagesmith.attest.sbom import MEDIA_TYPES, render_sbom
from imagesmith.canonical import rfc3339
from imagesmith.lock import Lock
from imagesmith.records import BuildRecord
from imagesmith.reference import ImageReference

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
