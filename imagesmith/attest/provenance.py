"""SLSA Provenance v1 in an in-toto Statement v1: how an image was built, from its lock.

The statement's subject is the image's manifest digest (the one `build` printed and
`push` put in the registry). `buildDefinition` holds what a rebuild needs and is the same
for every builder of the same lock; only `runDetails` (who built it, with which engine,
when) differs between builders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from imagesmith import __version__
from imagesmith.attest.inventory import Inventory
from imagesmith.model.lock import Lock

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://imagesmith.dev/buildtypes/lock/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"


@dataclass(frozen=True)
class BuildRun:
    """One build of a lock: what it made, where and when."""

    repository: str
    """The image's name in the statement's subject (registry/path, or the spec's name)."""
    digest: str
    """sha256:… manifest digest of the canonical image."""
    engine: str
    builder_id: str
    started: str | None = None
    finished: str | None = None


def _sha256(hex_or_digest: str) -> dict[str, str]:
    return {"sha256": hex_or_digest.removeprefix("sha256:")}


def resolved_dependencies(inv: Inventory) -> list[dict[str, Any]]:
    """The base by digest, every .deb by sha256, every wheel the lock admits by sha256."""
    out: list[dict[str, Any]] = []
    for c in inv.components:
        if c.kind == "base":
            base: dict[str, Any] = {"uri": c.purl, "name": c.name, "digest": _sha256(c.version)}
            if "@" not in c.purl:  # never pushed: the digest is its image ID
                base["annotations"] = {"digestOf": "image config (a local base's image ID)"}
            out.append(base)
        elif c.in_base:  # resolved through the base's digest, not on its own
            continue
        elif not c.sha256:
            out.append({"uri": c.purl, "name": c.name})
        else:
            out.extend({"uri": c.purl, "name": c.name, "digest": _sha256(h)} for h in c.sha256)
    return out


def provenance_statement(lock: Lock, inv: Inventory, run: BuildRun) -> dict[str, Any]:
    metadata: dict[str, Any] = {"invocationId": f"{run.digest}@{run.started or 'unknown'}"}
    if run.started:
        metadata["startedOn"] = run.started
    if run.finished:
        metadata["finishedOn"] = run.finished
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": run.repository, "digest": _sha256(run.digest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "name": inv.name,
                    "version": inv.version,
                    "specHash": lock.spec_hash,
                    "lockHash": lock.lock_hash,
                    "platform": lock.platform,
                },
                "internalParameters": {
                    "sourceDateEpoch": lock.source_date_epoch,
                    "lockedBy": lock.imagesmith_version,
                },
                "resolvedDependencies": resolved_dependencies(inv),
            },
            "runDetails": {
                "builder": {
                    "id": run.builder_id,
                    "version": {"imagesmith": __version__, "engine": run.engine},
                },
                "metadata": metadata,
            },
        },
    }


def dump_statement(statement: dict[str, Any]) -> str:
    return json.dumps(statement, indent=2) + "\n"
