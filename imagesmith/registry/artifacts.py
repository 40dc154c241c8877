"""OCI artifacts imagesmith keeps beside an image: the input archive, the run-time settings
of its first push, its SBOMs and provenance. Each is an image manifest with an
`artifactType`, the empty config, and the image as its `subject`, written as canonical
JSON so that the same content always gives the same manifest digest."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagesmith.registry.client import Pusher

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
"""The OCI 1.1 empty descriptor's media type: an artifact's config when it has none."""
EMPTY = b"{}"
EMPTY_DIGEST = "sha256:" + hashlib.sha256(EMPTY).hexdigest()


def artifact_manifest(
    *,
    artifact_type: str,
    layers: Sequence[Mapping[str, Any]],
    subject: Mapping[str, Any] | None,
    annotations: Mapping[str, str],
) -> bytes:
    """The manifest's bytes: sorted keys, no whitespace (no `subject` when it is None)."""
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "artifactType": artifact_type,
        "config": {"mediaType": EMPTY_TYPE, "digest": EMPTY_DIGEST, "size": len(EMPTY)},
        "layers": list(layers),
        "annotations": dict(annotations),
    }
    if subject is not None:
        manifest["subject"] = dict(subject)
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def push_empty_config(pusher: Pusher) -> None:
    """Upload the empty config blob (a no-op where the repository has it)."""
    with tempfile.TemporaryDirectory(prefix="imagesmith-empty-") as tmp:
        empty = Path(tmp) / "config"
        empty.write_bytes(EMPTY)
        pusher.push_blob(EMPTY_DIGEST, empty)
