"""What `--json` prints: one object per command, built from values, never from the terminal.

Every object has the same envelope (`command`, `ok`, `exit_code`, `problems`) and, when the
command succeeded, the fields its schema in schemas/cli/COMMAND.json lists. A failure is the
envelope alone, with the problems the command printed on standard error and its exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.engine.base import ImageInfo
    from imagesmith.model.lock import Lock
    from imagesmith.model.records import PushRecord
    from imagesmith.model.spec import Spec
    from imagesmith.pipeline.build import BuildResult
    from imagesmith.pipeline.catalogue import Outcome
    from imagesmith.pipeline.run_settings import FirstPublished
    from imagesmith.pipeline.verify import Verdict

Report = dict[str, Any]


def envelope(command: str, *, exit_code: int = 0, problems: Sequence[str] = ()) -> Report:
    return {
        "command": command,
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "problems": list(problems),
    }


def failure(command: str, exit_code: int, problems: Sequence[str]) -> Report:
    """What a command that stopped on an error prints with --json."""
    return envelope(command, exit_code=exit_code, problems=problems)


def _written(output: Path | None, text: str) -> dict[str, Any]:
    """`output` when the text went to a file, else the text itself (stdout holds the JSON)."""
    if output is None:
        return {"output": None, "text": text}
    return {"output": str(output)}


def validate_report(spec: Spec) -> Report:
    return {
        **envelope("validate"),
        "spec": as_typed(spec.path),
        "name": spec.name,
        "version": spec.version,
        "apt_packages": len(spec.apt_packages),
        "python_requirements": len(spec.python.requirements) if spec.python else 0,
    }


def _pins(lock: Lock) -> dict[str, Any]:
    return {
        "lock_hash": lock.lock_hash,
        "base": {"reference": lock.base.reference, "digest": lock.base.digest},
        "apt_packages": len(lock.apt.packages),
        "python_distributions": len(lock.python.packages) if lock.python else 0,
    }


def lock_report(
    lock: Lock, *, path: Path, written: bool, changes: Sequence[str], seconds: float
) -> Report:
    return {
        **envelope("lock"),
        "check": False,
        "lock": as_typed(path),
        "written": written,
        "changes": list(changes),
        "seconds": round(seconds, 3),
        **_pins(lock),
    }


def lock_check_report(*, path: Path, problem: str | None, lock: Lock | None) -> Report:
    """`lock --check`: fresh (exit 0) or the reason it is not (exit 1)."""
    report = {
        **envelope("lock", exit_code=1 if problem else 0, problems=[problem] if problem else []),
        "check": True,
        "lock": as_typed(path),
        "fresh": problem is None,
    }
    if lock is not None:
        report["lock_hash"] = lock.lock_hash
    return report


def render_report(lock: Lock, *, output: Path | None, text: str) -> Report:
    return {**envelope("render"), "lock_hash": lock.lock_hash, **_written(output, text)}


def manifest_report(
    lock: Lock,
    *,
    kind: str,
    image: str,
    output: Path | None,
    text: str,
    warnings: Sequence[str],
) -> Report:
    return {
        **envelope("manifest"),
        "kind": kind,
        "image": image,
        "lock_hash": lock.lock_hash,
        "warnings": list(warnings),
        **_written(output, text),
    }


def sbatch_report(
    lock: Lock, *, runtime: str, image: str, output: Path | None, text: str
) -> Report:
    return {
        **envelope("sbatch"),
        "runtime": runtime,
        "image": image,
        "lock_hash": lock.lock_hash,
        **_written(output, text),
    }


def build_report(result: BuildResult, *, pushed: str | None) -> Report:
    report = {**envelope("build"), **result.as_json()}
    if pushed is not None:
        report["pushed"] = pushed
    return report


def catalogue_report(
    outcomes: Sequence[Outcome[tuple[BuildResult, str | None]]], *, exit_code: int
) -> Report:
    """`build --json` of many specs: the envelope and, under `specs`, one object per spec in
    the order given, each what `build --json` prints for that spec alone plus `spec`."""
    specs: list[Report] = []
    for outcome in outcomes:
        spec = as_typed(outcome.spec)
        if outcome.value is None:
            one = failure("build", outcome.exit_code, outcome.problems)
            if outcome.skipped:
                one["skipped"] = True
        else:
            result, pushed = outcome.value
            one = build_report(result, pushed=pushed)
        specs.append({**one, "spec": spec})
    failed = [s for s in specs if not s["ok"]]
    problems = [f"{s['spec']}: {'not built' if s.get('skipped') else 'failed'}" for s in failed]
    return {**envelope("build", exit_code=exit_code, problems=problems), "specs": specs}


def push_report(record: PushRecord) -> Report:
    return {
        **envelope("push"),
        "pinned": record.pinned,
        "repository": record.repository,
        "digest": record.digest,
        "tags": list(record.tags),
        "lock_hash": record.lock_hash,
    }


def image_summary(image: str, info: ImageInfo, lock: Lock) -> dict[str, Any]:
    """What an image carries: its ID, the spec's name and version, the lock's pins, the spec."""
    spec = lock.spec
    return {
        "image": image,
        "image_id": info.id,
        "name": spec.name,
        "version": spec.version,
        **_pins(lock),
        "spec": dict(lock.spec_data),
    }


def inspect_report(
    image: str,
    info: ImageInfo,
    lock: Lock,
    *,
    run_settings: tuple[FirstPublished | None, str] = (None, "not looked up"),
) -> Report:
    """`run_settings`: what the image was first pushed with, and where that was found
    (information only: not in the image or its digest)."""
    from imagesmith.pipeline.run_settings import report

    return {
        **envelope("inspect"),
        **image_summary(image, info, lock),
        "run_settings": report(*run_settings),
    }


def pull_report(pinned: str, *, engine: str, info: ImageInfo, lock: Lock) -> Report:
    return {
        **envelope("pull"),
        "pinned": pinned,
        "engine": engine,
        **image_summary(pinned, info, lock),
    }


def verify_report(verdict: Verdict) -> Report:
    problems = []
    if not verdict.identical:
        problems = [
            f"NOT reproducible: expected {verdict.reference}, the rebuild gave {verdict.rebuilt}",
            *verdict.differences,
        ]
    return {
        **envelope("verify", exit_code=0 if verdict.identical else 1, problems=problems),
        "identical": verdict.identical,
        "reference": verdict.reference,
        "rebuilt": verdict.rebuilt,
        "differences": list(verdict.differences),
    }
