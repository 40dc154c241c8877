"""What a build or a push leaves beside the spec, for `manifest`, `inspect` and `pull`.

`env.build.json`: the last successful local build of this lock (written only after the
image exists and is tagged). `env.pushed.json`: the last push a registry confirmed.
Both name the lock they belong to; a record for another lock is ignored as stale.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import InputError


@dataclass(frozen=True)
class BuildRecord:
    image_id: str
    """The config digest in the engine's store."""
    digest: str
    """The manifest digest of the canonical image (what a registry will hold)."""
    tags: tuple[str, ...]
    engine: str
    lock_hash: str
    uid: int
    gid: int
    started: str | None = None
    """RFC 3339 UTC time the build began (for provenance); None in older records."""
    finished: str | None = None
    inputs: str = ""
    """`build.build_inputs` of the build: equal next time means nothing to build."""


@dataclass(frozen=True)
class PushRecord:
    repository: str
    """registry/path the image was pushed to."""
    digest: str
    tags: tuple[str, ...]
    lock_hash: str
    uid: int
    gid: int

    @property
    def pinned(self) -> str:
        return f"{self.repository}@{self.digest}"


def build_record_path(spec_path: Path) -> Path:
    return spec_path.with_suffix(".build.json")


def push_record_path(spec_path: Path) -> Path:
    return spec_path.with_suffix(".pushed.json")


def _dump(record: BuildRecord | PushRecord) -> str:
    data: dict[str, Any] = asdict(record)
    data["tags"] = list(record.tags)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_record(path: Path, record: BuildRecord | PushRecord) -> None:
    from imagesmith.model.lock import write_atomically

    write_atomically(path, _dump(record))


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except RecursionError:
        raise InputError(
            f"{path}: not a record imagesmith wrote (nested too deep); delete it and build "
            "or push again"
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: cannot read it ({exc}); delete it and build or push again"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: not a record imagesmith wrote; delete it and build or push again"
        )
    data["tags"] = tuple(data.get("tags", ()))
    return data


def read_build_record(spec_path: Path, lock_hash: str) -> BuildRecord | None:
    data = _load(build_record_path(spec_path))
    if data is None or data.get("lock_hash") != lock_hash:
        return None
    try:
        return BuildRecord(**data)
    except TypeError:
        raise InputError(
            f"{build_record_path(spec_path)}: damaged; delete it and build again"
        ) from None


def read_push_record(spec_path: Path, lock_hash: str) -> PushRecord | None:
    data = _load(push_record_path(spec_path))
    if data is None or data.get("lock_hash") != lock_hash:
        return None
    try:
        return PushRecord(**data)
    except TypeError:
        raise InputError(
            f"{push_record_path(spec_path)}: damaged; delete it and push again"
        ) from None
