"""The run-time settings an image was first published with: information, never the image.

`[resources]`, `[job]` and `[registry]` are not in the lock or the image (changing them
needs no new image), so an image alone cannot say how it was meant to run. `push` keeps
what they were at the first push of each lock, twice:

- on this machine, `~/.cache/imagesmith/published/<lock hash>.json`, for the one who
  pushed;
- in the registry, beside the image: an OCI artifact manifest tagged `lock-<hash>.run`
  (its `subject` is the image, for registries with the referrers API), whose annotation
  holds the same JSON, for a collaborator who has only the image reference.

Neither is ever overwritten: a later push with other settings leaves the first ones, and
`manifest` and `sbatch` always read the current env.toml. `inspect` shows them, labelled
as information only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imagesmith.errors import RegistryError
from imagesmith.progress import LineCallback
from imagesmith.registry.artifacts import MANIFEST_TYPE, artifact_manifest, push_empty_config

ARTIFACT_TYPE = "application/vnd.imagesmith.run-settings.v1+json"
ANNOTATION = "dev.imagesmith.run-settings"
NOTE = (
    "information only: not part of the image or its digest; manifest and sbatch read "
    "the current env.toml"
)


@dataclass(frozen=True)
class FirstPublished:
    """The run-time tables of a spec when its lock's image was first pushed."""

    lock_hash: str
    pinned: str
    """repository@sha256:... the image was pushed as."""
    published: str
    """RFC 3339 UTC time of that push."""
    settings: Mapping[str, Any]
    """`[resources]`, `[job]` and `[registry]` as env.toml had them (absent ones left out)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "lock_hash": self.lock_hash,
            "pinned": self.pinned,
            "published": self.published,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, data: Any, *, lock_hash: str) -> FirstPublished | None:
        """The record in `data`, or None when it is not one for `lock_hash`."""
        if not isinstance(data, dict) or data.get("lock_hash") != lock_hash:
            return None
        pinned, published, settings = (
            data.get("pinned"),
            data.get("published"),
            data.get("settings"),
        )
        if not (
            isinstance(pinned, str) and isinstance(published, str) and isinstance(settings, dict)
        ):
            return None
        return cls(lock_hash, pinned, published, settings)


def runtime_settings(spec_data: Mapping[str, Any]) -> dict[str, Any]:
    """The run-time tables of a spec, as data."""
    from imagesmith.model.spec import RUNTIME_TABLES

    return {key: spec_data[key] for key in RUNTIME_TABLES if key in spec_data}


def settings_tag(lock_hash: str) -> str:
    """The tag the record goes under in the image's repository: `lock-<hash>.run`."""
    return "lock-" + lock_hash.removeprefix("sha256:")[:16] + ".run"


def local_path(lock_hash: str) -> Path:
    from imagesmith.inputs.context import cache_dir

    return cache_dir() / "published" / (lock_hash.removeprefix("sha256:") + ".json")


def read_local(lock_hash: str) -> FirstPublished | None:
    try:
        data = json.loads(local_path(lock_hash).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None  # none, or damaged: information only, never a reason to fail
    return FirstPublished.from_json(data, lock_hash=lock_hash)


def _write_local(record: FirstPublished) -> None:
    from imagesmith.model.lock import write_atomically

    path = local_path(record.lock_hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(
        path, json.dumps(record.to_json(), indent=2, sort_keys=True, default=str) + "\n"
    )


def settings_manifest(record: FirstPublished, *, subject_digest: str, subject_size: int) -> bytes:
    """The artifact manifest that carries `record` beside the image it describes."""
    return artifact_manifest(
        artifact_type=ARTIFACT_TYPE,
        layers=[],
        subject={"mediaType": MANIFEST_TYPE, "digest": subject_digest, "size": subject_size},
        annotations={
            ANNOTATION: json.dumps(
                record.to_json(), sort_keys=True, separators=(",", ":"), default=str
            )
        },
    )


def record_from_manifest(body: bytes, *, lock_hash: str) -> FirstPublished | None:
    try:
        manifest = json.loads(body)
        text = manifest["annotations"][ANNOTATION]
        return FirstPublished.from_json(json.loads(text), lock_hash=lock_hash)
    except (ValueError, KeyError, TypeError, RecursionError):
        return None


def read_published(repository: str, lock_hash: str) -> FirstPublished | None:
    """The record in `repository` (REGISTRY/PATH) for `lock_hash`; None when there is none.
    RegistryError when the registry cannot be asked."""
    from imagesmith.model.reference import parse_reference
    from imagesmith.registry.client import RegistryClient

    ref = parse_reference(repository)
    try:
        _, _, body = RegistryClient(ref.registry).manifest(ref.path, settings_tag(lock_hash))
    except RegistryError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    return record_from_manifest(body, lock_hash=lock_hash)


def publish(
    pinned: str,
    *,
    lock_hash: str,
    spec_data: Mapping[str, Any],
    subject_size: int,
    on_line: LineCallback | None = None,
    now: datetime | None = None,
) -> FirstPublished:
    """Keep the run-time settings of this push unless a first push already kept some:
    on this machine, then in the image's repository. The first record found wins."""
    from imagesmith.model.reference import parse_reference
    from imagesmith.registry.client import Pusher, RegistryClient

    repository, _, digest = pinned.partition("@")
    moment = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = read_local(lock_hash) or FirstPublished(
        lock_hash, pinned, moment, runtime_settings(spec_data)
    )
    in_registry = read_published(repository, lock_hash)
    if in_registry is None:
        ref = parse_reference(repository)
        pusher = Pusher(RegistryClient(ref.registry), ref.path, on_line)
        push_empty_config(pusher)
        manifest = settings_manifest(first, subject_digest=digest, subject_size=subject_size)
        pusher.push_manifest(settings_tag(lock_hash), manifest, MANIFEST_TYPE)
    else:
        first = in_registry
    if read_local(lock_hash) is None:
        _write_local(first)
    return first


def find(lock_hash: str, repo_digests: Sequence[str]) -> tuple[FirstPublished | None, str]:
    """The record for `lock_hash` and where it was found: this machine's, else that of the
    first registry that holds the image (`repo_digests`); (None, why) when none has one."""
    local = read_local(lock_hash)
    if local is not None:
        return local, "recorded on this machine at push"
    why = "not pushed from this machine, and the image names no registry it came from"
    for repo_digest in repo_digests:
        repository = repo_digest.partition("@")[0]
        try:
            found = read_published(repository, lock_hash)
        except (RegistryError, ValueError) as exc:
            why = f"cannot ask {repository}: {exc}"
            continue
        if found is not None:
            return found, f"from {repository}:{settings_tag(lock_hash)}"
        why = f"{repository} holds none for this lock (pushed before imagesmith 0.6.0?)"
    return None, why


def _value(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def describe(record: FirstPublished | None, source: str) -> list[str]:
    """The lines `inspect` prints, each labelled as information only."""
    lines = [f"  run-time settings at first publication ({NOTE}):"]
    if record is None:
        return [*lines, f"    none known: {source}"]
    lines.append(f"    first published {record.published} as {record.pinned} ({source})")
    if not record.settings:
        lines.append("    (the spec had no [resources], [job] or [registry] table)")
    for table, values in sorted(record.settings.items()):
        if not isinstance(values, dict):
            lines.append(f"    {table} = {_value(values)}")
            continue
        for key, value in sorted(values.items()):
            lines.append(f"    {table}.{key} = {_value(value)}")
    return lines


def report(record: FirstPublished | None, source: str) -> dict[str, Any]:
    """What `inspect --json` says about them: `run_settings`."""
    if record is None:
        return {"note": NOTE, "found": False, "source": source}
    return {"note": NOTE, "found": True, "source": source, **record.to_json()}
