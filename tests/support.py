"""Helpers the tests share: spec folders, fake locks and records, the validators, clean-up.

- `write_spec`: a spec folder from TOML text (and files beside it);
- `locked` / `pushed`: a lock made without network (`tests.fixtures.make_lock`) written
  beside a spec, and a push record for it, so that commands needing an image digest
  (manifest, sbatch) have one;
- `tool`: kubernetes-validate, checkov, ... from the test venv, the tools venv or PATH;
- `ImageTracker`: every image a test makes, removed at the end whatever happened;
- `check_schema`: a `--json` report checked against its command's schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError
from imagesmith.model.lock import Lock, write_lock
from imagesmith.model.records import PushRecord, push_record_path, write_record
from tests.fixtures.make_lock import make_lock

REPO = Path(__file__).resolve().parent.parent

TINY_SPEC = """\
name = "tiny"
version = "1.0"
[base]
image = "debian:bookworm"
"""
"""A spec with nothing to fetch: no apt packages, no [python] (its lock builds offline)."""

PUSHED_REPOSITORY = "registry.example.edu/lab/analysis"
PUSHED_DIGEST = "sha256:" + "2" * 64
PINNED_VERSION = "0.0.0+test"


def write_spec(
    folder: Path, text: str = TINY_SPEC, *, files: Mapping[str, str | bytes] | None = None
) -> Path:
    """`folder/env.toml` holding `text`, with `files` (relative path -> content) beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (files or {}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    spec = folder / "env.toml"
    spec.write_text(text, encoding="utf-8")
    return spec


def locked(spec: Path, *, pin_version: bool = False) -> Lock:
    """A lock for `spec` with plausible pins (no network), written beside it as env.lock.

    `pin_version`: the lock says it was written by imagesmith "0.0.0+test" rather than this
    one, so that its hash (which manifests carry) stays the same across releases."""
    lock = make_lock(spec)
    if pin_version:
        lock = dataclasses.replace(lock, imagesmith_version=PINNED_VERSION)
    write_lock(lock, spec.with_suffix(".lock"))
    return lock


def pushed(
    spec: Path,
    *,
    digest: str = PUSHED_DIGEST,
    repository: str = PUSHED_REPOSITORY,
    uid: int = 1000,
    gid: int = 1000,
    pin_version: bool = False,
) -> Lock:
    """`spec` locked (`locked`), with a push record of `repository@digest` for that lock."""
    lock = locked(spec, pin_version=pin_version)
    write_record(
        push_record_path(spec),
        PushRecord(
            repository=repository,
            digest=digest,
            tags=("1.0.0",),
            lock_hash=lock.lock_hash,
            uid=uid,
            gid=gid,
        ),
    )
    return lock


def tool(name: str) -> str:
    """A validator or linter: from the test venv, the tools venv (.venv-tools, where
    scripts/setup-venv.sh puts kubernetes-validate and checkov) or PATH. A missing one
    fails the test: the fast tier expects them installed."""
    search = os.pathsep.join(
        [
            str(Path(sys.executable).parent),
            str(REPO / ".venv-tools" / "bin"),
            os.environ.get("PATH", ""),
        ]
    )
    found = shutil.which(name, path=search)
    if found is None:
        pytest.fail(f"{name} is not installed: scripts/setup-venv.sh puts it in .venv-tools")
    return found


class ImageTracker:
    """The images (tags or IDs) a test made in `engine`; `cleanup` removes them all, newest
    first, reporting (never raising) what could not be removed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.refs: list[str] = []

    def add(self, ref: str) -> str:
        self.refs.append(ref)
        return ref

    def cleanup(self) -> list[str]:
        """Remove every image added; the ones that could not be removed, with why."""
        failed = []
        for ref in reversed(self.refs):
            try:
                self.engine.remove_image(ref, force=True)
            except EngineError as exc:
                failed.append(f"{ref}: {exc}")
                print(f"cleanup: could not remove {ref}: {exc}")
        self.refs.clear()
        return failed


def check_schema(report: dict[str, Any]) -> dict[str, Any]:
    """`report` after checking it against schemas/cli/<its command>.json."""
    schema = json.loads((REPO / "schemas" / "cli" / f"{report['command']}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(report)
    return report
