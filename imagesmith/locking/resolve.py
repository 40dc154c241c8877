"""Spec -> Lock: pin the base image, the apt closure and every Python distribution.

Resolution is skipped whenever the inputs it reads (base, apt, python, platform) are
unchanged since the previous lock: then only the spec part of the lock is refreshed,
with no network and no containers.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote

from imagesmith import __version__
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError, RegistryError, ResolveError
from imagesmith.inputs.tool_wheel import tool_digest
from imagesmith.locking.apt_sources import (
    needs_host_network,
    probe_setup,
    source_locks,
    update_problems,
)
from imagesmith.model.labels import BASE_ROOTFS, LOCK_HASH
from imagesmith.model.lock import (
    LOCK_FORMAT,
    AptLock,
    AptPackage,
    BaseImageLock,
    Lock,
    PythonLock,
    PythonPackage,
    content_hash,
    copy_locks,
    environment_epoch,
)
from imagesmith.model.reference import parse_reference
from imagesmith.model.spec import Spec
from imagesmith.progress import LineCallback

_ARCH_TO_WHEEL = {"amd64": "x86_64", "arm64": "aarch64"}
DAY = 86400


def inputs_hash(spec: Spec, platform: str) -> str:
    """Hash of exactly what resolution reads: unchanged means the pins still hold."""
    python = spec.python
    # The mirror and the lab's sources only when there are some: locks without them keep
    # the hash earlier versions gave them.
    sources = {
        key: value
        for key, value in (
            ("apt_mirror", spec.apt_mirror),
            ("apt_sources", [source.content() for source in source_locks(spec)]),
        )
        if value
    }
    return content_hash(
        {
            **sources,
            "base": spec.base_image,
            "apt": list(spec.apt_packages),
            "snapshot": spec.apt_snapshot,
            "python": None
            if python is None
            else {
                "requirements": list(python.requirements),
                "index_url": python.index_url,
                "extra_index_urls": list(python.extra_index_urls),
            },
            "platform": platform,
        }
    )


def source_date_epoch(spec: Spec, previous: Lock | None) -> int:
    """SOURCE_DATE_EPOCH for a new lock: the environment's, the snapshot's, or today 00:00 UTC."""
    from_environment = environment_epoch()
    if from_environment is not None:
        return from_environment
    if previous is not None:
        return previous.source_date_epoch
    if spec.apt_snapshot:
        return int(time.mktime(time.strptime(spec.apt_snapshot, "%Y%m%dT%H%M%SZ")) - time.timezone)
    return int(time.time()) // DAY * DAY


def lock_spec(
    spec: Spec,
    *,
    engine: Callable[[], Engine],
    platform: str = "linux/amd64",
    previous: Lock | None = None,
    upgrade: bool = False,
    upgrade_packages: Sequence[str] = (),
    on_line: LineCallback | None = None,
) -> Lock:
    """The lock for `spec`; `engine` is called only when something must be resolved."""
    say = on_line or (lambda _: None)
    inputs = inputs_hash(spec, platform)
    refresh = upgrade or bool(upgrade_packages)
    # A lock written before locks said where each .deb lives: the build cannot fetch them.
    fetchable = previous is None or all(p.fetchable for p in previous.apt.packages)
    if not fetchable:
        say("apt: the previous lock does not say where its .debs live; resolving again")
    if previous is not None and previous.inputs_hash == inputs and not refresh and fetchable:
        moved = previous.format != LOCK_FORMAT
        return replace(
            previous,
            # The same pins in this version's format (a new digest); an unchanged lock
            # keeps the version that wrote it, so its bytes and digest stay the same.
            format=LOCK_FORMAT,
            imagesmith_version=__version__ if moved else previous.imagesmith_version,
            imagesmith_wheel=tool_digest() if moved else previous.imagesmith_wheel,
            python=_with_file_lines(previous.python, spec) if moved else previous.python,
            spec_hash=spec.spec_hash,
            spec_data=spec.image_data,
            spec_path=spec.path,
            copy=copy_locks(spec),
            source_date_epoch=source_date_epoch(spec, previous),
        )
    keep = (
        previous
        if previous is not None and fetchable and _system_unchanged(previous, spec, platform)
        else None
    )
    if keep is not None and not upgrade:
        # Only Python inputs changed: keep the base and the apt closure exactly as pinned, so
        # the build's apt layer stays cached even if Debian published updates meanwhile.
        base, apt = keep.base, keep.apt
        python_version, wheel_platform = _python_target(keep)
    else:
        the_engine = engine()
        # A lock from before .deb paths were recorded, inputs unchanged: the same base and
        # the same versions, now with where each .deb lives.
        moving = previous is not None and previous.inputs_hash == inputs and not refresh
        if moving and previous is not None:
            base, prefer = previous.base, previous.apt.packages
        else:
            say(f"base: resolving {spec.base_image}")
            base, prefer = resolve_base(spec.base_image, the_engine, platform), ()
        probe = probe_base(the_engine, base, spec, platform, say, prefer=prefer)
        apt = AptLock(
            suite=probe.suite,
            snapshot=spec.apt_snapshot,
            packages=probe.apt_closure,
            sources=source_locks(spec),
        )
        python_version, wheel_platform = probe.python_version, probe.wheel_platform
    python = None
    if spec.python is not None:
        say(
            f"python: resolving {len(spec.python.requirements)} requirements "
            f"for Python {python_version}"
        )
        python = resolve_python(
            spec,
            python_version=python_version,
            wheel_platform=wheel_platform,
            previous=previous.python if previous and not upgrade else None,
            upgrade_packages=upgrade_packages,
        )
    python = _with_file_lines(python, spec)
    if python is not None:
        for package in python.packages:
            if package.sdist_only:
                say(
                    f"warning: python: {package.name} {package.version} has no wheel for "
                    f"{python.platform}; the build will refuse it (pin a version with wheels)"
                )
    return Lock(
        imagesmith_wheel=tool_digest(),
        spec_hash=spec.spec_hash,
        inputs_hash=inputs,
        platform=platform,
        source_date_epoch=source_date_epoch(spec, previous if not refresh else None),
        spec_data=spec.image_data,
        spec_path=spec.path,
        base=base,
        apt=apt,
        python=python,
        copy=copy_locks(spec),
    )


def _with_file_lines(python: PythonLock | None, spec: Spec) -> PythonLock | None:
    """`python` carrying the lines of the spec's requirements_file (the image then holds
    all a rebuild needs, with no file beside the spec)."""
    if python is None or spec.python is None:
        return python
    return replace(python, requirements_file_lines=spec.python.file_requirements)


def _system_unchanged(previous: Lock, spec: Spec, platform: str) -> bool:
    """Whether what the base and apt pins were resolved from is the same in `spec`."""
    old = previous.spec_data
    had_python, has_python = "python" in old, spec.python is not None
    return (
        previous.platform == platform
        and old.get("base", {}).get("image") == spec.base_image
        and list(old.get("apt", {}).get("packages", [])) == list(spec.apt_packages)
        and old.get("apt", {}).get("snapshot") == spec.apt_snapshot
        and old.get("apt", {}).get("mirror", "").rstrip("/") == (spec.apt_mirror or "")
        and previous.apt.sources == source_locks(spec)
        # A [python] table brings Debian's python3 and python3-venv into the closure.
        and had_python == has_python
        and (previous.python is not None or not has_python)
    )


def _python_target(lock: Lock) -> tuple[str, str]:
    """(interpreter version, wheel platform) the lock resolved for; empty without Python."""
    if lock.python is None:
        return "", ""
    return lock.python.version, lock.python.platform


def resolve_base(text: str, engine: Engine, platform: str) -> BaseImageLock:
    """The digest a `FROM` pins: the registry's when known, the local image ID otherwise."""
    ref = parse_reference(text)
    if ref.digest:
        return BaseImageLock(reference=text, repository=ref.familiar_repository, digest=ref.digest)
    if engine.image_exists(text):
        info = engine.inspect_image(text)
        # A base `imagesmith base` made (its labels, and no image built on it) is pinned
        # by its ID even under a public name (`debian:bookworm`): podman lists a digest
        # of its own for every name an image has, which no registry serves; the input
        # archive carries such a base to other machines.
        made_here = BASE_ROOTFS in info.labels and LOCK_HASH not in info.labels
        for repo_digest in () if made_here else info.repo_digests:
            name, _, digest = repo_digest.partition("@")
            if parse_reference(name).repository == ref.repository and digest:
                return BaseImageLock(
                    reference=text, repository=ref.familiar_repository, digest=digest
                )
        # Made here (imagesmith base, docker import) and never pushed: only its ID pins it.
        return BaseImageLock(
            reference=text, repository=ref.familiar_repository, digest=info.id, local=True
        )
    from imagesmith.registry.client import platform_digest  # urllib and http: only when needed

    try:
        digest, index = platform_digest(ref, platform)
    except RegistryError as exc:
        if not str(exc).startswith("cannot reach"):
            raise
        raise RegistryError(
            f"{exc}; {text} is not in the engine's store either. Offline or air-gapped? "
            "Make a Debian base with `imagesmith base` and set base.image to it"
        ) from None
    return BaseImageLock(
        reference=text, repository=ref.familiar_repository, digest=digest, index_digest=index
    )


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
_URI = re.compile(r"^@@URI '(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})$")


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
    first = _run_probe(engine, ref, spec, [])
    packages = list(spec.apt_packages)
    if spec.python is not None and "VENV" not in first:
        # No usable Python in the base: Debian's own, with venv, comes in by itself. (The
        # venv is made without pip, but python3-venv stays: what it pulls in, such as
        # ca-certificates, is what images built so far had, and what HTTPS inside needs.)
        packages += [p for p in ("python3", "python3-venv") if p not in packages]
    say(f"apt: resolving the closure of {len(packages)} packages inside {ref[:40]}...")
    probe = first
    if prefer and packages:
        pins = {p.name: p.version for p in prefer}
        wanted = [f"{n}={v}" for n, v in sorted(pins.items())]
        wanted += [p for p in packages if p.split("=")[0].split(":")[0] not in pins]
        try:
            probe = _run_probe(engine, ref, spec, wanted)
        except ResolveError as exc:
            say(f"apt: the previous pins cannot all be installed any more ({exc}); resolving")
            prefer = ()
    if packages and not prefer:
        probe = _run_probe(engine, ref, spec, packages)
    requested = {p.split("=")[0].split(":")[0] for p in packages}
    sha: dict[tuple[str, str], str] = {}
    filenames: dict[str, str] = {}
    for name, version, digest, filename in probe.get("SHA", []):
        sha.setdefault((name, version), digest)
        filenames.setdefault(digest, filename)
    # apt's own choice of download (print-uris), by the file name it gives each .deb.
    downloads: dict[str, tuple[str | None, str | None, str | None, int]] = {
        file: (digest, *_download(unquote(url), filenames.get(digest)), int(size))
        for url, file, size, digest in probe.get("URI", [])
    }
    closure = []
    for name, version, arch in probe.get("INST", []):
        file = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
        sha256, source, path, size = downloads.get(file, (sha.get((name, version)), None, None, 0))
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
    python_version = _python_version(first, closure)
    arch = platform.split("/")[1]
    glibc = (first.get("GLIBC") or [("2.17",)])[0][0] or "2.17"
    wheel_platform = f"{_ARCH_TO_WHEEL.get(arch, arch)}-manylinux_{glibc.replace('.', '_')}"
    suite = first["SUITE"][0][0]
    return BaseProbe(
        suite=suite,
        apt_closure=tuple(sorted(closure, key=lambda p: p.name)),
        python_version=python_version,
        wheel_platform=wheel_platform,
    )


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


def _python_version(first: dict[str, list[tuple[str, ...]]], closure: list[AptPackage]) -> str:
    if "PY" in first:
        return first["PY"][0][0]
    for package in closure:
        match = re.match(r"^python3\.(\d+)$", package.name)
        if match:
            return f"3.{match.group(1)}"
    return "3.11"


def _run_probe(
    engine: Engine, ref: str, spec: Spec, packages: Sequence[str]
) -> dict[str, list[tuple[str, ...]]]:
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
    found: dict[str, list[tuple[str, ...]]] = {}
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
        if line.startswith("@@") and " " in line:
            key, _, value = line[2:].partition(" ")
            found.setdefault(key, []).append((value.strip(),))
    # The spec's own sources and mirror first: apt may go on without an index it could
    # not fetch, and then only say that a package is missing.
    problem = update_problems(spec, errors + updates)
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


def uv_binary() -> str:
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return "uv"


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def resolve_python(
    spec: Spec,
    *,
    python_version: str,
    wheel_platform: str,
    previous: PythonLock | None = None,
    upgrade_packages: Sequence[str] = (),
) -> PythonLock:
    """Pin every distribution, transitive ones included, with hashes, for the image's Python."""
    assert spec.python is not None
    python = spec.python
    lock = PythonLock(
        version=python_version,
        platform=wheel_platform,
        index_url=python.index_url,
        extra_index_urls=python.extra_index_urls,
    )
    if not python.requirements:
        return lock
    import tempfile

    with tempfile.TemporaryDirectory(prefix="imagesmith-uv-") as tmp:
        requirements = Path(tmp) / "requirements.in"
        requirements.write_text("\n".join(python.requirements) + "\n", encoding="utf-8")
        output = Path(tmp) / "requirements.txt"
        if previous is not None:
            # Existing pins are kept unless the spec no longer allows them (uv's preferences).
            output.write_text(previous.requirements_txt(), encoding="utf-8")
        command = [
            uv_binary(), "pip", "compile", str(requirements), "-o", str(output),
            "--python-version", python_version, "--python-platform", wheel_platform,
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet",
            "--no-config", "--emit-index-url",
        ]  # fmt: skip
        if python.index_url:
            command += ["--index-url", python.index_url]
        for url in python.extra_index_urls:
            command += ["--extra-index-url", url]
        for name in upgrade_packages:
            command += ["--upgrade-package", name]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise EngineError(f"cannot run uv ({exc}); reinstall imagesmith") from None
        if result.returncode != 0:
            raise ResolveError("python: " + _uv_reason(result.stderr))
        packages = _parse_pins(output.read_text(encoding="utf-8"))
        sdist_only = _sdist_only(command, output, [p.name for p in packages])
    if sdist_only:
        packages = tuple(replace(p, sdist_only=p.name in sdist_only) for p in packages)
    return replace(lock, packages=packages)


_NO_WHEELS = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ has no usable wheels")


def _sdist_only(command: list[str], pinned: Path, names: Sequence[str]) -> set[str]:
    """The pinned distributions that have no wheel for the target platform.

    Resolves again, preferring the pins just made, with every not-yet-flagged package
    restricted to wheels; each one uv reports as having "no usable wheels" is flagged,
    until the resolution succeeds (a build needs wheels: these need building first).
    """
    flagged: set[str] = set()
    while True:
        trial = pinned.with_name("wheels-only.txt")
        trial.write_text(pinned.read_text(encoding="utf-8"), encoding="utf-8")
        argv = list(command)
        argv[argv.index("-o") + 1] = str(trial)
        for name in names:
            if name not in flagged:
                argv += ["--only-binary", name]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        found = {_normalize(m) for m in _NO_WHEELS.findall(result.stderr)} - flagged
        if result.returncode == 0 or not found:
            return flagged
        flagged |= found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _uv_reason(stderr: str) -> str:
    lines = [line.strip(" ╰─▶×│").strip() for line in stderr.splitlines() if line.strip()]
    because = [line for line in lines if line.startswith(("Because", "And because"))]
    chosen = because[-2:] if because else lines[-2:]
    return " ".join(chosen) or "the requirements cannot be resolved"


def _parse_pins(text: str) -> tuple[PythonPackage, ...]:
    packages: list[PythonPackage] = []
    joined = text.replace("\\\n", " ")
    for line in joined.splitlines():
        match = _PIN.match(line.strip())
        if not match:
            continue
        hashes = tuple(sorted(_HASH.findall(line)))
        name = _normalize(match.group(1))
        packages.append(PythonPackage(name=name, version=match.group(2), hashes=hashes))
    return tuple(sorted(packages, key=lambda p: p.name))
