"""The base image asked itself: its Debian suite, its Python and glibc (the wheel
platform), and the closure apt inside it would install for the spec, with the spec's own
signed sources and mirror, each .deb with its sha256 and where the archive keeps it."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import unquote

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, ResolveError
from imagesmith.locking.apt_sources import (
    SourceUnreachable,
    missing_index,
    needs_host_network,
    probe_setup,
    update_problems,
)
from imagesmith.model.lock import AptPackage, BaseImageLock
from imagesmith.model.spec import Spec
from imagesmith.progress import LineCallback

_ARCH_TO_WHEEL = {"amd64": "x86_64", "arm64": "aarch64"}

#: What one probe printed, by its marker: "INST", "SHA", "URI", "SUITE", "PY" ...
ProbeOutput = dict[str, list[tuple[str, ...]]]


@dataclass(frozen=True)
class BaseProbe:
    suite: str
    apt_closure: tuple[AptPackage, ...]
    python_version: str
    wheel_platform: str


_PROBE = r"""
set -e
. /etc/os-release
echo "@@SUITE ${VERSION_CODENAME:-unknown}"
echo "@@ARCH $(dpkg --print-architecture)"
echo "@@GLIBC $(getconf GNU_LIBC_VERSION 2>/dev/null | cut -d' ' -f2)"
if command -v python3 >/dev/null 2>&1; then
  python3 -c 'import sys; print("@@PY %d.%d" % sys.version_info[:2])'
  if python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then echo "@@VENV yes"; fi
fi
@@SNAPSHOT@@
@@SOURCES@@
if [ -n "$PKGS" ]; then
  apt-get update -qq >/dev/null 2>/tmp/update.err || { sed 's/^/@@ERR /' /tmp/update.err; exit 3; }
  sed 's/^/@@UPD /' /tmp/update.err
  apt-get install -s --no-install-recommends $PKGS >/tmp/sim.out 2>/tmp/sim.err \
    || { sed 's/^/@@ERR /' /tmp/sim.err; exit 4; }
  grep '^Inst ' /tmp/sim.out | sed 's/^/@@ /'
  # "Inst NAME [INSTALLED] (VERSION ...": the version apt will install, not the one there.
  grep '^Inst ' /tmp/sim.out | awk '{v = $3; if (v ~ /^\[/) v = $4; print $2 "=" substr(v, 2)}' \
    > /tmp/pins
  if [ -s /tmp/pins ]; then
    apt-cache show $(cat /tmp/pins) 2>/dev/null \
      | awk '/^Package:/{p=$2; f="-"} /^Version:/{v=$2} /^Filename:/{f=$2}
             /^SHA256:/{print "@@SHA", p, v, $2, f}'
    apt-get download --print-uris $(cat /tmp/pins) 2>/dev/null | sed 's/^/@@URI /'
  fi
fi
"""
_INST = re.compile(r"^@@ Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)")
_SHA = re.compile(r"^@@SHA (\S+) (\S+) ([0-9a-f]{64}) (\S+)$")
# apt prints the strongest hash the index has: SHA256 on Debian, SHA512 on Ubuntu.
_URI = re.compile(r"^@@URI '(\S+)' (\S+) (\d+) (?:SHA256:([0-9a-f]{64})|\S+)$")


def _snapshot_script(snapshot: str | None) -> str:
    if not snapshot:
        return ""
    archive = "http://snapshot.debian.org/archive"
    return (
        "rm -f /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list\n"
        f"printf 'deb [check-valid-until=no] {archive}/debian/{snapshot} %s main\\n"
        f"deb [check-valid-until=no] {archive}/debian/{snapshot} %s-updates main\\n"
        f"deb [check-valid-until=no] {archive}/debian-security/{snapshot} %s-security main\\n' "
        '"$VERSION_CODENAME" "$VERSION_CODENAME" "$VERSION_CODENAME" > /etc/apt/sources.list'
    )


def probe_base(
    engine: Engine,
    base: BaseImageLock,
    spec: Spec,
    platform: str,
    say: LineCallback,
    *,
    prefer: Sequence[AptPackage] = (),
) -> BaseProbe:
    """Ask the pinned base itself what apt would install and which Python it has.

    `prefer`: a previous closure to keep, version for version, where the archive still
    has it (a lock moved to this format); resolved afresh when it cannot be installed."""
    ref = base.digest if base.local else base.pinned
    if not base.local and not engine.image_exists(ref):
        say(f"base: pulling {ref}")
        engine.pull(ref)
    first = _run_probe(engine, ref, spec, [], say)
    packages = list(spec.apt_packages)
    if spec.python is not None and "VENV" not in first:
        # No usable Python in the base: Debian's own, with venv, comes in by itself. (The
        # venv is made without pip, but python3-venv stays: what it pulls in, such as
        # ca-certificates, is what images built so far had, and what HTTPS inside needs.)
        packages += [p for p in ("python3", "python3-venv") if p not in packages]
    say(f"apt: resolving the closure of {len(packages)} packages inside {ref[:40]}...")
    installed = _probe_closure(engine, ref, spec, packages, prefer, say)
    closure = _closure(first if installed is None else installed, packages)
    arch = platform.split("/")[1]
    glibc = (first.get("GLIBC") or [("2.17",)])[0][0] or "2.17"
    wheel_platform = f"{_ARCH_TO_WHEEL.get(arch, arch)}-manylinux_{glibc.replace('.', '_')}"
    return BaseProbe(
        suite=first["SUITE"][0][0],
        apt_closure=tuple(sorted(closure, key=lambda p: p.name)),
        python_version=_python_version(first, closure),
        wheel_platform=wheel_platform,
    )


def _probe_closure(
    engine: Engine,
    ref: str,
    spec: Spec,
    packages: Sequence[str],
    prefer: Sequence[AptPackage],
    say: LineCallback,
) -> ProbeOutput | None:
    """The probe that simulated installing `packages` (None when there are none): with
    the versions `prefer` pins where apt can still install them all, afresh otherwise."""
    if not packages:
        return None
    if prefer:
        pins = {p.name: p.version for p in prefer}
        wanted = [f"{n}={v}" for n, v in sorted(pins.items())]
        wanted += [p for p in packages if p.split("=")[0].split(":")[0] not in pins]
        try:
            return _run_probe(engine, ref, spec, wanted, say)
        except ResolveError as exc:
            say(f"apt: the previous pins cannot all be installed any more ({exc}); resolving")
    return _run_probe(engine, ref, spec, packages, say)


def _closure(probe: ProbeOutput, packages: Sequence[str]) -> list[AptPackage]:
    """Each package apt would install, with its sha256 and where the archive keeps it."""
    requested = {p.split("=")[0].split(":")[0] for p in packages}
    sha: dict[tuple[str, str], str] = {}
    filenames: dict[str, str] = {}
    for name, version, digest, filename in probe.get("SHA", []):
        sha.setdefault((name, version), digest)
        filenames.setdefault(digest, filename)
    # apt's own choice of download (print-uris), by the file name it gives each .deb; its
    # sha256 when apt printed that hash, else the index's (apt-cache show).
    downloads = {
        file: (unquote(url), digest, int(size)) for url, file, size, digest in probe.get("URI", [])
    }
    closure = []
    for name, version, arch in probe.get("INST", []):
        file = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
        url, printed, size = downloads.get(file, (None, None, 0))
        sha256 = printed or sha.get((name, version))
        source, path = _download(url, filenames.get(sha256 or "")) if url else (None, None)
        closure.append(
            AptPackage(
                name=name,
                version=version,
                arch=arch,
                sha256=sha256,
                requested=name in requested,
                path=path,
                size=size if path else None,
                source=source,
            )
        )
    incomplete = [f"{p.name}={p.version}" for p in closure if not p.fetchable]
    if incomplete:
        raise ResolveError(
            "apt: the base's apt does not say where to fetch "
            + ", ".join(incomplete)
            + " (no archive path or sha256 in its index)"
        )
    return closure


def _download(url: str, filename: str | None) -> tuple[str, str]:
    """(archive root, path in it) of one .deb URL that apt printed."""
    if filename:  # a flat repository's index may say ./NAME.deb
        filename = filename.removeprefix("./")
        url = url.replace("/./", "/")
    if filename and filename != "-" and url.endswith("/" + filename):
        return url[: -len(filename) - 1], filename
    # No index record for it: Debian-style archives keep every .deb under pool/.
    root, sep, rest = url.partition("/pool/")
    if not sep:
        raise ResolveError(f"apt: cannot tell the archive root of {url}")
    return root, "pool/" + rest


def _python_version(first: ProbeOutput, closure: list[AptPackage]) -> str:
    if "PY" in first:
        return first["PY"][0][0]
    for package in closure:
        match = re.match(r"^python3\.(\d+)$", package.name)
        if match:
            return f"3.{match.group(1)}"
    return "3.11"


#: Pauses before the probe runs again when an archive lacks an index its Release lists.
_SYNC_PAUSES = (2.0, 6.0)


def _run_probe(
    engine: Engine, ref: str, spec: Spec, packages: Sequence[str], say: LineCallback
) -> ProbeOutput:
    """The probe's findings; run again, after a pause, while an archive is caught between
    its Release and its indexes (a mirror being updated)."""
    for pause in _SYNC_PAUSES:
        try:
            return _probe_once(engine, ref, spec, packages)
        except _HalfUpdated as exc:
            say(
                f"apt: {exc.url} is not there although its Release lists it (a mirror being "
                f"updated?); trying again in {pause:g} s"
            )
            time.sleep(pause)
    try:
        return _probe_once(engine, ref, spec, packages)
    except _HalfUpdated as exc:
        raise exc.problem from None


class _HalfUpdated(Exception):
    """An index under dists/ answered 404 although the Release apt checked lists it."""

    def __init__(self, url: str, problem: Exception) -> None:
        super().__init__(url)
        self.url = url
        self.problem = problem


def _probe_once(engine: Engine, ref: str, spec: Spec, packages: Sequence[str]) -> ProbeOutput:
    sources, env = probe_setup(spec)
    script = _PROBE.replace("@@SNAPSHOT@@", _snapshot_script(spec.apt_snapshot)).replace(
        "@@SOURCES@@", sources
    )
    result = engine.run(
        ref,
        ["/bin/sh", "-c", script],
        env={"PKGS": " ".join(packages), **env},
        user="0",
        host_network=needs_host_network(spec),
    )
    found: ProbeOutput = {}
    errors: list[str] = []
    updates: list[str] = []
    for line in result.output.splitlines():
        if line.startswith("@@ERR "):
            errors.append(line[6:])
            continue
        if line.startswith("@@UPD "):
            updates.append(line[6:])
            continue
        inst = _INST.match(line)
        if inst:
            found.setdefault("INST", []).append(inst.groups())
            continue
        sha = _SHA.match(line)
        if sha:
            found.setdefault("SHA", []).append(sha.groups())
            continue
        uri = _URI.match(line)
        if uri:
            found.setdefault("URI", []).append(uri.groups())
            continue
        if line.startswith("@@") and " " in line and not line.startswith(("@@URI ", "@@SHA ")):
            key, _, value = line[2:].partition(" ")
            found.setdefault(key, []).append((value.strip(),))
    if "MIRROR" in found:
        raise ResolveError(
            f"[apt] mirror {spec.apt_mirror}: the base's apt sources do not use "
            "deb.debian.org/debian, the archive a mirror replaces (an Ubuntu base, or one "
            "with sources of its own): drop mirror, or add the archive as [[apt.sources]]"
        )
    # The spec's own sources and mirror first: apt may go on without an index it could
    # not fetch, and then only say that a package is missing.
    messages = errors + updates
    problem = update_problems(spec, messages)
    if isinstance(problem, ResolveError):  # the spec's fault: no second try mends it
        raise problem
    missing = next((url for url in map(missing_index, messages) if url), None)
    if missing is not None:
        # Debian's archive as well as the spec's sources: apt goes on without the index,
        # and the closure would lack its packages or pin other versions.
        raise _HalfUpdated(
            missing,
            problem
            or SourceUnreachable(
                f"apt: {missing} is not there although its Release lists it (a mirror "
                "being updated? try again later)"
            ),
        )
    if problem is not None:
        raise problem
    if result.exit_code != 0:
        raise _apt_error(result.exit_code, errors, result.output, bool(spec.apt_sources))
    return found


def _apt_error(code: int, errors: list[str], output: str, own_sources: bool) -> Exception:
    missing = []
    for line in errors:
        match = re.search(r"Unable to locate package (\S+)", line)
        match = match or re.search(r"Package '?([^' ]+)'? has no installation candidate", line)
        if match:
            missing.append(match.group(1))
            continue
        match = re.search(r"Version '([^']+)' for '([^']+)' was not found", line)
        if match:
            missing.append(f"{match.group(2)}={match.group(1)}")
    if missing:
        where = "Debian suite or the spec's [[apt.sources]]" if own_sources else "Debian suite"
        return ResolveError(f"apt: not available in the base image's {where}: {', '.join(missing)}")
    if code == 3:
        detail = next((e for e in errors if e.startswith(("E:", "W:"))), "see above")
        return EngineError(f"apt-get update failed inside the base image: {detail}")
    detail = " ".join(e for e in errors if e.startswith("E:")) or output.strip()[-300:]
    return ResolveError(f"apt cannot install the packages together: {detail}")
