"""The files `[image] copy` takes, kept in the input archive beside the .debs and wheels.

A lock pins each copy by its tree hash (relative paths, executable bits, contents). `push`
stores each copied tree as one tar blob in the lock's input archive, titled
`copy-<tree hash>.tar`. A build (or `verify`) in a folder that lacks a copy's source, such
as a machine with only env.toml, env.lock and the lab's registry, fetches that blob, checks
the tree hash the lock pins, and writes the files where the spec names them. It only
creates what is missing: a file or folder that is there is never replaced (a changed one
makes the lock stale, as before).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from imagesmith.errors import ImagesmithError, OperationError, RegistryError
from imagesmith.model.input_files import parse_toml, read_input_text
from imagesmith.model.lock import CopyLock, Lock, tree_hash, tree_hash_of
from imagesmith.model.sha256 import sha256
from imagesmith.progress import LineCallback

if TYPE_CHECKING:
    from imagesmith.inputs.archive import Archive

COPY_TYPE = "application/vnd.imagesmith.copy-tree.v1.tar"
_ROOT = "tree"
"""The tar's one top entry: the copied file itself, or the folder holding the copied files."""


def copy_title(item: CopyLock) -> str:
    """The blob's title in the input archive: `copy-<tree hash hex>.tar`."""
    return f"copy-{item.sha256.removeprefix('sha256:')}.tar"


def _copies_dir() -> Path:
    from imagesmith.inputs.context import cache_dir

    return cache_dir() / "copies"


def _tree_files(root: Path) -> list[tuple[str, Path]]:
    """(relative path, file) of a copy's source, in the order `tree_hash` reads them."""
    if root.is_file():
        return [(".", root)]
    return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file()]


def copy_blobs(lock: Lock) -> list[tuple[CopyLock, Path]]:
    """Each [image] copy of `lock` as a tar in the cache, for the input archive; RegistryError
    when a source is gone or has changed since the lock was written."""
    folder = lock.spec_path.parent
    blobs: list[tuple[CopyLock, Path]] = []
    for item in lock.copy:
        source = folder / item.src
        try:
            current = tree_hash(source) if source.exists() else None
        except OSError as exc:
            raise RegistryError(f"{source}: cannot read it ({exc}); not archiving it") from None
        if current != item.sha256:
            state = "is not there" if current is None else "has changed"
            raise RegistryError(
                f"{source} ([image] copy) {state} since {lock.spec_path.stem}.lock was written; "
                "not archiving it (run `imagesmith build` to lock and build it again)"
            )
        target = _copies_dir() / copy_title(item)
        try:
            _check_blob(target, item)  # one written before, still whole
        except (OSError, ValueError, tarfile.TarError):
            try:
                _write_tar(source, target)
            except OSError as exc:
                raise RegistryError(
                    f"{source} ([image] copy): cannot write {exc.filename or target}: "
                    f"{exc.strerror or exc}; not archiving it"
                ) from None
        blobs.append((item, target))
    return blobs


def _write_tar(source: Path, target: Path) -> None:
    """The files of `source` as a tar that depends on their paths, executable bits and
    contents alone (sorted, owners 0, mtime 0, modes 0644/0755)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            files = _tree_files(source)
            written = {"", _ROOT}
            if not files or files[0][0] != ".":
                tar.addfile(_info(_ROOT, tarfile.DIRTYPE, 0o755))
            for rel, path in files:
                member = _ROOT if rel == "." else f"{_ROOT}/{rel}"
                for parent in _new_parents(written, member):
                    tar.addfile(_info(parent, tarfile.DIRTYPE, 0o755))
                info = _info(member, tarfile.REGTYPE, 0o755 if os.access(path, os.X_OK) else 0o644)
                info.size = path.stat().st_size
                with path.open("rb") as data:
                    tar.addfile(info, data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, target)
    finally:
        Path(name).unlink(missing_ok=True)


def _new_parents(written: set[str], member: str) -> list[str]:
    """The folders above `member` not in `written` yet, top first (added to it)."""
    parents: list[str] = []
    parent = posixpath.dirname(member)
    while parent not in written:
        parents.append(parent)
        written.add(parent)
        parent = posixpath.dirname(parent)
    return parents[::-1]


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _read_tar(path: Path) -> Iterator[tuple[str, bool, tarfile.TarFile, tarfile.TarInfo]]:
    """(relative path, executable, the tar, its member) of each file a copy blob holds."""
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isdir() and (member.name == _ROOT or member.name.startswith(_ROOT + "/")):
                continue
            if not member.isreg():
                raise ValueError(f"{member.name}: not a regular file")
            if member.name == _ROOT:
                rel = "."
            elif member.name.startswith(_ROOT + "/"):
                rel = member.name[len(_ROOT) + 1 :]
            else:
                raise ValueError(f"{member.name}: outside {_ROOT}/")
            parts = PurePosixPath(rel).parts
            if rel != "." and (not parts or ".." in parts or PurePosixPath(rel).is_absolute()):
                raise ValueError(f"{member.name}: not a plain relative path")
            yield rel, bool(member.mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)), tar, member


def _check_blob(path: Path, item: CopyLock) -> None:
    """ValueError unless the blob's files give the tree hash `item` pins."""
    entries: list[tuple[str, bool, bytes]] = []
    for rel, executable, tar, member in _read_tar(path):
        extracted = tar.extractfile(member)
        assert extracted is not None
        digest = sha256()
        with extracted:
            while chunk := extracted.read(1 << 20):
                digest.update(chunk)
        entries.append((rel, executable, digest.digest()))
    entries.sort(key=lambda e: PurePosixPath(e[0]))
    if tree_hash_of(entries) != item.sha256:
        raise ValueError(f"its files do not give the tree hash the lock pins ({item.sha256})")


def _unpack_into(path: Path, target: Path) -> None:
    """Write the files of copy blob `path` at `target` (a file, or a folder of them),
    through a staging folder beside it: all of them or none. FileExistsError when
    `target` appeared meanwhile."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".imagesmith-copy-", dir=target.parent))
    try:
        single = staging / "file"
        for rel, executable, tar, member in _read_tar(path):
            out = single if rel == "." else staging / "tree" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            extracted = tar.extractfile(member)
            assert extracted is not None
            with extracted, out.open("wb") as sink:
                shutil.copyfileobj(extracted, sink, 1 << 20)
            out.chmod(0o755 if executable else 0o644)
        made = single if single.exists() else staging / "tree"
        if made != single:
            made.mkdir(exist_ok=True)  # a copied folder with no files in it
        if target.exists() or target.is_symlink():  # appeared meanwhile: never replaced
            raise FileExistsError(errno.EEXIST, "it appeared meanwhile; kept as it is", str(target))
        os.rename(made, target)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)


def read_spec_leniently(spec_path: Path) -> dict[str, Any]:
    """env.toml's tables as TOML reads them, unchecked ({} when it cannot be read: loading
    it reports why, one line each)."""
    try:
        return parse_toml(read_input_text(spec_path), str(spec_path))
    except (OSError, UnicodeDecodeError, ImagesmithError):
        return {}


def _spec_copies(spec_path: Path) -> tuple[list[str], str | None]:
    """The copy sources and the [registry] repository env.toml names."""
    data = read_spec_leniently(spec_path)
    image = data.get("image")
    copies = image.get("copy") if isinstance(image, dict) else None
    sources = [
        item["src"]
        for item in (copies if isinstance(copies, list) else [])
        if isinstance(item, dict) and isinstance(item.get("src"), str)
    ]
    registry = data.get("registry")
    repository = registry.get("repository") if isinstance(registry, dict) else None
    return sources, repository if isinstance(repository, str) else None


def plain_inside(src: str) -> bool:
    """Whether `src` is a relative path that stays below the spec's folder."""
    path = PurePosixPath(src)
    return bool(src) and not path.is_absolute() and ".." not in path.parts


def restore_missing_copies(spec_path: Path, *, on_line: LineCallback) -> list[str]:
    """Fetch each [image] copy source the spec's folder lacks and its lock pins from the
    lock's input archive in the spec's [registry] repository (the copies in the host
    cache first); the sources restored. OperationError naming each one not found and where
    it looked. Nothing happens without a lock, a repository, or a missing source: loading
    the spec then reports a missing one."""
    sources, repository = _spec_copies(spec_path)
    folder = spec_path.parent
    missing = [
        s
        for s in sources
        if plain_inside(s) and not (folder / s).exists() and not (folder / s).is_symlink()
    ]
    lock_path = spec_path.with_suffix(".lock")
    if not missing or not repository or not lock_path.is_file():
        return []
    from imagesmith.inputs.archive import Archive
    from imagesmith.model.lock import read_lock

    try:
        lock = read_lock(lock_path)
    except ImagesmithError:
        return []
    pinned = {item.src: item for item in lock.copy}
    wanted = [pinned[s] for s in dict.fromkeys(missing) if s in pinned]
    archive = Archive.for_lock(repository, lock)
    if not wanted or archive is None:
        return []
    problems: list[str] = []
    restored: list[str] = []
    for item in wanted:
        try:
            why = _restore(item, folder, archive)
        except OSError as exc:  # the host cache or the spec's folder
            problems.append(
                f"[image] copy: {item.src}: cannot write {exc.filename or folder}: "
                f"{exc.strerror or exc}"
            )
            continue
        if why is None:
            restored.append(item.src)
            on_line(
                f"copy: {item.src} was not in {folder}; restored it from the input archive "
                f"{archive.where} (the tree hash {lock_path.name} pins)"
            )
        else:
            problems.append(
                f"[image] copy: {item.src} ({item.sha256[:19]}...) not found; looked in: "
                f"{folder / item.src} (absent); {why}"
            )
    if problems:
        raise OperationError("\n".join(problems))
    return restored


def _restore(item: CopyLock, folder: Path, archive: Archive) -> str | None:
    """Put `item`'s files at its source in `folder`; None when done, else where it looked
    and why not (the host cache's copy first, then the archive's). OSError when the
    cache or the folder cannot be written."""
    title = copy_title(item)
    cached = _copies_dir() / title
    looked: list[str] = []
    if cached.is_file():
        try:
            _check_blob(cached, item)
        except (OSError, ValueError, tarfile.TarError) as exc:
            looked.append(f"host cache {cached} (unusable: {_one_line(exc)}: removed)")
            cached.unlink(missing_ok=True)
        else:
            _unpack_into(cached, folder / item.src)
            return None
    else:
        looked.append(f"host cache {cached} (absent)")
    digest = archive.digest_of(title)
    why = archive.absent() if digest is None else archive.fetch(digest, cached)
    if why is not None:
        looked.append(why)
        return "; ".join(looked)
    try:
        _check_blob(cached, item)
    except (OSError, ValueError, tarfile.TarError) as exc:
        cached.unlink(missing_ok=True)
        looked.append(f"{archive.where}: {title} is not the copy the lock pins ({_one_line(exc)})")
        return "; ".join(looked)
    _unpack_into(cached, folder / item.src)
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
