"""The build context: the Containerfile plus exactly what it copies, made deterministic.

The apt closure's .debs are fetched and checked on the host as well (`imagesmith.inputs.debs`)
and linked into ``apt/``, from which the system stage installs them. Python artifacts are
fetched on the host (which trusts the lab's proxy CA) and checked
against the lock's hashes, so the build itself needs no network for them and no
credential or CA file ever enters a layer; they are installed on the host too, into the
tree the image's /opt/venv will hold (`imagesmith.inputs.venv`), and the build ADDs that tree
(one gzip tar). Every file in the context gets the lock's SOURCE_DATE_EPOCH as its time, so an
unchanged lock gives an unchanged context and the engine's cache holds.

Cache (`~/.cache/imagesmith`): `wheels/KEY` (the downloaded wheels, kept, with
`SHA256SUMS.json`) and `venvs/KEY-EPOCH/venv.tar.gz` (the installed tree, its times
already the epoch; the context links to it; its sha256 beside it). Both records are
written last, so a folder without one is not whole, and both are checked before a file
is used. Installed trees are cheap to make again from the wheels (about a second), so
only the most recently used few are kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from imagesmith.cache.gc import touch
from imagesmith.cache.integrity import (
    CorruptEntry,
    check_file,
    file_sha256,
    fsync_dir,
    fsync_file,
    link_over,
    write_bytes_durably,
)
from imagesmith.cache.scratch import disown, make_scratch, release
from imagesmith.engine.base import disk_full_message
from imagesmith.errors import InputError, OperationError, ResolveError
from imagesmith.model.lock import Lock, PythonLock
from imagesmith.progress import LineCallback
from imagesmith.render.containerfile import CONTEXT_APT, CONTEXT_PYTHON, copy_context_path

if TYPE_CHECKING:
    from imagesmith.inputs.archive import Archive

DEFAULT_INDEX = "https://pypi.org/simple"


#: The name of a wheel folder or Python tree being made, before its key.
_PARTIAL = ".partial-"


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "imagesmith"


def layout_dir(digest: str) -> Path:
    """Where the canonical OCI layout of the image with this manifest digest is kept
    (`push` sends its blobs)."""
    return cache_dir() / "images" / digest.removeprefix("sha256:")


def _pip_platforms(wheel_platform: str) -> list[str]:
    """pip's --platform values for `x86_64-manylinux_2_36`: every manylinux it implies."""
    arch, _, libc = wheel_platform.partition("-")
    tags: list[str] = []
    if libc.startswith("manylinux_2_"):
        newest = int(libc.removeprefix("manylinux_2_"))
        tags += [f"manylinux_2_{minor}_{arch}" for minor in range(newest, 4, -1)]
        tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    tags.append(f"linux_{arch}")
    return tags


def _wheel_folder(python: PythonLock) -> Path:
    key = hashlib.sha256(
        "\n".join(
            [python.requirements_txt(), python.version, python.platform, python.index_url or ""]
        ).encode()
    ).hexdigest()[:32]
    return cache_dir() / "wheels" / key


def fetch_wheels(
    python: PythonLock, *, on_line: LineCallback | None = None, archive: Archive | None = None
) -> Path:
    """A folder holding one hash-checked wheel per locked distribution (cached by content).

    Wheels come from the lock's input archive in the lab's registry when it has them (a
    blob per wheel, checked against its digest), the rest from the package index.
    """
    sdists = [f"{p.name}=={p.version}" for p in python.packages if p.sdist_only]
    if sdists:
        raise ResolveError(
            f"python: no wheel for {python.platform} / Python {python.version}: "
            f"{', '.join(sdists)}; imagesmith installs wheels only (pin versions that ship "
            "wheels, or serve built wheels from an index_url)"
        )
    requirements = python.requirements_txt()
    folder = _wheel_folder(python)
    if (folder / WHEEL_SUMS).exists():
        try:
            _check_wheels(folder, python)
            return folder
        except CorruptEntry as exc:
            if on_line:
                on_line(f"cache: wheel {exc.path.name} was corrupt; fetched again")
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # a damaged record: fetched again
        shutil.rmtree(folder, ignore_errors=True)
    partial = make_scratch(folder.parent, folder.name + _PARTIAL, siblings=f"*{_PARTIAL}*")
    try:
        return _fetch_into(partial, folder, python, requirements, on_line, archive)
    finally:
        release(partial)


def _fetch_into(
    partial: Path,
    folder: Path,
    python: PythonLock,
    requirements: str,
    on_line: LineCallback | None,
    archive: Archive | None,
) -> Path:
    from_cache = _wheels_from_siblings(python, partial / "wheels")
    from_archive = _wheels_from_archive(python, archive, partial / "wheels", on_line, from_cache)
    have = from_cache | from_archive
    if len(have) == len(python.packages):
        return _complete(partial, folder, python)
    if have:
        rest = replace(python, packages=tuple(p for p in python.packages if p.name not in have))
        requirements = rest.requirements_txt()
    (partial / "requirements.txt").write_text(requirements, encoding="utf-8")
    version = python.version.replace(".", "")
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
        "--only-binary=:all:", "--python-version", python.version, "--implementation", "cp",
        "--abi", f"cp{version}", "--abi", "abi3", "--abi", "none",
        "--index-url", python.index_url or DEFAULT_INDEX,
        "-r", str(partial / "requirements.txt"), "-d", str(partial / "wheels"),
    ]  # fmt: skip
    for url in python.extra_index_urls:
        command += ["--extra-index-url", url]
    for platform in _pip_platforms(python.platform):
        command += ["--platform", platform]
    if on_line:
        on_line(f"python: fetching {len(python.packages) - len(have)} wheels on the host")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        if "[Errno 28]" in result.stderr:  # ENOSPC, under pip's traceback
            raise OperationError(f"python: {disk_full_message(str(folder.parent))}")
        lines = result.stderr.strip().splitlines()
        errors = [line for line in lines if line.startswith("ERROR")]
        detail = errors[0] if errors else result.stderr.strip()[-300:]
        if detail == "ERROR: Exception:" and lines:  # pip's traceback follows: its last line
            detail = lines[-1]
        if "THESE PACKAGES DO NOT MATCH THE HASHES" in result.stderr:
            raise OperationError(f"python: a downloaded wheel does not match env.lock: {detail}")
        if "No matching distribution" in result.stderr:
            raise ResolveError(
                f"python: no wheel for {python.platform} / Python {python.version}: {detail}"
            )
        raise OperationError(f"python: fetching wheels failed: {detail}")
    return _complete(partial, folder, python)


def _fetched_for(python: PythonLock) -> dict[str, object]:
    """What decides which file pip takes for each distribution (``--no-deps``, hashes
    required): the Python version, platform and index, and the version and hashes the
    lock pins. Equal for a distribution in two locks, the same wheel."""
    return {
        "target": [python.version, python.platform, python.index_url or DEFAULT_INDEX],
        "packages": _pins(python),
    }


def _pins(python: PythonLock) -> dict[str, list[str]]:
    return {p.name: [p.version, *p.hashes] for p in python.packages}


def _wheels_from_siblings(python: PythonLock, dest: Path) -> set[str]:
    """Link into `dest` the locked wheels that other wheel folders of the cache hold, when
    fetched for the same target, version and hashes (`_fetched_for`): a changed pin leaves
    the other wheels where they are. Their package names; each is hashed again with the
    rest (`_record_wheels`)."""
    ours = _fetched_for(python)
    pinned = _pins(python)
    by_hash = {h: p.name for p in python.packages for h in p.hashes}
    found: set[str] = set()
    with contextlib.suppress(OSError):
        for sibling in sorted((cache_dir() / "wheels").iterdir()):
            if len(found) == len(python.packages):
                break
            try:
                theirs = json.loads((sibling / WHEEL_TARGET).read_text(encoding="utf-8"))
                sums = json.loads((sibling / WHEEL_SUMS).read_text(encoding="utf-8"))
                if theirs["target"] != ours["target"] or not isinstance(sums, dict):
                    continue
                same = {n for n, pin in theirs["packages"].items() if pinned.get(n) == pin}
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            for name, digest in sorted(sums.items()):
                package = by_hash.get(digest)
                if package is None or package not in same or package in found:
                    continue
                if Path(name).name != name:  # a record naming a path elsewhere
                    continue
                dest.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(sibling / "wheels" / name, dest / name)
                    check_file(dest / name, digest)  # a damaged one: fetched instead
                except (OSError, CorruptEntry):
                    (dest / name).unlink(missing_ok=True)
                    continue
                found.add(package)
    return found


def _complete(partial: Path, folder: Path, python: PythonLock) -> Path:
    """Check and record the wheels in `partial`, then move it into place as `folder`."""
    try:
        _record_wheels(partial, python)
        write_bytes_durably(partial / WHEEL_TARGET, json.dumps(_fetched_for(python)).encode())
        shutil.rmtree(folder, ignore_errors=True)
        disown(partial)
        partial.rename(folder)
        fsync_dir(folder.parent)
    except CorruptEntry as exc:
        raise OperationError(
            f"python: {exc.path.name} does not match env.lock's hashes ({exc.found})"
        ) from None
    except OSError as exc:
        raise OperationError(f"python: cannot write {folder}: {exc.strerror or exc}") from None
    return folder


WHEEL_SUMS = "SHA256SUMS.json"
"""The sha256 of each wheel in a wheel folder, written once all are there: its presence
marks the folder whole."""
WHEEL_TARGET = "TARGET.json"
"""What the folder's wheels were fetched for (`_fetched_for`): other locks take the wheels
they share with it from there."""


def _lock_hashes(python: PythonLock, wheel: Path) -> set[str]:
    """The hashes env.lock allows for `wheel` (matched by its distribution name)."""
    name = re.sub(r"[-_.]+", "_", wheel.name.split("-", 1)[0]).lower()
    return {
        h
        for p in python.packages
        if re.sub(r"[-_.]+", "_", p.name).lower() == name
        for h in p.hashes
    }


def _record_wheels(folder: Path, python: PythonLock) -> None:
    """Hash the wheels just fetched into `folder`, check them against the lock, write the
    record last (temporary name, fsync, rename): a folder without it is not whole."""
    sums: dict[str, str] = {}
    for wheel in sorted((folder / "wheels").glob("*.whl")):
        digest = file_sha256(wheel)
        if digest not in _lock_hashes(python, wheel):
            raise CorruptEntry(wheel, "a hash in env.lock", digest)
        sums[wheel.name] = digest
        fsync_file(wheel)
    fsync_dir(folder / "wheels")
    write_bytes_durably(folder / WHEEL_SUMS, json.dumps(sums, indent=1).encode())


def _check_wheels(folder: Path, python: PythonLock) -> None:
    """Each cached wheel hashes to its record and to a hash in env.lock (`CorruptEntry`)."""
    sums = json.loads((folder / WHEEL_SUMS).read_text(encoding="utf-8"))
    present = {p.name for p in (folder / "wheels").glob("*.whl")}
    if present != set(sums):
        missing = sorted(set(sums) ^ present)[0]
        raise CorruptEntry(folder / "wheels" / missing, "a recorded wheel", "missing or extra")
    for name, digest in sorted(sums.items()):
        wheel = folder / "wheels" / name
        if digest not in _lock_hashes(python, wheel):
            raise CorruptEntry(wheel, "a hash in env.lock", digest)
        check_file(wheel, digest)


def _wheels_from_archive(
    python: PythonLock,
    archive: Archive | None,
    folder: Path,
    on_line: LineCallback | None,
    have: set[str],
) -> set[str]:
    """Fetch into `folder` the locked wheels the input archive holds, but those in `have`;
    their package names."""
    if archive is None:
        return set()
    names = archive.names()
    fetched: set[str] = set()
    for package in python.packages:
        if package.name in have:
            continue
        digest = next((h for h in package.hashes if h in names), None)
        if digest is not None and archive.fetch(digest, folder / names[digest]) is None:
            fetched.add(package.name)
    if fetched and on_line:
        on_line(f"python: {len(fetched)} wheels from {archive.where}")
    return fetched


_KEEP_TREES = 4
VENV_TAR = "venv.tar.gz"
TREE_SUM = "venv.tar.gz.sha256"
"""The tar's sha256, written after it: its presence marks a tree folder whole."""


def _tree_folder(python: PythonLock, epoch: int) -> Path:
    return cache_dir() / "venvs" / f"{_wheel_folder(python).name}-{epoch}"


def python_tree_cached(python: PythonLock, epoch: int) -> bool:
    """Whether `python_tree` has this tree already (no network, no install)."""
    folder = _tree_folder(python, epoch)
    return (folder / VENV_TAR).is_file() and (folder / TREE_SUM).is_file()


def python_tree(
    python: PythonLock,
    epoch: int,
    *,
    on_line: LineCallback | None = None,
    archive: Archive | None = None,
) -> Path:
    """The locked distributions installed as /opt/venv will hold them, as one tar (cached).

    The build extracts it with ``ADD``: one file in the context instead of a thousand,
    and a third of their bytes. Its entries are sorted, owned by 0:0, timed `epoch`.
    The wheels are fetched first when they are not cached (`fetch_wheels`). A cache
    that cannot be written is an OperationError, one line. A cached tar is hashed before
    it is used; one that does not match the sha256 recorded when it was written is
    dropped, reported, and made again.
    """
    from imagesmith.inputs.venv import install_wheels, write_tree_tar

    folder = _tree_folder(python, epoch)
    if python_tree_cached(python, epoch):
        try:
            check_file(folder / VENV_TAR, (folder / TREE_SUM).read_text(encoding="ascii").strip())
            touch(folder)
            return folder / VENV_TAR
        except CorruptEntry as exc:
            if on_line:
                on_line(f"cache: python tree {exc.expected} was corrupt; rebuilt")
        except (OSError, ValueError):
            pass  # unreadable: made again
        shutil.rmtree(folder, ignore_errors=True)
    wheels = sorted(
        (fetch_wheels(python, on_line=on_line, archive=archive) / "wheels").glob("*.whl")
    )
    try:
        partial = make_scratch(folder.parent, folder.name + _PARTIAL, siblings=f"*{_PARTIAL}*")
    except OSError as exc:
        raise _tree_write_error(folder, exc) from None
    try:
        root = install_wheels(wheels, partial / "root", python_version=python.version)
        digest = write_tree_tar(root, partial / VENV_TAR, epoch=epoch)
        shutil.rmtree(partial / "root")
        write_bytes_durably(partial / TREE_SUM, f"{digest}\n".encode())
        if folder.exists() and not (folder / TREE_SUM).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # not whole, or another version's
        try:
            disown(partial)
            partial.rename(folder)
            fsync_dir(folder.parent)
        except OSError:
            # Fine when another build made the same tree meanwhile: the same bytes.
            if not (folder / TREE_SUM).is_file():
                raise
    except OSError as exc:
        raise _tree_write_error(folder, exc) from None
    finally:
        release(partial)
    _prune_trees(keep=folder)
    return folder / VENV_TAR


def _tree_write_error(folder: Path, exc: OSError) -> OperationError:
    if exc.errno == errno.ENOSPC:
        return OperationError(f"python: {disk_full_message(str(cache_dir()))}")
    return OperationError(f"python: cannot write {folder}: {exc.strerror or exc}")


def _prune_trees(*, keep: Path) -> None:
    """Drop all but the `_KEEP_TREES` most recently used installed trees (none used in the
    last hour: a concurrent build may be linking from it)."""
    trees = []
    for entry in keep.parent.iterdir():
        if entry != keep and (entry / VENV_TAR).is_file():
            with contextlib.suppress(OSError):
                trees.append((entry.stat().st_mtime, entry))
    trees.sort(reverse=True)
    recent = time.time() - 3600
    for mtime, entry in trees[_KEEP_TREES - 1 :]:
        if mtime < recent:
            shutil.rmtree(entry, ignore_errors=True)


def _copy_tree(src: Path, dest: Path) -> None:
    """`src` (an [image] copy source) into the context; a file that cannot be read is an
    InputError, one line each (the spec's checks already refused pipes and devices)."""
    try:
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    except shutil.Error as exc:
        failures = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
        lines = [f"[image] copy: cannot copy {failed[0]}: {failed[-1]}" for failed in failures]
        raise InputError("\n".join(lines) or f"[image] copy: cannot copy {src}: {exc}") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OperationError(f"[image] copy: {disk_full_message(str(dest))}") from None
        raise InputError(
            f"[image] copy: cannot copy {exc.filename or src}: {exc.strerror or exc}"
        ) from None


def _clamp_times(root: Path, epoch: int) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def _add_debs(lock: Lock, debs: Mapping[str, Path], folder: Path) -> None:
    """The checked .debs (`imagesmith.inputs.debs.fetch_debs`), linked into the context's apt/."""
    for package in lock.apt.packages:
        link_over(debs[package.name], folder / CONTEXT_APT / package.file_name)


def system_context(
    lock: Lock, containerfile: str, folder: Path, *, debs: Mapping[str, Path]
) -> Path:
    """The context of the system stage alone: the Containerfile and the .debs."""
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(containerfile, encoding="utf-8")
    _add_debs(lock, debs, folder)
    _clamp_times(folder, lock.source_date_epoch)
    return folder


def assemble_context(
    lock: Lock,
    containerfile: str,
    folder: Path,
    *,
    debs: Mapping[str, Path] | None = None,
    on_line: LineCallback | None = None,
    archive: Archive | None = None,
) -> Path:
    """Write the build context for `lock` into `folder` (created; must not exist yet).

    `debs`: the checked .debs when the Containerfile builds the system stage itself;
    None when it starts from that stage already built. `archive`: the lock's input
    archive, where wheels are looked for before the index.
    """
    folder.mkdir(parents=True)
    (folder / "Containerfile").write_text(containerfile, encoding="utf-8")
    spec = lock.spec
    if debs is not None:
        _add_debs(lock, debs, folder)
    if lock.python is not None and lock.python.packages:
        tree = python_tree(lock.python, lock.source_date_epoch, on_line=on_line, archive=archive)
        link_over(tree, folder / CONTEXT_PYTHON / VENV_TAR)
    for index, item in enumerate(spec.image.copy):
        _copy_tree(spec.folder / item.src, folder / copy_context_path(index, item.src))
    _clamp_times(folder, lock.source_date_epoch)
    return folder
