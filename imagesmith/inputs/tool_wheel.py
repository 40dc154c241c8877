"""The imagesmith that wrote a lock, as a wheel: the tool is an input too.

A lock pins the sha256 of the wheel of the imagesmith that wrote it (`imagesmith_wheel`),
and `push` stores that wheel in the input archive, so the exact tool can be installed
from the lab's registry years later (`imagesmith fetch-tool`).

The wheel is made from the running imagesmith's own files, the same way every time: its
package folder (no byte code), the distribution's METADATA and entry points, sorted
entries, fixed times and modes, stored without compression (zlib versions differ in what
they produce). The same imagesmith gives the same bytes on any machine.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zipfile
from collections.abc import Iterator
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import imagesmith
from imagesmith.errors import InputError, LockError, OperationError

if TYPE_CHECKING:
    from imagesmith.model.lock import Lock

NAME = "imagesmith"
_EPOCH = (1980, 1, 1, 0, 0, 0)
_WHEEL = "Wheel-Version: 1.0\nGenerator: imagesmith\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def wheel_name(version: str = imagesmith.__version__) -> str:
    return f"{NAME}-{version}-py3-none-any.whl"


def _package_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(name in the wheel, file) of every file of the package, links to folders followed
    (recipes/ is one in a source checkout), byte code left out."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = Path(folder, name)
            if path.suffix not in {".pyc", ".pyo"} and path.is_file():
                found.append((f"{NAME}/{path.relative_to(root).as_posix()}", path))
    yield from sorted(found)


def _metadata() -> tuple[str, str | None]:
    """(METADATA, entry_points.txt) of the installed distribution; a minimal METADATA
    when imagesmith runs from a folder that was never installed."""
    try:
        dist = metadata.distribution(NAME)
    except metadata.PackageNotFoundError:
        dist = None
    text = dist.read_text("METADATA") if dist is not None else None
    if not text:
        text = f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {imagesmith.__version__}\n"
    entry_points = dist.read_text("entry_points.txt") if dist is not None else None
    return text, entry_points


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build_wheel() -> bytes:
    """The running imagesmith as wheel bytes (deterministic)."""
    root = Path(imagesmith.__file__).resolve().parent
    entries: list[tuple[str, bytes]] = [
        (name, path.read_bytes()) for name, path in _package_files(root)
    ]
    info = f"{NAME}-{imagesmith.__version__}.dist-info"
    meta, entry_points = _metadata()
    entries.append((f"{info}/METADATA", meta.encode()))
    entries.append((f"{info}/WHEEL", _WHEEL.encode()))
    if entry_points:
        entries.append((f"{info}/entry_points.txt", entry_points.encode()))
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{info}/RECORD", (record + f"{info}/RECORD,,\n").encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as wheel:
        for name, data in entries:
            item = zipfile.ZipInfo(name, date_time=_EPOCH)
            item.external_attr = 0o644 << 16
            item.create_system = 3  # Unix, so the mode above is what pip applies
            wheel.writestr(item, data)
    return out.getvalue()


@lru_cache(maxsize=1)
def tool_wheel() -> tuple[str, bytes]:
    """(sha256:..., bytes) of the running imagesmith's wheel, made once per process."""
    data = build_wheel()
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def tool_digest() -> str:
    return tool_wheel()[0]


def fetch_tool_wheel(spec_path: Path, *, repository: str | None, output: Path) -> tuple[Path, Lock]:
    """Download the wheel of the imagesmith that wrote the lock beside `spec_path` from the
    input archive in `repository` (default: the spec's [registry] repository) into
    `output`; (the wheel's path, the lock). Reads the spec only for that repository, so
    that a spec this imagesmith would not accept any more still gives its tool."""
    from imagesmith.inputs.archive import Archive
    from imagesmith.model.lock import read_lock
    from imagesmith.model.reference import parse_reference

    lock = read_lock(spec_path.with_suffix(".lock"))
    lock_name = spec_path.with_suffix(".lock").name
    if lock.imagesmith_wheel is None:
        raise LockError(
            f"{lock_name} names no imagesmith wheel: it was written by imagesmith "
            f"{lock.imagesmith_version}, before locks pinned the tool (0.7.0); install "
            f"imagesmith {lock.imagesmith_version} from its source"
        )
    repo = repository or _spec_repository(spec_path)
    if not repo:
        raise InputError(
            f"no repository: {spec_path.name} has no [registry] repository; "
            "name the one the image was pushed to with --from REGISTRY/PATH"
        )
    try:
        ref = parse_reference(repo)
    except ValueError as exc:
        raise InputError(f"--from {repo}: {exc}") from None
    archive = Archive.for_lock(f"{ref.registry}/{ref.path}", lock)
    assert archive is not None
    if lock.imagesmith_wheel not in archive.names():
        # Says why without a request: no archive, registry unreachable, or not listed.
        why = archive.fetch(lock.imagesmith_wheel, output / wheel_name())
        raise OperationError(
            f"imagesmith {lock.imagesmith_version} ({lock.imagesmith_wheel}) is not in the "
            f"input archive: {why} (pushed with --no-inputs, or by another imagesmith "
            "than the one that locked it?)"
        )
    dest = output / wheel_name(lock.imagesmith_version)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OperationError(f"cannot write {output}: {exc.strerror or exc}") from None
    why = archive.fetch(lock.imagesmith_wheel, dest, mode=0o644)
    if why is not None:
        raise OperationError(f"cannot fetch imagesmith {lock.imagesmith_version}: {why}")
    return dest, lock


def _spec_repository(spec_path: Path) -> str | None:
    """[registry] repository of the spec, read without validating the rest of it."""
    from imagesmith.model.input_files import parse_toml, read_input_text

    try:
        data = parse_toml(read_input_text(spec_path), spec_path.name)
    except (OSError, UnicodeDecodeError):
        return None
    registry = data.get("registry")
    value = registry.get("repository") if isinstance(registry, dict) else None
    return value if isinstance(value, str) else None
