"""SPDX 2.3 and CycloneDX 1.6 JSON documents of an image, made from its lock alone.

The same lock gives the same bytes: the time is the lock's SOURCE_DATE_EPOCH, the SPDX
namespace and the CycloneDX serial number are derived from the lock hash. The image is
named by `name:version` and its content tag (`lock-<hash>`); its digest is bound to the
SBOM by the provenance and by the registry (the SBOM's `subject`), not written into it.
Licenses: only what a Python distribution declares as an SPDX expression (PEP 639
`License-Expression`, read from an image); otherwise NOASSERTION (SPDX) or left out
(CycloneDX). imagesmith does not guess them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from imagesmith import __version__
from imagesmith.attest.inventory import Component, Inventory, unique_ids
from imagesmith.errors import InputError

FORMATS = ("spdx", "cyclonedx")
MEDIA_TYPES = {"spdx": "application/spdx+json", "cyclonedx": "application/vnd.cyclonedx+json"}
NAMESPACE_ROOT = "https://imagesmith.dev/spdx"
NOASSERTION = "NOASSERTION"


def _lock_hex(inv: Inventory) -> str:
    return inv.lock_hash.removeprefix("sha256:")


def content_tag(inv: Inventory) -> str:
    return "lock-" + _lock_hex(inv)[:16]


def image_title(inv: Inventory) -> str:
    return f"{inv.name}:{inv.version}" if inv.version else inv.name


def spdx_namespace(inv: Inventory) -> str:
    return f"{NAMESPACE_ROOT}/{inv.name}/{_lock_hex(inv)}"


def cyclonedx_serial(inv: Inventory) -> str:
    return "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, spdx_namespace(inv)))


def _dump(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def render_sbom(inv: Inventory, fmt: str) -> str:
    if fmt == "spdx":
        return _dump(spdx_document(inv))
    if fmt == "cyclonedx":
        return _dump(cyclonedx_document(inv))
    raise InputError(f"--format must be spdx or cyclonedx, not {fmt!r}")


# --------------------------------------------------------------------------- SPDX 2.3

_SPDX_PURPOSE = {"base": "CONTAINER", "deb": "LIBRARY", "pypi": "LIBRARY"}


def _spdx_key(c: Component) -> str:
    return f"{c.kind}-{c.name}-{c.arch}" if c.arch else f"{c.kind}-{c.name}"


def _spdx_package(c: Component, spdx_id: str) -> dict[str, Any]:
    package: dict[str, Any] = {
        "SPDXID": spdx_id,
        "name": c.name,
        "versionInfo": c.version,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": c.license or NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": _SPDX_PURPOSE[c.kind],
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": c.purl,
            }
        ],
    }
    if c.in_base:
        package["comment"] = (
            "Came with the base image (read from the image's dpkg database); the lock pins it "
            "through the base image's digest."
        )
    elif c.kind == "pypi" and len(c.sha256) > 1:
        # A checksum says what the package file *is*; the lock only says which files may be.
        package["comment"] = (
            "The lock admits a wheel with any of these sha256 (the build installs the one "
            "for the image's platform): " + ", ".join(c.sha256)
        )
    elif c.kind == "base" and c.purl.find("@") < 0:
        package["comment"] = (
            f"A base image made locally and never pushed: {c.version} is its image ID "
            "(config digest)."
        )
    elif c.sha256:
        package["checksums"] = [{"algorithm": "SHA256", "checksumValue": c.sha256[0]}]
    return package


def spdx_document(inv: Inventory) -> dict[str, Any]:
    ids = unique_ids("SPDXRef-", [_spdx_key(c) for c in inv.components])
    image_id = "SPDXRef-image"
    packages = [_spdx_image_package(inv, image_id)]
    packages += [_spdx_package(c, i) for c, i in zip(inv.components, ids, strict=True)]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_title(inv),
        "documentNamespace": spdx_namespace(inv),
        "creationInfo": {
            "created": inv.created,
            "creators": [f"Tool: imagesmith-{__version__}"],
            "comment": f"Made from the lock {inv.lock_hash}; no scanner was run.",
        },
        "packages": packages,
        "relationships": _spdx_relationships(inv, ids, image_id),
    }


def _spdx_image_package(inv: Inventory, image_id: str) -> dict[str, Any]:
    """The image itself, the package the document describes."""
    return {
        "SPDXID": image_id,
        "name": image_title(inv),
        "versionInfo": inv.version or content_tag(inv),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": False,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "CONTAINER",
        "comment": (
            f"The image imagesmith builds from the lock {inv.lock_hash} (tag "
            f"{inv.name}:{content_tag(inv)}; spec {inv.spec_hash})."
        ),
    }


def _spdx_relationships(inv: Inventory, ids: list[str], image_id: str) -> list[dict[str, str]]:
    """The document describes the image; the image descends from the base (the first
    component) and contains every component; the base contains what it brought; the image
    depends on what the spec asked for."""
    base_id = ids[0]
    relationships = [
        _relationship("SPDXRef-DOCUMENT", "DESCRIBES", image_id),
        _relationship(image_id, "DESCENDANT_OF", base_id),
    ]
    relationships += [_relationship(image_id, "CONTAINS", i) for i in ids]
    for c, i in zip(inv.components[1:], ids[1:], strict=True):
        if c.in_base:
            relationships.append(_relationship(base_id, "CONTAINS", i))
        if c.direct:
            relationships.append(_relationship(image_id, "DEPENDS_ON", i))
    return relationships


def _relationship(element: str, kind: str, related: str) -> dict[str, str]:
    return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}


# --------------------------------------------------------------------------- CycloneDX 1.6

_CDX_TYPE = {"base": "container", "deb": "library", "pypi": "library"}


def _cdx_component(c: Component) -> dict[str, Any]:
    component: dict[str, Any] = {
        "type": _CDX_TYPE[c.kind],
        "bom-ref": c.purl,
        "name": c.name,
        "version": c.version,
        "purl": c.purl,
    }
    if c.license:
        component["licenses"] = [{"expression": c.license, "acknowledgement": "declared"}]
    if len(c.sha256) == 1 and not (c.kind == "base" and "@" not in c.purl):
        component["hashes"] = [{"alg": "SHA-256", "content": c.sha256[0]}]
    properties = []
    if c.kind == "pypi" and len(c.sha256) > 1:
        properties = [{"name": "imagesmith:admitted-wheel-sha256", "value": h} for h in c.sha256]
    if c.kind == "base" and "@" not in c.purl:
        properties = [{"name": "imagesmith:local-image-id", "value": c.version}]
    if c.direct:
        properties.append({"name": "imagesmith:requested", "value": "true"})
    if c.in_base:
        properties.append({"name": "imagesmith:from-base-image", "value": "true"})
    if properties:
        component["properties"] = properties
    return component


def cyclonedx_document(inv: Inventory) -> dict[str, Any]:
    image_ref = f"image:{image_title(inv)}"
    components = [_cdx_component(c) for c in inv.components]
    direct = [c.purl for c in inv.components if c.direct]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": cyclonedx_serial(inv),
        "version": 1,
        "metadata": {
            "timestamp": inv.created,
            "tools": {
                "components": [
                    {"type": "application", "name": "imagesmith", "version": __version__}
                ]
            },
            "component": {
                "type": "container",
                "bom-ref": image_ref,
                "name": inv.name,
                "version": inv.version or content_tag(inv),
                "properties": [
                    {"name": "imagesmith:lock-hash", "value": inv.lock_hash},
                    {"name": "imagesmith:spec-hash", "value": inv.spec_hash},
                    {"name": "imagesmith:content-tag", "value": content_tag(inv)},
                ],
            },
        },
        "components": components,
        # Only the image's own edges: the lock does not know what depends on what below it.
        "dependencies": [{"ref": image_ref, "dependsOn": direct}],
    }
