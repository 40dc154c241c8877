"""Many specs in one `imagesmith build`, and the registry as a shared cache (substitution),
on Docker and podman against a real registry on 127.0.0.1 (issue 15, items 1 and 2).

The specs are tiny (the test base, one small apt package) so that the engines' caches make
repeated runs quick.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.engine.podman import PodmanEngine
from imagesmith.errors import EngineError
from imagesmith.model.lock import read_lock
from imagesmith.model.records import read_build_record
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from imagesmith.pipeline.push import push
from tests.integration.conftest import Registry, _free_port, second_podman
from tests.support import check_schema

pytestmark = pytest.mark.integration
runner = CliRunner()


@pytest.fixture
def logged_in(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_USER", registry.username)
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", registry.password)
    return registry


def _write_spec(folder: Path, name: str, base: str, package: str, repository: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = f'name = "{name}"\nversion = "1.0"\n[base]\nimage = "{base}"\n'
    text += f'[apt]\npackages = ["{package}"]\n[image]\ncmd = ["/bin/sh", "-c", "echo ok"]\n'
    if repository:
        text += f'[registry]\nrepository = "{repository}"\n'
    (folder / "env.toml").write_text(text)
    return folder / "env.toml"


def _remove_built(engine: Engine, spec_path: Path) -> None:
    """The tags and image a build recorded for `spec_path`, gone from `engine`."""
    record = spec_path.with_suffix(".build.json")
    if not record.exists():
        return
    built = json.loads(record.read_text())
    for ref in (*built["tags"], built["image_id"]):
        with contextlib.suppress(EngineError):
            engine.remove_image(ref, force=True)


def _no_build(**_: object) -> str:
    raise AssertionError("the engine was asked to build")


def test_a_second_builder_takes_the_image_from_the_registry_with_no_build_step(
    engine: Engine,
    base_image: str,
    logged_in: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first-cache"))
    name = f"it-subst-{uuid.uuid4().hex[:8]}"
    repository = f"{logged_in.host}/lab/{name}"
    spec = load_spec(_write_spec(tmp_path / "lab", name, base_image, "hello", repository))
    try:
        lines: list[str] = []
        began = time.monotonic()
        first = build(spec, engine, substitute=True, on_line=lines.append)
        cold = time.monotonic() - began
        assert first.substituted_from is None
        assert f"substitution: {repository} has no lock-" in "\n".join(lines)
        push(spec, read_lock(spec.lock_path), inputs=False, attestations=False)

        with second_podman(tmp_path, monkeypatch) as second:
            # The command CI runs on a fresh runner: the registry holds the lock's image, so
            # nothing is built, loaded or sent (any engine build or load fails the test).
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(PodmanEngine, "build", _no_build)
                patch.setattr(PodmanEngine, "load", _no_build)
                result = runner.invoke(
                    app, ["build", str(spec.path), "--engine", "podman", "--push", "--json"]
                )
            assert result.exit_code == 0, result.output
            assert "holds this lock's image; nothing to build or send" in result.stderr
            held = check_schema(json.loads(result.stdout))
            assert held["substituted_from"] == f"{repository}:{first.tags[1].split(':')[1]}"
            assert (held["digest"], held["image_id"]) == (first.digest, first.image_id)
            assert held["pushed"] == f"{repository}@{first.digest}" and held["loaded"] is False
            assert held["tags"] == [
                f"{repository}:1.0",
                f"{repository}:{first.tags[1].split(':')[1]}",
            ]
            assert not second.image_exists(first.image_id)
            # manifest works after it: the Job runs the image by that digest.
            job = runner.invoke(app, ["manifest", str(spec.path)])
            assert job.exit_code == 0 and f"@{first.digest}" in job.stdout, job.output

            # Asked to substitute, it loads the image, with no build step.
            began = time.monotonic()
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(PodmanEngine, "build", _no_build)
                result = runner.invoke(
                    app,
                    [
                        "build",
                        str(spec.path),
                        "--engine",
                        "podman",
                        "--push",
                        "--substitute",
                        "--json",
                    ],
                )
            warm = time.monotonic() - began
            print(f"{engine.name} cold build {cold:.1f} s; podman substitution {warm:.1f} s")
            assert result.exit_code == 0, result.output
            assert f"substitution: taking {repository}:lock-" in result.stderr
            taken = json.loads(result.stdout)
            assert (taken["digest"], taken["image_id"]) == (first.digest, first.image_id)
            assert taken["pushed"] == f"{repository}@{first.digest}" and "loaded" not in taken
            assert not second.image_exists(read_lock(spec.lock_path).base.digest)  # no base
            assert second.run(first.tags[0], ["/usr/bin/hello"]).output.strip() == "Hello, world!"
            record = read_build_record(spec.path, first.lock_hash)
            assert record is not None and record.digest == first.digest

        if engine.name == "docker":  # the same into Docker itself, with an empty cache
            _remove_built(engine, spec.path)
            monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "docker-cache"))
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(engine, "build", _no_build)
                again = build(spec, engine, substitute=True)
            assert (again.digest, again.image_id) == (first.digest, first.image_id)
            assert again.substituted_from is not None
    finally:
        _remove_built(engine, spec.path)


def test_an_unreachable_registry_skips_substitution_in_one_line_and_builds(
    docker_or_podman: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    from tests.integration.conftest import ensure_test_base

    engine = docker_or_podman
    base = ensure_test_base(engine, request)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = f"it-unreach-{uuid.uuid4().hex[:8]}"
    repository = f"127.0.0.1:{_free_port()}/lab/{name}"
    path = _write_spec(tmp_path / "lab", name, base, "hello", repository)
    try:
        result = runner.invoke(app, ["build", str(path), "--engine", engine.name, "--substitute"])
        assert result.exit_code == 0, result.output
        skipped = [line for line in result.stderr.splitlines() if "substitution" in line]
        assert len(skipped) == 1 and "skipped, cannot reach registry" in skipped[0], skipped
        assert skipped[0].endswith("building locally")
        assert result.stdout.startswith(f"built {name}:1.0 with {engine.name}")
    finally:
        _remove_built(engine, path)


def test_many_specs_in_one_command_a_failure_fails_only_itself(
    engine: Engine, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tag = uuid.uuid4().hex[:8]
    good = [
        _write_spec(tmp_path / "cat" / "a", f"it-cat-a-{tag}", base_image, "hello"),
        _write_spec(tmp_path / "cat" / "b", f"it-cat-b-{tag}", base_image, "tree"),
    ]
    bad = _write_spec(
        tmp_path / "cat" / "c", f"it-cat-c-{tag}", base_image, "no-such-package-imagesmith"
    )
    try:
        result = runner.invoke(
            app,
            ["build", str(tmp_path / "cat"), "--jobs", "2", "--engine", engine.name, "--json"],
        )
        report = json.loads(result.stdout)
        # The command's exit code is the failed spec's: 2, a package the suite lacks is bad input.
        assert result.exit_code == report["specs"][2]["exit_code"] == 2, result.output
        assert [s["spec"] for s in report["specs"]] == [str(p) for p in (*good, bad)]
        a, b, c = report["specs"]
        assert a["ok"] and b["ok"] and not c["ok"], result.output
        assert any("no-such-package" in p for p in c["problems"])
        assert report["problems"] == [f"{bad}: failed"]
        assert a["digest"] != b["digest"]
        for one in (a, b):
            assert engine.image_exists(one["tags"][0])

        # --fail-fast: the failing spec first, one job: the others do not start.
        result = runner.invoke(
            app,
            ["build", str(bad), *map(str, good), "--fail-fast", "--engine", engine.name],
        )
        assert result.exit_code == 2, result.output
        lines = result.stdout.splitlines()
        assert len(lines) == 3, result.stdout
        assert lines[0].startswith(f"failed  {bad}: ")
        assert lines[1] == f"skipped {good[0]}: not built: another spec failed first (--fail-fast)"
        assert lines[2].startswith(f"skipped {good[1]}: ")
    finally:
        for path in (*good, bad):
            _remove_built(engine, path)


def test_a_lock_with_the_same_apt_closure_takes_the_system_stage_from_the_registry(
    engine: Engine,
    base_image: str,
    logged_in: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`build --push` keeps the system stage and `push` stores it as `system-KEY`; after a
    Python pin changes, a fresh builder (podman, its own storage and cache) takes that
    stage from the registry and runs no apt step, and the image has the digest a build
    from scratch gives."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first-cache"))
    name = f"it-stage-{uuid.uuid4().hex[:8]}"
    repository = f"{logged_in.host}/lab/{name}"
    path = _write_spec(tmp_path / "lab", name, base_image, "hello", repository)
    text = path.read_text()
    path.write_text(text + '[python]\nrequirements = ["six==1.17.0"]\n')
    made: list[str] = []  # tags and images in `engine`, removed at the end
    try:
        spec = load_spec(path)
        built = build(spec, engine, substitute=True)
        made += [*built.tags, built.image_id]
        pushed: list[str] = []
        push(
            spec, read_lock(spec.lock_path), inputs=False, attestations=False, on_line=pushed.append
        )
        stage_lines = [line for line in pushed if line.startswith("push: system stage ")]
        assert len(stage_lines) == 1 and f"{repository}:system-" in stage_lines[0], pushed

        # Another Python pin: the same base, apt closure and user, so the same stage.
        path.write_text(text + '[python]\nrequirements = ["six==1.16.0"]\n')
        changed = build(load_spec(path), engine, relock=True)  # from scratch, no registry
        made += [*changed.tags, changed.image_id]
        assert changed.digest != built.digest

        with second_podman(tmp_path, monkeypatch) as second:
            lines: list[str] = []
            again = build(load_spec(path), second, substitute=True, on_line=lines.append)
            told = "\n".join(lines)
            assert f"system stage: taking {repository}:system-" in told, told
            assert "apt-get install" not in told and "Unpacking" not in told, told
            assert again.substituted_from is None  # the image itself was built here
            assert again.digest == changed.digest
            run = second.run(again.tags[0], ["python3", "-c", "import six; print(six.__version__)"])
            assert run.output.strip() == "1.16.0"
    finally:
        for ref in made:
            with contextlib.suppress(EngineError):
                engine.remove_image(ref, force=True)
