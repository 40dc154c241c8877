"""Everything a rebuild needs, taken out of an image: the spec, the lock, the lines of its
requirements file and the files `[image] copy` put in it.

An image carries its lock (and the lock its spec); a lock written since 0.7.0 also
carries the lines of the spec's `requirements_file`. The files `[image] copy` took from
beside the spec are in the image itself: each COPY made a layer of its own, and the lock
pins their tree hash, so the layer whose files under the copy's destination give that
hash is the copy, checked. `imagesmith build` in the unpacked folder then rebuilds the
image from nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import tomli_w

from imagesmith.engine.base import Engine
from imagesmith.errors import InputError, OperationError
from imagesmith.image.oci import ImageSource, open_image
from imagesmith.model.lock import CopyLock, Lock, tree_hash_of
from imagesmith.progress import LineCallback
from imagesmith.render.containerfile import lock_in_image


@dataclass(frozen=True)
class _File:
    rel: str
    executable: bool
    data: bytes


def unpack(
    engine: Engine, image: str, folder: Path, *, force: bool = False, on_line: LineCallback
) -> list[Path]:
    """Write env.toml, env.lock, the requirements file and the copied files of `image` into
    `folder`; the paths written. All or nothing: a file that cannot be restored (one line
    each) leaves `folder` as it was."""
    info = engine.inspect_image(image)
    lock_text, lock = lock_in_image(image, info.labels, path=folder / "env.lock")
    spec_data = dict(lock.spec_data)
    files: dict[str, bytes | list[_File]] = {
        "env.toml": tomli_w.dumps(spec_data).encode(),
        "env.lock": lock_text.encode(),
    }
    problems: list[str] = []
    req_file = spec_data.get("python", {}).get("requirements_file")
    if isinstance(req_file, str) and req_file:
        text = lock.python.requirements_file_text() if lock.python is not None else ""
        if text:
            files[req_file] = text.encode()
        else:
            problems.append(
                f"{req_file}: not in the lock {image} carries (written by imagesmith "
                f"{lock.imagesmith_version}, before locks kept it); take it from the lab's "
                "repository"
            )
    if lock.copy:
        on_line(f"unpack: reading the files [image] copy put in {image}")
        found, missing = _restore_copies(engine, image, lock)
        files.update(found)
        problems += missing
    if problems:
        raise OperationError("\n".join(problems))
    written = _write_all(folder, files, force=force)
    for source in lock.apt.sources:
        # Only their fingerprints travel: build needs no key, `lock` does.
        on_line(
            f"unpack: {source.key} (the key of apt source {source.url}, "
            f"{', '.join(source.fingerprints)}) is not in the image; `build` needs none, "
            "`lock` needs it beside env.toml"
        )
    return written


def copied_tree(engine: Engine, image: str, lock: Lock, folder: Path) -> None:
    """Restore the files `lock`'s [image] copy put in `image` into `folder` (for a rebuild
    from the image alone); OperationError naming each one that cannot be found."""
    found, missing = _restore_copies(engine, image, lock)
    if missing:
        raise OperationError("\n".join(missing))
    for src, tree in found.items():
        _write_tree(folder / src, tree)


def _restore_copies(
    engine: Engine, image: str, lock: Lock
) -> tuple[dict[str, list[_File]], list[str]]:
    """({src: its files} for each [image] copy found in the image, a line per one not)."""
    found: dict[str, list[_File]] = {}
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="imagesmith-unpack-") as tmp:
        archive = Path(tmp) / "image.tar"
        engine.save(image, archive)
        with open_image(archive) as source:
            for item in lock.copy:
                tree = _copied_files(source, item)
                if tree is None:
                    missing.append(
                        f"{item.src}: no layer of {image} holds what [image] copy put at "
                        f"{item.dest} ({item.sha256}); take it from the lab's repository"
                    )
                else:
                    found[item.src] = tree
    return found, missing


def _copied_files(source: ImageSource, item: CopyLock) -> list[_File] | None:
    """The files of the layer that is `item`'s COPY (checked against its tree hash)."""
    name = PurePosixPath(item.src.rstrip("/")).name
    dest = item.dest.strip("/")
    for index in reversed(range(len(source.layer_names))):
        for candidate in _candidates(source, index, dest, name):
            if _tree_hash(candidate) == item.sha256:
                return candidate
    return None


def _candidates(source: ImageSource, index: int, dest: str, name: str) -> Iterator[list[_File]]:
    """What layer `index` holds under `dest`, read as a folder's files, as a single file at
    `dest`, and as a single file `name` inside `dest` (COPY's three outcomes)."""
    folder: list[_File] = []
    single: dict[str, _File] = {}
    with tarfile.open(fileobj=source.open_layer(index), mode="r:") as tar:
        for member in tar:
            path = member.name.removeprefix("./").rstrip("/")
            inside = path.startswith(dest + "/") if dest else True
            if not member.isreg() or not (inside or path == dest):
                continue
            extracted = tar.extractfile(member)
            assert extracted is not None
            with extracted:
                data = extracted.read()
            executable = bool(member.mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH))
            if path == dest or path == f"{dest}/{name}":
                single[path] = _File(".", executable, data)
            if inside:
                rel = path[len(dest) + 1 :] if dest else path
                folder.append(_File(rel, executable, data))
    if folder:
        yield folder
    yield from ([f] for f in single.values())


def _tree_hash(files: list[_File]) -> str:
    ordered = sorted(files, key=lambda f: PurePosixPath(f.rel))  # as tree_hash walks a folder
    return tree_hash_of((f.rel, f.executable, hashlib.sha256(f.data).digest()) for f in ordered)


def _write_tree(target: Path, files: list[_File]) -> None:
    for item in files:
        path = target if item.rel == "." else target / item.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.data)
        path.chmod(0o755 if item.executable else 0o644)


def _write_all(folder: Path, files: dict[str, bytes | list[_File]], *, force: bool) -> list[Path]:
    targets = [folder / name for name in files]
    present = [t for t in targets if t.exists() or t.is_symlink()]
    if present and not force:
        raise InputError("\n".join(f"{p}: already there (--force replaces it)" for p in present))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".imagesmith-unpack-", dir=folder))
    except OSError as exc:
        raise OperationError(f"cannot write {folder}: {exc.strerror or exc}") from None
    try:
        for name, content in files.items():
            if isinstance(content, bytes):
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(content)
            else:
                _write_tree(staging / name, content)
        for name in files:
            target = folder / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
    except OSError as exc:
        raise OperationError(f"cannot write {folder}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return targets
