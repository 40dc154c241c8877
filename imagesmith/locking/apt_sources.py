"""The lab's own apt sources and mirror, as the probe inside the base gives them to apt.

Each `[[apt.sources]]` entry becomes a deb822 file with `Signed-By` naming its key alone
(the binary form of the spec's key file): apt's gpgv checks every Release against that
key, and there is no `trusted=yes`. `[apt] mirror` replaces deb.debian.org in the base's
own sources. An https:// source or mirror is checked against the CA certificates the host
trusts (a base image rarely has any; the host's are what its own downloads of the .debs
trust). What apt says about them on `apt-get update` is turned into one line per
problem: a signature the key does not make or a suite that is not there is the spec's
fault (exit 2); a source that cannot be reached is the network's (exit 1).
"""

from __future__ import annotations

import base64
import os
import re
import ssl
from collections.abc import Sequence
from pathlib import Path

from imagesmith.errors import ImagesmithError, OperationError, ResolveError
from imagesmith.model.lock import AptSourceLock
from imagesmith.model.openpgp import KeyFileError, PublicKey, read_key
from imagesmith.model.reference import is_loopback_url
from imagesmith.model.spec import AptSource, Spec

_DEBIAN = r"https?://deb\.debian\.org/debian"
_SIGNATURE = (
    "NO_PUBKEY",
    "is not signed",
    "BADSIG",
    "EXPKEYSIG",
    "REVKEYSIG",
    "couldn't be verified",
    "signature",
    "Signed-By",
)
_RELEASE_FILES = ("InRelease", "Release", "Release.gpg")
_NOT_THERE = ("does not have a Release file", "404", "Not Found")
_UNREACHABLE = (
    "Could not connect",
    "Could not resolve",
    "Connection failed",
    "Connection refused",
    "timed out",
    "Temporary failure",
    "Unable to connect",
    "No route to host",
    "Failed to fetch",
)


class SourceUnreachable(OperationError):
    """An apt source or mirror did not answer: the network's problem, not the spec's."""


def _key(spec: Spec, source: AptSource) -> PublicKey:
    from imagesmith.model.spec_checks import key_problem

    problem = key_problem(spec.folder, source.key)  # None when it reads as a key
    if problem is None:
        try:
            return read_key(spec.folder / source.key)
        except (OSError, KeyFileError) as exc:  # changed in between
            problem = f"{source.key}: {exc}"
    raise ResolveError(f"apt source {source.url}: key {problem}")


def source_locks(spec: Spec) -> tuple[AptSourceLock, ...]:
    """The spec's apt sources with their keys' fingerprints, as the lock pins them."""
    return tuple(
        AptSourceLock(
            url=source.url,
            suites=source.suites,
            components=source.components,
            key=source.key,
            fingerprints=_key(spec, source).fingerprints,
        )
        for source in spec.apt_sources
    )


def needs_host_network(spec: Spec) -> bool:
    """Whether a source or the mirror is on the host's loopback (a container reaches it
    only from the host's network namespace)."""
    urls = [spec.apt_mirror or "", *(source.url for source in spec.apt_sources)]
    return any(is_loopback_url(url) for url in urls if url)


def probe_setup(spec: Spec) -> tuple[str, dict[str, str]]:
    """(shell lines that add the spec's sources and mirror inside the base, the variables
    they read). The keys travel as base64 in the environment, not in the script."""
    lines: list[str] = []
    env: dict[str, str] = {}
    if spec.apt_mirror:
        env["IMAGESMITH_MIRROR"] = spec.apt_mirror
        lines.append(
            "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list "
            "/etc/apt/sources.list.d/*.sources; do\n"
            f'  [ -f "$f" ] && sed -i -E "s#{_DEBIAN}/?( |$)#$IMAGESMITH_MIRROR\\1#" "$f"\n'
            "done\n"
            # Sources that never named deb.debian.org (an Ubuntu base): nothing replaced.
            'grep -qsF "$IMAGESMITH_MIRROR" /etc/apt/sources.list /etc/apt/sources.list.d/* '
            "|| echo '@@MIRROR unused'"
        )
    urls = [spec.apt_mirror or "", *(source.url for source in spec.apt_sources)]
    if any(url.startswith("https://") for url in urls):
        lines.extend(_ca_setup(env))
    if spec.apt_sources:
        lines.append("mkdir -p /etc/apt/keyrings")
    for index, source in enumerate(spec.apt_sources):
        keyring = f"/etc/apt/keyrings/imagesmith-{index}.gpg"
        env[f"IMAGESMITH_KEY_{index}"] = base64.b64encode(_key(spec, source).binary).decode()
        stanza = [
            "Types: deb",
            f"URIs: {source.url}",
            f"Suites: {' '.join(source.suites)}",
            *([f"Components: {' '.join(source.components)}"] if source.components else []),
            f"Signed-By: {keyring}",
        ]
        lines.append(f'printf %s "$IMAGESMITH_KEY_{index}" | base64 -d > {keyring}')
        lines.append(
            "printf '%s\\n' "
            + " ".join(f"'{line}'" for line in stanza)
            + f" > /etc/apt/sources.list.d/imagesmith-{index}.sources"
        )
    return "\n".join(lines), env


#: Where the probe's apt finds the host's CA certificates.
CA_FILE = "/etc/apt/imagesmith-ca.pem"
#: Characters per variable: one argument of a command line (podman's --env) holds 128 KiB.
_CA_CHUNK = 64 * 1024


def _ca_setup(env: dict[str, str]) -> list[str]:
    """Shell lines that give apt the host's CA certificates for https:// (none when the host
    has none to give); the certificates travel as base64 in `env`, in pieces."""
    bundle = host_ca_bundle()
    if not bundle:
        return []
    text = base64.b64encode(bundle).decode()
    names = []
    for index in range(0, len(text), _CA_CHUNK):
        name = f"IMAGESMITH_CA_{index // _CA_CHUNK}"
        env[name] = text[index : index + _CA_CHUNK]
        names.append(f'"${name}"')
    return [
        f"printf %s {' '.join(names)} | base64 -d > {CA_FILE}",
        f"echo 'Acquire::https::CAInfo \"{CA_FILE}\";' > /etc/apt/apt.conf.d/99imagesmith-ca",
    ]


def host_ca_bundle() -> bytes:
    """The CA certificates (PEM) this host's own HTTPS trusts, as Python's ``ssl`` finds
    them: SSL_CERT_FILE, else OpenSSL's default file, else the certificates in its
    default folder (SSL_CERT_DIR). Empty when there are none."""
    paths = ssl.get_default_verify_paths()
    for file in (paths.cafile, paths.openssl_cafile):
        if file and os.path.isfile(file):
            try:
                return Path(file).read_bytes()
            except OSError:
                continue
    folder = paths.capath or paths.openssl_capath
    pems: list[bytes] = []
    if folder and os.path.isdir(folder):
        for entry in sorted(Path(folder).iterdir()):
            try:
                data = entry.read_bytes() if entry.is_file() else b""
            except OSError:
                continue
            if b"-----BEGIN CERTIFICATE-----" in data:
                pems.append(data.rstrip(b"\n") + b"\n")
    return b"".join(pems)


def update_problems(spec: Spec, messages: Sequence[str]) -> ImagesmithError | None:
    """What `apt-get update` said about the spec's sources and mirror, as one error with a
    line per problem (None when it said nothing about them)."""
    named: list[tuple[str, AptSource | None]] = [(s.url, s) for s in spec.apt_sources]
    if spec.apt_mirror:
        named.append((spec.apt_mirror, None))
    # The longest URL first: http://host/lab/extra is not http://host/lab.
    named.sort(key=lambda item: len(item[0]), reverse=True)
    spec_lines: dict[str, str] = {}
    network_lines: dict[str, str] = {}
    for message in messages:
        text = message.strip()
        match = next(((url, s) for url, s in named if _mentions(text, url)), None)
        if match is None:
            continue
        url, source = match
        what = f"apt source {url}" if source is not None else f"apt mirror {url}"
        detail = _detail(text)
        index = missing_index(text)
        if index is not None:
            network_lines.setdefault(
                url,
                f"{what}: its signed Release lists {index.removeprefix(url)} but the server "
                f"does not have it (a mirror being updated? try again later); apt says: {detail}",
            )
        elif " is expired (invalid since " in text:
            network_lines.setdefault(
                url,
                f"{what}: its signed Release has expired (its Valid-Until is past), and apt "
                "refuses an expired Release: the archive must publish a newly signed one (a "
                f"stale mirror?); apt says: {detail}",
            )
        elif " is not valid yet (invalid for another " in text:
            network_lines.setdefault(
                url,
                f"{what}: its signed Release is dated in the future, and apt refuses it: this "
                f"machine's clock is behind, or the archive's ahead; apt says: {detail}",
            )
        elif "Certificate verification failed" in text:
            network_lines.setdefault(
                url,
                f"{what}: this host does not trust its HTTPS certificate (apt is given the "
                "CA certificates the host trusts: add its CA to them, or name a bundle with "
                f"SSL_CERT_FILE); apt says: {detail}",
            )
        elif source is not None and any(word in text for word in _SIGNATURE):
            fingerprints = ", ".join(_key(spec, source).fingerprints)
            spec_lines.setdefault(
                url,
                f"{what}: its Release is not signed by the key in {source.key} "
                f"({fingerprints}); apt says: {detail}",
            )
        elif any(word in text for word in _NOT_THERE) and "Could not" not in text:
            spec_lines.setdefault(
                url,
                f"{what}: no such suite or component there (check url, suites and "
                f"components); apt says: {detail}",
            )
        elif any(word in text for word in _UNREACHABLE):
            network_lines.setdefault(url, f"{what}: cannot reach it; apt says: {detail}")
    if spec_lines:
        return ResolveError("\n".join(spec_lines.values()))
    if network_lines:
        return SourceUnreachable("\n".join(network_lines.values()))
    return None


def missing_index(text: str) -> str | None:
    """The URL in an `apt-get update` message saying that an index (Packages, Sources,
    Translation...) under dists/ is not there (404). apt asks only for the indexes the
    Release it has just checked lists, so the archive is half-updated: a mirror in the
    middle of a sync, which a later try usually finds whole. None for anything else,
    such as a Release that is not there (a suite that does not exist)."""
    match = re.search(r"Failed to fetch (\S+)\s+404\b", text)
    if match is None:
        return None
    url = match.group(1)
    _, found, rest = url.partition("/dists/")
    if not found or "/" not in rest or rest.rsplit("/", 1)[1] in _RELEASE_FILES:
        return None
    return url


def _mentions(text: str, url: str) -> bool:
    return re.search(re.escape(url) + r"(?=[/ '\"]|$)", text) is not None


def _detail(text: str) -> str:
    """apt's message without its "W: "/"E: " prefix, on one line."""
    return " ".join(re.sub(r"^[WE]: ", "", text).split())[:400]
