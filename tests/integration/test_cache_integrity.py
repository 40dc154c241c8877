"""A corrupt cache never reaches the image or the registry (issue 18), on Docker and podman.

One byte changed in every cached layer blob, then `build --no-cache` must print the digest
the first build printed and `push` must give the registry that digest; one byte changed in
every blob of the canonical layout kept for push, then `push` must remake it and succeed.
The cache is a fresh folder per test (XDG_CACHE_HOME), so the real user cache is untouched.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cache import integrity
from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError
from imagesmith.registry.client import RegistryClient

pytestmark = [pytest.mark.integration, pytest.mark.registry]

runner = CliRunner()


def _flip_one_byte(path: Path) -> None:
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _digest(output: str) -> str:
    found = re.search(r"^  digest: (sha256:[0-9a-f]{64})$", output, re.MULTILINE)
    assert found, output
    return found.group(1)


@pytest.fixture
def tiny_spec(
    engine: Engine, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = f"it-cache-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "spec" / "env.toml"
    spec.parent.mkdir()
    spec.write_text(
        f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base_image}"\n'
        '[env]\nMARK = "whole"\n[image]\ncmd = ["/bin/sh", "-c", "echo $MARK"]\n'
    )
    yield spec
    record = spec.with_suffix(".build.json")
    if record.exists():
        built = json.loads(record.read_text())
        for ref in (*built["tags"], built["image_id"]):
            with contextlib.suppress(EngineError):
                engine.remove_image(ref, force=True)


def test_corrupt_cache_is_rebuilt_to_the_same_digest_and_pushed(
    engine: Engine, tiny_spec: Path, open_registry: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache" / "imagesmith"
    first = runner.invoke(app, ["build", str(tiny_spec), "--engine", engine.name])
    assert first.exit_code == 0, first.output
    digest = _digest(first.output)

    layer_blobs = sorted((cache / "layers" / "blobs").iterdir())
    assert layer_blobs
    for blob in layer_blobs:
        _flip_one_byte(blob)
    integrity.forget()  # as a new imagesmith process would

    second = runner.invoke(app, ["build", str(tiny_spec), "--engine", engine.name, "--no-cache"])
    assert second.exit_code == 0, second.output
    assert _digest(second.output) == digest
    assert re.search(
        r"^cache: layer sha256:[0-9a-f]{64} was corrupt; rewritten$", second.output, re.MULTILINE
    ), second.output

    repository = f"{open_registry}/lab/it-cache-{uuid.uuid4().hex[:8]}"
    pushed = runner.invoke(app, ["push", str(tiny_spec), "--to", repository])
    assert pushed.exit_code == 0, pushed.output
    path = repository.split("/", 1)[1]
    assert RegistryClient(open_registry).manifest(path, "1.0")[0] == digest

    # Now every blob of the canonical layout kept for push (manifest, config, layers).
    layout = cache / "images" / digest.removeprefix("sha256:")
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        _flip_one_byte(blob)
    integrity.forget()
    again = runner.invoke(app, ["push", str(tiny_spec), "--to", f"{repository}-again"])
    assert again.exit_code == 0, again.output
    assert "was corrupt; rewriting the image from" in again.output
    assert RegistryClient(open_registry).manifest(f"{path}-again", "1.0")[0] == digest
