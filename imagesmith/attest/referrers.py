"""Attach SBOMs and provenance to an image in its registry, as OCI 1.1 referrers.

Each attestation is an artifact manifest (OCI image manifest with `artifactType`, the
empty config and one layer holding the document) whose `subject` is the image; the
image's own digest does not change. A registry with the referrers API
(`GET /v2/NAME/referrers/DIGEST`) indexes them itself. On one without it (distribution 2.8)
imagesmith maintains the distribution spec's referrers tag schema: the tag
`sha256-<hex of the image digest>` holds an OCI index of the referrers. Entries another
tool added are kept; imagesmith's own earlier entries (annotation
`dev.imagesmith.attestation`) are replaced, so a re-push leaves one of each kind.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import RegistryError
from imagesmith.model.reference import ImageReference
from imagesmith.registry.artifacts import EMPTY, MANIFEST_TYPE, artifact_manifest
from imagesmith.registry.client import Credentials, Pusher, RegistryClient

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
KIND_ANNOTATION = "dev.imagesmith.attestation"
CREATED_ANNOTATION = "org.opencontainers.image.created"


@dataclass(frozen=True)
class Attestation:
    kind: str
    """spdx, cyclonedx or provenance: one referrer of each kind per image."""
    artifact_type: str
    media_type: str
    """Of the layer: the document's own type (a DSSE envelope has its own)."""
    content: bytes


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def attestation_manifest(att: Attestation, subject: dict[str, Any], created: str) -> bytes:
    layer = {"mediaType": att.media_type, "digest": _digest(att.content), "size": len(att.content)}
    return artifact_manifest(
        artifact_type=att.artifact_type,
        layers=[layer],
        subject=subject,
        annotations={CREATED_ANNOTATION: created, KIND_ANNOTATION: att.kind},
    )


def referrers_tag(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}-{hex_}"


def merged_index(
    existing: Sequence[dict[str, Any]], ours: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The referrers index: others' entries as they were, then ours (earlier ones of ours
    and duplicates of the same digest dropped)."""
    kinds = {d["annotations"][KIND_ANNOTATION] for d in ours}
    digests = {d["digest"] for d in ours}
    kept = [
        d
        for d in existing
        if d.get("digest") not in digests
        and (d.get("annotations") or {}).get(KIND_ANNOTATION) not in kinds
    ]
    return {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [*kept, *ours]}


class Referrers:
    """The referrers of one image in one repository."""

    def __init__(
        self,
        repository: ImageReference,
        subject_digest: str,
        *,
        credentials: Credentials | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        self.repository = repository
        self.subject_digest = subject_digest
        self.client = RegistryClient(repository.registry, credentials)
        self.pusher = Pusher(self.client, repository.path, on_line)
        self.on_line = on_line

    @property
    def _read_scope(self) -> str:
        return f"repository:{self.repository.path}:pull"

    def _get(self, url: str, accept: str) -> tuple[int, str, bytes]:
        status, headers, body = self.client.request(
            "GET", url, scope=self._read_scope, headers={"Accept": accept}
        )
        if status in (401, 403):
            raise RegistryError(f"unauthorized: check the credentials for {self.client.registry}")
        media = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        return status, media.split(";")[0], body

    def has_referrers_api(self) -> bool:
        status, media, _ = self._get(
            f"/v2/{self.repository.path}/referrers/{self.subject_digest}", MEDIA_INDEX
        )
        return status == 200 and media == MEDIA_INDEX

    def tag_index(self) -> list[dict[str, Any]]:
        """The entries of the referrers tag schema's index (empty when there is no tag yet)."""
        tag = referrers_tag(self.subject_digest)
        status, media, body = self._get(f"/v2/{self.repository.path}/manifests/{tag}", MEDIA_INDEX)
        if status == 404:
            return []
        if status != 200:
            raise RegistryError(f"{self.client.registry} answered {status} for the tag {tag}")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if media != MEDIA_INDEX or not isinstance(data, dict):
            raise RegistryError(
                f"{self.repository}:{tag} is not an OCI index ({media or 'no type'}); "
                "imagesmith will not overwrite it"
            )
        manifests = data.get("manifests", [])
        return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []

    def entries(self) -> list[dict[str, Any]]:
        """Every referrer the registry reports (API or tag schema)."""
        if self.has_referrers_api():
            _, _, body = self._get(
                f"/v2/{self.repository.path}/referrers/{self.subject_digest}", MEDIA_INDEX
            )
            found = json.loads(body).get("manifests", [])
            return [m for m in found if isinstance(m, dict)]
        return self.tag_index()

    def fetch(self, descriptor: dict[str, Any]) -> bytes:
        """The document a referrer holds (its one layer), checked against its digest."""
        _, _, manifest = self._get(
            f"/v2/{self.repository.path}/manifests/{descriptor['digest']}", MANIFEST_TYPE
        )
        if _digest(manifest) != descriptor["digest"]:
            raise RegistryError(f"{self.client.registry} served another manifest for a referrer")
        layer = json.loads(manifest)["layers"][0]
        status, _, blob = self._get(f"/v2/{self.repository.path}/blobs/{layer['digest']}", "*/*")
        if status != 200 or _digest(blob) != layer["digest"]:
            raise RegistryError(f"{self.client.registry} served a damaged blob {layer['digest']}")
        return blob

    def attach(self, attestations: Sequence[Attestation], *, created: str) -> list[str]:
        """Push each attestation with the image as subject; the referrer manifests' digests."""
        _, media, subject_bytes = self._get(
            f"/v2/{self.repository.path}/manifests/{self.subject_digest}", MANIFEST_TYPE
        )
        if _digest(subject_bytes) != self.subject_digest:
            raise RegistryError(f"{self.repository}@{self.subject_digest} is not in the registry")
        subject = {
            "mediaType": media or MANIFEST_TYPE,
            "digest": self.subject_digest,
            "size": len(subject_bytes),
        }
        descriptors: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="imagesmith-attest-") as folder:
            for data in (EMPTY, *(a.content for a in attestations)):
                path = Path(folder) / _digest(data).removeprefix("sha256:")
                path.write_bytes(data)
                self.pusher.push_blob(_digest(data), path)
        for att in attestations:
            manifest = attestation_manifest(att, subject, created)
            digest = _digest(manifest)
            self.pusher.push_manifest(digest, manifest, MANIFEST_TYPE)
            descriptors.append(
                {
                    "mediaType": MANIFEST_TYPE,
                    "digest": digest,
                    "size": len(manifest),
                    "artifactType": att.artifact_type,
                    "annotations": {CREATED_ANNOTATION: created, KIND_ANNOTATION: att.kind},
                }
            )
        if not self.has_referrers_api():
            existing = self.tag_index()
            index = merged_index(existing, descriptors)
            if index["manifests"] != existing:
                self.pusher.push_manifest(
                    referrers_tag(self.subject_digest), _json(index), MEDIA_INDEX
                )
        return [d["digest"] for d in descriptors]


def attached_document(text: str, fmt: str) -> bytes:
    """The SBOM of format `fmt` attached to the image `REGISTRY/PATH@sha256:…`."""
    from imagesmith.attest.sbom import MEDIA_TYPES
    from imagesmith.errors import InputError
    from imagesmith.model.reference import is_digest, parse_reference

    try:
        ref = parse_reference(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not ref.digest or not is_digest(ref.digest):
        raise InputError(f"{text}: name the image by digest (REGISTRY/PATH@sha256:…)")
    referrers = Referrers(ref, ref.digest)
    wanted = MEDIA_TYPES[fmt]
    found = [e for e in referrers.entries() if e.get("artifactType") == wanted]
    if not found:
        raise RegistryError(
            f"{ref.familiar_repository}@{ref.digest} has no {wanted} attached "
            "(was it pushed with `imagesmith push`, without --no-attestations?)"
        )
    return referrers.fetch(found[-1])
