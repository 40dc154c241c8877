"""Python by uv: every distribution the spec's requirements need, transitive ones
included, pinned with hashes for the image's interpreter and platform, and those that
have no wheel for it flagged (a build needs wheels)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from imagesmith.errors import EngineError, ResolveError
from imagesmith.model.lock import PythonLock, PythonPackage
from imagesmith.model.spec import Spec, normalize_name


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
            # An interpreter for uv itself (sdists' metadata): this one. Else uv looks for
            # one of the target's version on the host, seconds with pyenv's shims, for
            # nothing when the host has none (the target's is the image's).
            "--python", sys.executable,
        ]  # fmt: skip
        if python.index_url:
            command += ["--index-url", python.index_url]
        for url in python.extra_index_urls:
            command += ["--extra-index-url", url]
        for name in upgrade_packages:
            command += ["--upgrade-package", name]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            older = _known_platform(result.stderr, wheel_platform)
            if older is not None:
                command[command.index("--python-platform") + 1] = older
                result = subprocess.run(command, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise EngineError(f"cannot run uv ({exc}); reinstall imagesmith") from None
        if result.returncode != 0:
            raise ResolveError("python: " + _uv_reason(result.stderr))
        packages = _parse_pins(output.read_text(encoding="utf-8"))
        sdist_only = _sdist_only(command, output, [p.name for p in packages])
    if sdist_only:
        packages = tuple(replace(p, sdist_only=p.name in sdist_only) for p in packages)
    return replace(lock, packages=_allowed(packages, python.hashes))


_UV_PLATFORMS = re.compile(
    r"invalid value '([^']*)' for '--python-platform.*?\[possible values: ([^\]]*)\]", re.S
)
_MANYLINUX = re.compile(r"^(.+)-manylinux_2_(\d+)$")


def _known_platform(stderr: str, wheel_platform: str) -> str | None:
    """When this uv refused `wheel_platform` as too new a glibc for it (uv 0.13 knows
    manylinux_2_40 at most; Debian 13 has glibc 2.41), the newest of the platforms it
    knows below it: every wheel made for that runs on the image's glibc as well."""
    refused = _UV_PLATFORMS.search(stderr)
    wanted = _MANYLINUX.match(wheel_platform)
    if refused is None or wanted is None or refused.group(1) != wheel_platform:
        return None
    arch, newest = wanted.group(1), int(wanted.group(2))
    known = []
    for value in refused.group(2).split(","):
        match = _MANYLINUX.match(value.strip())
        if match and match.group(1) == arch and int(match.group(2)) <= newest:
            known.append((int(match.group(2)), value.strip()))
    return max(known)[1] if known else None


def _allowed(
    packages: tuple[PythonPackage, ...], allowed: Sequence[tuple[str, tuple[str, ...]]]
) -> tuple[PythonPackage, ...]:
    """`packages` with only the files requirements_file's ``--hash`` options allow for them
    (pip's hash-checking mode): the build downloads no other. One line for each package
    the index serves none of them for."""
    given: dict[str, set[str]] = {}
    for name, hashes in allowed:
        given[name] = given.get(name, set(hashes)) & set(hashes)  # pip: each line narrows
    problems = []
    kept = []
    for package in packages:
        if package.name in given:
            hashes = tuple(
                h for h in package.hashes if h.removeprefix("sha256:") in given[package.name]
            )
            if not hashes:
                problems.append(
                    f"python: {package.name} {package.version}: none of the files the index "
                    "serves for it has a sha256 that requirements_file's --hash options allow"
                )
            package = replace(package, hashes=hashes)
        kept.append(package)
    if problems:
        raise ResolveError("\n".join(problems))
    return tuple(kept)


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
        found = {normalize_name(m) for m in _NO_WHEELS.findall(result.stderr)} - flagged
        if result.returncode == 0 or not found:
            return flagged
        flagged |= found


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
        name = normalize_name(match.group(1))
        packages.append(PythonPackage(name=name, version=match.group(2), hashes=hashes))
    return tuple(sorted(packages, key=lambda p: p.name))
