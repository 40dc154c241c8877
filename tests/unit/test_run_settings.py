"""The run-time settings an image was first pushed with: kept apart from it, shown by inspect.

The formatting and the records are pure; `inspect` is run through the CLI with an engine
that knows only one image's labels and a record in a cache folder of the test's. The
registry side (push, then inspect of the image pulled by a collaborator) is in
tests/integration/test_run_settings_push.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import ImageInfo
from imagesmith.model.labels import LOCK
from imagesmith.model.lock import Lock
from imagesmith.pipeline import run_settings
from imagesmith.pipeline.run_settings import FirstPublished, describe, settings_manifest
from imagesmith.render.containerfile import embedded_lock
from imagesmith.reports import inspect_report
from tests.fixtures.make_lock import make_lock
from tests.support import check_schema

runner = CliRunner()
DIGEST = "sha256:" + "ab" * 32
PINNED = f"registry.example.edu/lab/analysis@{DIGEST}"


def first_of(lock: Lock, **settings: Any) -> FirstPublished:
    return FirstPublished(lock.lock_hash, PINNED, "2026-12-01T10:00:00Z", settings)


def test_the_settings_are_the_run_time_tables_only(example_dir: Path) -> None:
    from imagesmith.model.spec_loading import load_spec

    spec = load_spec(example_dir / "env.toml")
    settings = run_settings.runtime_settings(spec.data)
    assert set(settings) == {"resources", "job", "registry"}
    assert settings["resources"] == spec.data["resources"]
    assert "python" not in settings and "name" not in settings


def test_describe_labels_every_line_as_information_only(example_dir: Path) -> None:
    lock = make_lock(example_dir / "env.toml")
    record = first_of(
        lock,
        resources={"memory": "32Gi", "cpu": "2"},
        job={"command": ["python3", "/opt/lab/train.py"]},
    )
    assert describe(record, "recorded on this machine at push") == [
        "  run-time settings at first publication (information only: not part of the image "
        "or its digest; manifest and sbatch read the current env.toml):",
        f"    first published 2026-12-01T10:00:00Z as {PINNED} (recorded on this machine at push)",
        '    job.command = ["python3", "/opt/lab/train.py"]',
        '    resources.cpu = "2"',
        '    resources.memory = "32Gi"',
    ]
    assert describe(first_of(lock), "x")[-1] == (
        "    (the spec had no [resources], [job] or [registry] table)"
    )
    none = describe(None, "not pushed from this machine")
    assert none[-1] == "    none known: not pushed from this machine"


def test_the_registry_form_reads_back_and_names_its_image(example_dir: Path) -> None:
    lock = make_lock(example_dir / "env.toml")
    record = first_of(lock, resources={"memory": "32Gi"})
    body = settings_manifest(record, subject_digest=DIGEST, subject_size=1234)
    manifest = json.loads(body)
    assert manifest["subject"] == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": DIGEST,
        "size": 1234,
    }
    assert manifest["artifactType"] == run_settings.ARTIFACT_TYPE
    assert run_settings.record_from_manifest(body, lock_hash=lock.lock_hash) == record
    # Another lock's record, or a manifest that is not one, is no record for this lock.
    assert run_settings.record_from_manifest(body, lock_hash="sha256:" + "0" * 64) is None
    assert (
        run_settings.record_from_manifest(b'{"annotations": {}}', lock_hash=lock.lock_hash) is None
    )
    assert run_settings.record_from_manifest(b"not json", lock_hash=lock.lock_hash) is None
    assert run_settings.settings_tag(lock.lock_hash) == (
        "lock-" + lock.lock_hash.removeprefix("sha256:")[:16] + ".run"
    )


def test_inspect_json_carries_them_and_matches_its_schema(example_dir: Path) -> None:
    lock = make_lock(example_dir / "env.toml")
    info = ImageInfo(id="sha256:" + "cd" * 32, labels={LOCK: embedded_lock(lock)})
    record = first_of(lock, resources={"memory": "32Gi"})
    report = check_schema(
        inspect_report("x:1", info, lock, run_settings=(record, "recorded on this machine"))
    )
    assert report["run_settings"]["found"] is True
    assert report["run_settings"]["settings"] == {"resources": {"memory": "32Gi"}}
    assert report["run_settings"]["note"].startswith("information only")
    assert "resources" not in report["spec"]  # the image's spec never holds them
    missing = check_schema(inspect_report("x:1", info, lock, run_settings=(None, "none")))
    assert missing["run_settings"] == {"note": run_settings.NOTE, "found": False, "source": "none"}


class _OneImage:
    """An engine that knows one image's labels and must do nothing else."""

    name = "fake"

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def inspect_image(self, ref: str) -> ImageInfo:
        return ImageInfo(id="sha256:" + "1" * 64, labels=self.labels)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked to {name}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_inspect_shows_the_first_push_kept_on_this_machine(
    example_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import imagesmith.engine

    lock = make_lock(example_dir / "env.toml")
    fake = _OneImage({LOCK: embedded_lock(lock)})
    monkeypatch.setattr(imagesmith.engine, "choose_engine", lambda _: (fake, "test"))
    before = runner.invoke(app, ["inspect", "lab:1"])
    assert before.exit_code == 0, before.output
    assert "    none known: not pushed from this machine" in before.stdout

    path = run_settings.local_path(lock.lock_hash)
    assert path.is_relative_to(cache)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(first_of(lock, resources={"memory": "8Gi"}).to_json()))
    after = runner.invoke(app, ["inspect", "lab:1"])
    assert after.exit_code == 0, after.output
    lines = after.stdout.splitlines()
    assert lines[0].startswith("lab:1: lab-analysis:1.0.0")
    assert "  run-time settings at first publication (information only:" in after.stdout
    assert '    resources.memory = "8Gi"' in lines
    report = json.loads(runner.invoke(app, ["inspect", "lab:1", "--json"]).stdout)
    assert check_schema(report)["run_settings"]["pinned"] == PINNED
    # --show spec prints the image's spec alone, which has no run-time tables.
    spec = runner.invoke(app, ["inspect", "lab:1", "--show", "spec"])
    assert "[resources]" not in spec.stdout and "8Gi" not in spec.stdout

    path.write_text("{damaged")  # information only: a damaged record is no record
    damaged = runner.invoke(app, ["inspect", "lab:1"])
    assert damaged.exit_code == 0 and "none known" in damaged.stdout
