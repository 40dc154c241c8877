"""The referrers tag schema's index and the artifact manifests, as pure values."""

from __future__ import annotations

import json

from imagesmith.attest.referrers import (
    KIND_ANNOTATION,
    Attestation,
    attestation_manifest,
    merged_index,
    referrers_tag,
)

SUBJECT = {
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:" + "a" * 64,
    "size": 123,
}


def _ours(kind: str, digest: str) -> dict[str, object]:
    return {"digest": digest, "annotations": {KIND_ANNOTATION: kind}}


def test_tag_of_a_digest() -> None:
    assert referrers_tag("sha256:" + "a" * 64) == "sha256-" + "a" * 64


def test_merged_index_keeps_others_and_replaces_our_earlier_entries() -> None:
    others = {"digest": "sha256:other", "artifactType": "application/vnd.example.sig"}
    unannotated = {"digest": "sha256:other2"}
    existing = [
        others,
        _ours("spdx", "sha256:old-spdx"),
        unannotated,
        _ours("provenance", "sha256:p"),
    ]
    ours = [_ours("spdx", "sha256:new-spdx"), _ours("provenance", "sha256:p")]
    index = merged_index(existing, ours)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["digest"] for m in index["manifests"]] == [
        "sha256:other",
        "sha256:other2",
        "sha256:new-spdx",
        "sha256:p",
    ]
    # merging the same again changes nothing: a re-push writes no new index
    assert merged_index(index["manifests"], ours) == index


def test_attestation_manifest_is_an_oci_1_1_artifact_with_the_image_as_subject() -> None:
    att = Attestation("spdx", "application/spdx+json", "application/spdx+json", b'{"x": 1}\n')
    data = attestation_manifest(att, SUBJECT, "2025-05-20T00:00:00Z")
    manifest = json.loads(data)
    assert manifest["artifactType"] == "application/spdx+json"
    assert manifest["config"] == {
        "mediaType": "application/vnd.oci.empty.v1+json",
        "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "size": 2,
    }
    assert manifest["layers"][0]["size"] == len(att.content)
    assert manifest["subject"] == SUBJECT
    assert attestation_manifest(att, SUBJECT, "2025-05-20T00:00:00Z") == data  # same bytes
