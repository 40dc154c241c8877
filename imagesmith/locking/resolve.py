"""Spec -> Lock: pin the base image, the apt closure and every Python distribution.

The base's apt closure comes from `apt_probe`, the Python pins from `python_pins`.
Resolution is skipped whenever the inputs it reads (base, apt, python, platform) are
unchanged since the previous lock: then only the spec part of the lock is refreshed,
with no network and no containers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from imagesmith import __version__
from imagesmith.engine.base import Engine, ImageInfo
from imagesmith.errors import InputError, RegistryError
from imagesmith.inputs.tool_wheel import tool_digest
from imagesmith.locking.apt_probe import probe_base
from imagesmith.locking.apt_sources import source_locks
from imagesmith.locking.python_pins import resolve_python
from imagesmith.model.labels import BASE_ROOTFS, LOCK_HASH
from imagesmith.model.lock import (
    LOCK_FORMAT,
    AptLock,
    BaseImageLock,
    Lock,
    PythonLock,
    content_hash,
    copy_locks,
    environment_epoch,
)
from imagesmith.model.reference import ImageReference, parse_reference
from imagesmith.model.spec import Spec, normalize_name
from imagesmith.progress import LineCallback

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
                # Only when requirements_file gives --hash options, as the sources above.
                **({"hashes": [[n, list(h)] for n, h in python.hashes]} if python.hashes else {}),
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
        return _same_pins(previous, spec)
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
        # A lock from before .deb paths were recorded, inputs unchanged: the same base and
        # the same versions, now with where each .deb lives.
        moving = previous is not None and previous.inputs_hash == inputs and not refresh
        base, apt, python_version, wheel_platform = _system_pins(
            spec, engine(), platform, previous if moving else None, say
        )
    python = _python_pins(
        spec,
        python_version=python_version,
        wheel_platform=wheel_platform,
        previous=previous.python if previous and not upgrade else None,
        upgrade_packages=upgrade_packages,
        say=say,
    )
    _check_upgraded(upgrade_packages, python)
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


def _same_pins(previous: Lock, spec: Spec) -> Lock:
    """`previous`, its inputs unchanged, with the spec part of the lock refreshed."""
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


def _system_pins(
    spec: Spec, engine: Engine, platform: str, moving: Lock | None, say: LineCallback
) -> tuple[BaseImageLock, AptLock, str, str]:
    """(base, apt closure, Python version, wheel platform) resolved inside the base;
    `moving`, a lock whose inputs are unchanged, keeps its base and, where it can, its
    versions."""
    if moving is not None:
        base, prefer = moving.base, moving.apt.packages
    else:
        say(f"base: resolving {spec.base_image}")
        base, prefer = resolve_base(spec.base_image, engine, platform), ()
    probe = probe_base(engine, base, spec, platform, say, prefer=prefer)
    base = replace(base, user=base_user(engine.inspect_image(base.pinned).user))
    apt = AptLock(
        suite=probe.suite,
        snapshot=spec.apt_snapshot,
        packages=probe.apt_closure,
        sources=source_locks(spec),
    )
    return base, apt, probe.python_version, probe.wheel_platform


def _python_pins(
    spec: Spec,
    *,
    python_version: str,
    wheel_platform: str,
    previous: PythonLock | None,
    upgrade_packages: Sequence[str],
    say: LineCallback,
) -> PythonLock | None:
    """The spec's Python pinned (None without [python]), with a warning for each
    distribution that has no wheel for the image."""
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
            previous=previous,
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
    return python


def _check_upgraded(names: Sequence[str], python: PythonLock | None) -> None:
    """Refuse a --upgrade-package name the lock pins nothing of (uv passes over it: a typo
    would be taken for "already the newest")."""
    import difflib

    pinned = sorted(p.name for p in python.packages) if python is not None else []
    problems = []
    for name in names:
        if normalize_name(name) in pinned:
            continue
        close = difflib.get_close_matches(normalize_name(name), pinned, n=1)
        shown = ", ".join(pinned[:8]) + (", ..." if len(pinned) > 8 else "")
        hint = f"did you mean {close[0]}?" if close else f"it pins: {shown or 'none'}"
        problems.append(
            f"--upgrade-package {name}: env.lock pins no Python distribution of that name ({hint})"
        )
    if problems:
        raise InputError("\n".join(problems))


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


def base_user(user: str) -> str | None:
    """The base's USER as the lock keeps it: None when it is root (or unset)."""
    return None if user.partition(":")[0] in ("", "0", "root") else user


def _other_platform(
    text: str, info: ImageInfo, ref: ImageReference, platform: str
) -> BaseImageLock:
    """The base for `platform` when the engine holds `text` for another one: the registry's
    (one that has it), never the engine's copy, whose files are the other platform's."""
    held = f"{info.os or 'linux'}/{info.architecture}"
    if not info.repo_digests:
        raise InputError(
            f"base {text} is a {held} image made here, not a {platform} one: a base that "
            f"was never pushed builds for its own platform only (make a {platform} base, "
            f"or lock for {held})"
        )
    from imagesmith.registry.client import platform_digest

    digest, index = platform_digest(ref, platform)
    return BaseImageLock(
        reference=text, repository=ref.familiar_repository, digest=digest, index_digest=index
    )


def resolve_base(text: str, engine: Engine, platform: str) -> BaseImageLock:
    """The digest a `FROM` pins: the registry's when known, the local image ID otherwise."""
    ref = parse_reference(text)
    if ref.digest:
        return BaseImageLock(reference=text, repository=ref.familiar_repository, digest=ref.digest)
    if engine.image_exists(text):
        info = engine.inspect_image(text)
        os_name, arch, *_ = platform.split("/")
        if info.architecture and (info.os or os_name, info.architecture) != (os_name, arch):
            return _other_platform(text, info, ref, platform)
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
