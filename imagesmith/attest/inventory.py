"""The packages a lock pins, as one list both SBOM formats and the provenance read."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from imagesmith.attest.purl import deb_purl, oci_purl, pypi_name, pypi_purl
from imagesmith.model.lock import AptPackage, Lock


@dataclass(frozen=True)
class Component:
    kind: str
    """"base", "deb" or "pypi"."""
    name: str
    version: str
    purl: str
    sha256: tuple[str, ...]
    """Hex sha256s the lock holds: one for a .deb or the base, every wheel the lock admits
    for a Python distribution (the build installs the one that fits the platform)."""
    direct: bool
    """Named in the spec (an apt package or Python requirement), not pulled in."""
    arch: str = ""
    in_base: bool = False
    """A Debian package the base image brought (read from the image, not pinned by the lock)."""
    license: str | None = None
    """The SPDX license expression the package itself declares, read from the image: a
    Python distribution's PEP 639 `License-Expression`, a Debian package's
    machine-readable copyright file (its `Files: *` license, Debian's short names turned
    into SPDX ones); None when unknown or not on the SPDX list."""


@dataclass(frozen=True)
class InstalledDeb:
    """One line of an image's dpkg database."""

    name: str
    version: str
    arch: str


@dataclass(frozen=True)
class Inventory:
    name: str
    version: str
    lock_hash: str
    spec_hash: str
    created: str
    """RFC 3339 time of the lock's SOURCE_DATE_EPOCH."""
    components: tuple[Component, ...]

    @property
    def base(self) -> Component:
        return self.components[0]


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def _requested_python(spec_data: object) -> set[str]:
    """Normalised names of the spec's own Python requirements (not a requirements_file's)."""
    python = spec_data.get("python") if isinstance(spec_data, Mapping) else None
    lines = python.get("requirements", []) if isinstance(python, dict) else []
    names = set()
    for line in lines if isinstance(lines, list) else []:
        # The spec validated these as PEP 508 requirements: the name leads each one.
        match = _REQUIREMENT_NAME.match(str(line))
        if match:
            names.add(pypi_name(match.group(1)))
    return names


_REQUIREMENT_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")


def rfc3339(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def inventory(
    lock: Lock,
    installed: Sequence[InstalledDeb] = (),
    licenses: Mapping[str, str] | None = None,
    deb_licenses: Mapping[str, str] | None = None,
) -> Inventory:
    """Everything `lock` pins; plus, given the image's dpkg database (`installed`), the
    Debian packages the base brought, which the lock pins only through the base's digest;
    `licenses`: SPDX expressions of Python distributions by normalised name;
    `deb_licenses`: those of Debian packages by package name (`parse_deb_licenses`)."""
    spec = lock.spec_data
    components = [
        _base_component(lock),
        *_deb_components(lock, installed, deb_licenses or {}),
        *_python_components(lock, licenses or {}),
    ]
    return Inventory(
        name=str(spec.get("name", "image")),
        version=str(spec.get("version", "")),
        lock_hash=lock.lock_hash,
        spec_hash=lock.spec_hash,
        created=rfc3339(lock.source_date_epoch),
        components=tuple(components),
    )


def _base_component(lock: Lock) -> Component:
    base = lock.base
    return Component(
        kind="base",
        name=base.repository,
        version=base.digest,
        purl=oci_purl(base),
        sha256=(_hex(base.digest),),
        direct=True,
    )


def _deb_components(
    lock: Lock, installed: Sequence[InstalledDeb], deb_licenses: Mapping[str, str]
) -> list[Component]:
    """The Debian packages the lock pins, and those the base brought that it does not."""
    components = []
    for deb in sorted(lock.apt.packages, key=lambda p: (p.name, p.arch, p.version)):
        components.append(
            Component(
                kind="deb",
                name=deb.name,
                version=deb.version,
                purl=deb_purl(deb, lock.apt.suite),
                sha256=(_hex(deb.sha256),) if deb.sha256 else (),
                direct=deb.requested,
                arch=deb.arch,
                license=deb_licenses.get(deb.name),
            )
        )
    pinned = {(deb.name, deb.arch) for deb in lock.apt.packages}
    for found in sorted(set(installed), key=lambda p: (p.name, p.arch, p.version)):
        if (found.name, found.arch) not in pinned:
            components.append(
                Component(
                    kind="deb",
                    name=found.name,
                    version=found.version,
                    purl=deb_purl(
                        AptPackage(name=found.name, version=found.version, arch=found.arch),
                        lock.apt.suite,
                    ),
                    sha256=(),
                    direct=False,
                    arch=found.arch,
                    in_base=True,
                    license=deb_licenses.get(found.name),
                )
            )
    return sorted(components, key=lambda c: (c.name, c.arch, c.version))


def _python_components(lock: Lock, licenses: Mapping[str, str]) -> list[Component]:
    """The Python distributions the lock pins (none without [python])."""
    if lock.python is None:
        return []
    requested = _requested_python(lock.spec_data)
    return [
        Component(
            kind="pypi",
            name=pypi_name(dist.name),
            version=dist.version,
            purl=pypi_purl(dist),
            sha256=tuple(sorted(_hex(h) for h in dist.hashes)),
            direct=pypi_name(dist.name) in requested,
            license=licenses.get(pypi_name(dist.name)),
        )
        for dist in sorted(lock.python.packages, key=lambda p: pypi_name(p.name))
    ]


def unique_ids(prefix: str, keys: Iterable[str]) -> list[str]:
    """Identifiers made of [A-Za-z0-9.-] only (what SPDX allows), one per key, all distinct."""
    out: list[str] = []
    seen: set[str] = set()
    for key in keys:
        candidate = prefix + re.sub(r"[^A-Za-z0-9.-]+", "-", key).strip("-")
        if candidate in seen:  # two keys that differ only in characters SPDX forbids
            candidate += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        seen.add(candidate)
        out.append(candidate)
    return out


# One line per package; only those dpkg has fully installed ("ii") count.
DPKG_QUERY = [
    "dpkg-query",
    "-W",
    "-f",
    "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
]


def parse_dpkg_query(output: str) -> tuple[InstalledDeb, ...]:
    found = []
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[0].strip() == "ii":
            found.append(InstalledDeb(name=fields[1], version=fields[2], arch=fields[3]))
    return tuple(found)


# Prints {name: License-Expression} of every distribution in the venv that declares one.
_VENV_LICENSES = (
    "import importlib.metadata as m, json\n"
    "found = {d.metadata['Name']: d.metadata.get('License-Expression')\n"
    "         for d in m.distributions()}\n"
    "print(json.dumps({k: v for k, v in found.items() if k and v}, sort_keys=True))"
)
VENV_LICENSES = ["/opt/venv/bin/python", "-I", "-c", _VENV_LICENSES]


def parse_venv_licenses(output: str) -> dict[str, str]:
    """Normalised name → canonical SPDX expression, for the expressions that are valid SPDX
    and name only licenses on the SPDX list (a LicenseRef- would need its text too)."""
    import json

    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    lines = [line for line in output.splitlines() if line.startswith("{")]
    try:
        declared = json.loads(lines[-1]) if lines else {}
    except ValueError:
        declared = {}
    found: dict[str, str] = {}
    for name, expression in declared.items() if isinstance(declared, dict) else ():
        try:
            canonical = str(canonicalize_license_expression(str(expression)))
        except InvalidLicenseExpression:
            continue
        if "LicenseRef-" not in canonical and "DocumentRef-" not in canonical:
            found[pypi_name(str(name))] = canonical
    return found


# Prints "PACKAGE<TAB>LICENSE" for each machine-readable (DEP-5) copyright file: the
# license of its `Files: *` paragraph, the one that covers the package as a whole.
DEB_LICENSES = [
    "/bin/sh",
    "-c",
    "for f in /usr/share/doc/*/copyright; do "
    "p=${f#/usr/share/doc/}; p=${p%/copyright}; "
    'awk -v p="$p" \'NR == 1 && !/^Format:.*copyright-format/ { exit } '
    "/^Files:[ \\t]*\\*[ \\t]*$/ { main = 1; next } "
    'main && /^License:/ { sub(/^License:[ \\t]*/, ""); print p "\\t" $0; exit } '
    '/^[ \\t]*$/ { main = 0 }\' "$f"; done',
]

#: Debian's short license names (the copyright-format 1.0 specification's list) and the
#: SPDX identifiers they stand for; a name outside it is left unknown, never guessed.
_DEBIAN_TO_SPDX = {
    "apache-2.0": "Apache-2.0",
    "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "cc0-1.0": "CC0-1.0",
    "expat": "MIT",
    "mit": "MIT",
    "isc": "ISC",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "zlib": "Zlib",
    "python-2.0": "Python-2.0",
    "openssl": "OpenSSL",
    **{
        f"{family.lower()}-{version}{suffix}": f"{family}-{spdx_version}{spdx_suffix}"
        for family, versions in (
            ("GPL", ("1", "2", "3")),
            ("LGPL", ("2", "2.1", "3")),
            ("AGPL", ("3",)),
            ("GFDL", ("1.2", "1.3")),
        )
        for version in versions
        for spdx_version in (version if "." in version else version + ".0",)
        for suffix, spdx_suffix in (("", "-only"), ("+", "-or-later"))
    },
}


def debian_to_spdx(value: str) -> str | None:
    """A Debian copyright `License:` value as an SPDX expression, or None when any name in
    it is not one of Debian's short names with an SPDX identifier."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression

    words = value.replace("(", " ( ").replace(")", " ) ").replace(",", " ").split()
    if not words:
        return None
    out = []
    for word in words:
        if word.lower() in {"or", "and"}:
            out.append(word.upper())
        elif word in {"(", ")"}:
            out.append(word)
        elif word.lower() in _DEBIAN_TO_SPDX:
            out.append(_DEBIAN_TO_SPDX[word.lower()])
        else:
            return None
    try:
        return str(canonicalize_license_expression(" ".join(out)))
    except InvalidLicenseExpression:
        return None


def parse_deb_licenses(output: str) -> dict[str, str]:
    """Package name -> SPDX expression, from `DEB_LICENSES`' output."""
    found: dict[str, str] = {}
    for line in output.splitlines():
        name, tab, value = line.partition("\t")
        expression = debian_to_spdx(value.strip()) if tab else None
        if expression and re.fullmatch(r"[a-z0-9][a-z0-9+.-]*", name):
            found[name] = expression
    return found
