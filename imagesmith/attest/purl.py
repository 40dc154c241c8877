"""Package URLs (purl, github.com/package-url/purl-spec) for what a lock pins."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

from imagesmith.model.lock import AptPackage, BaseImageLock, PythonPackage
from imagesmith.model.reference import parse_reference
from imagesmith.model.spec import normalize_name

# Debian's and Ubuntu's releases by code name (a base's /etc/os-release VERSION_CODENAME,
# which the lock keeps as the apt suite); an unknown one is taken as Debian's, passed
# through as the distro as it is.
DEBIAN_RELEASES = {
    "buster": "10",
    "bullseye": "11",
    "bookworm": "12",
    "trixie": "13",
    "forky": "14",
}
UBUNTU_RELEASES = {
    "bionic": "18.04",
    "focal": "20.04",
    "jammy": "22.04",
    "mantic": "23.10",
    "noble": "24.04",
    "oracular": "24.10",
    "plucky": "25.04",
    "questing": "25.10",
    "resolute": "26.04",
}


def _encode(text: str, *, slash: bool = False) -> str:
    # Unreserved characters and ':' stay bare (and '/' in qualifier values), as in
    # packageurl-python's canonical form, so purls compare equal as plain strings.
    return quote(text, safe="-._~:/" if slash else "-._~:")


def purl(
    kind: str,
    name: str,
    *,
    namespace: str | None = None,
    version: str | None = None,
    qualifiers: Mapping[str, str] | None = None,
) -> str:
    text = f"pkg:{kind}/"
    if namespace:
        text += "/".join(_encode(part) for part in namespace.split("/")) + "/"
    text += _encode(name)
    if version:
        text += "@" + _encode(version)
    if qualifiers:
        pairs = sorted((k, v) for k, v in qualifiers.items() if v)
        if pairs:
            text += "?" + "&".join(f"{k}={_encode(v, slash=True)}" for k, v in pairs)
    return text


def deb_distro(suite: str) -> tuple[str, str]:
    """(purl namespace, `distro` qualifier) of a suite: bookworm → (debian, debian-12),
    noble → (ubuntu, ubuntu-24.04)."""
    if suite in UBUNTU_RELEASES:
        return "ubuntu", f"ubuntu-{UBUNTU_RELEASES[suite]}"
    return "debian", f"debian-{DEBIAN_RELEASES.get(suite, suite)}"


def deb_purl(package: AptPackage, suite: str) -> str:
    namespace, distro = deb_distro(suite)
    return purl(
        "deb",
        package.name,
        namespace=namespace,
        version=package.version,
        qualifiers={"arch": package.arch, "distro": distro},
    )


def pypi_name(name: str) -> str:
    """PEP 503 normalised, as the purl spec wants for pypi."""
    return normalize_name(name)


def pypi_purl(package: PythonPackage) -> str:
    return purl("pypi", pypi_name(package.name), version=package.version)


def oci_purl(base: BaseImageLock) -> str:
    """pkg:oci/NAME@DIGEST?repository_url=...; a local-only base has no manifest digest, so
    its purl names the repository and tag alone."""
    try:
        asked = parse_reference(base.reference)
        repository = base.repository if base.local else parse_reference(base.repository).repository
    except ValueError:  # a lock imagesmith wrote holds references it parsed already
        asked, repository = None, base.repository
    tag = asked.tag if asked is not None and asked.digest is None else None
    qualifiers = {"repository_url": repository, "tag": tag or ""}
    name = repository.rsplit("/", 1)[-1]
    if base.local:
        return purl("oci", name, qualifiers=qualifiers)
    return purl("oci", name, version=base.digest, qualifiers=qualifiers)
