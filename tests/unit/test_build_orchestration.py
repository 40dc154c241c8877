"""`build`, `verify SPEC`, `verify IMAGE` and `push` orchestration through `FakeEngine`
(tests/fakes.py): no engine, no network. `push` talks to a registry, not to the engine:
there the stand-in is `registry.push_layout`, the one call that sends a layout.

Everything but the engine is real: the lock check, the record, the render, the context,
the canonical rewrite, the layout in the cache and the load of the canonical image. The
spec has no apt packages and no [python], so its lock fetches nothing. Real-engine
counterparts: tests/integration/test_noop_build.py, test_engine_faults.py, test_reproducible.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from imagesmith.cli import app
from imagesmith.engine.base import Engine
from imagesmith.errors import BuildError, EngineError, InputError, RegistryError
from imagesmith.model.lock import read_lock
from imagesmith.model.records import build_record_path, read_build_record, read_push_record
from imagesmith.model.reference import ImageReference
from imagesmith.model.spec import Spec
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build, image_tags
from imagesmith.pipeline.canonical_build import layout_dir
from imagesmith.pipeline.push import push
from imagesmith.pipeline.verify import verify, verify_image
from imagesmith.render.containerfile import content_tag, lock_in_image
from tests.fakes import FakeEngine
from tests.support import TINY_SPEC, locked, write_spec

runner = CliRunner()


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    """A locked spec with nothing to fetch and one file copied into the image; the cache
    is the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    path = write_spec(
        tmp_path / "lab",
        TINY_SPEC
        + '[env]\nMARK = "one"\n[image]\ncopy = [{ src = "data/", dest = "/opt/data/" }]\n',
        files={"data/table.csv": "a,b\n1,2\n"},
    )
    locked(path)
    return load_spec(path)


def relock(spec: Spec, old: str, new: str) -> Spec:
    """The spec with `old` replaced by `new` in env.toml, locked again."""
    spec.path.write_text(spec.path.read_text().replace(old, new))
    locked(spec.path)
    return load_spec(spec.path)


def _inject(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> None:
    """The CLI's engine is `engine`, whatever --engine says (`cli.chosen_engine`)."""
    monkeypatch.setattr("imagesmith.engine.choose_engine", lambda name="auto": (engine, "test"))


def test_a_build_tags_records_and_keeps_the_canonical_layout(spec: Spec) -> None:
    engine = FakeEngine()
    result = build(spec, engine)
    lock = read_lock(spec.lock_path)
    assert len(engine.builds) == 1 and not engine.builds[0]["no_cache"]
    assert result.tags == image_tags(lock, ()) == ("tiny:1.0", f"tiny:{content_tag(lock)}")
    assert engine.tags_of(result.image_id) == sorted(result.tags)
    # What was loaded is the canonical image: its ID is its config's digest in the layout.
    manifest = json.loads((layout_dir(result.digest) / "index.json").read_text())["manifests"][0]
    assert manifest["digest"] == result.digest
    config = engine.config(result.image_id)
    assert config["created"] == "2025-05-20T00:00:00Z"  # the lock's epoch, not the build's
    record = read_build_record(spec.path, lock.lock_hash)
    assert record is not None
    assert (record.image_id, record.digest, record.tags, record.engine) == (
        result.image_id,
        result.digest,
        result.tags,
        "fake",
    )
    # The built (pre-canonical) image is kept untagged for the build cache; the copied
    # file went into the context the engine got.
    built = [i for i in engine.images if i != result.image_id]
    assert len(built) == 1 and engine.tags_of(built[0]) == []


def test_the_same_inputs_build_the_same_digest_in_a_fresh_engine_and_cache(
    spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(spec, FakeEngine())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    build_record_path(spec.path).unlink()
    second = build(spec, FakeEngine())
    assert (second.digest, second.image_id) == (first.digest, first.image_id)
    changed = build(relock(spec, 'MARK = "one"', 'MARK = "two"'), FakeEngine())
    assert changed.digest != first.digest


def test_plain_layers_for_the_load_make_the_same_image(
    spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The route podman takes (`load_compressed` false: plain layers kept from the rewrite)
    loads the same canonical image as Docker's (gzip layers)."""
    docker_like, podman_like = FakeEngine(), FakeEngine(load_compressed=False)
    gzip = build(spec, docker_like)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    build_record_path(spec.path).unlink()
    plain = build(spec, podman_like)
    assert (plain.digest, plain.image_id) == (gzip.digest, gzip.image_id)
    assert all(name.endswith(".tar.gz") for name in docker_like.loaded[0])
    assert not any(name.endswith(".gz") for name in podman_like.loaded[0])


def test_a_no_op_build_answers_from_the_record_without_building(spec: Spec) -> None:
    engine = FakeEngine()
    first = build(spec, engine)
    engine.calls.clear()
    again = build(spec, engine)
    assert len(engine.builds) == 1  # no second engine build
    assert engine.calls == ["inspect_image"]  # one inspect: the image and its tags are there
    assert (again.image_id, again.digest, again.tags) == (first.image_id, first.digest, first.tags)
    assert not again.locked
    # Without the image in the engine, the record is not enough: it builds again.
    engine.remove_image(first.image_id, force=True)
    rebuilt = build(spec, engine)
    assert len(engine.builds) == 2 and rebuilt.digest == first.digest


def test_no_cache_always_builds(spec: Spec) -> None:
    engine = FakeEngine()
    build(spec, engine)
    build(spec, engine, no_cache=True)
    assert [b["no_cache"] for b in engine.builds] == [False, True]


#: (FakeEngine settings, the exception `build` lets through): the engine build fails
#: (after leaving an intermediate image) or is interrupted; the canonical image does not
#: load; the second of the two tags fails or is interrupted.
FAULTS = {
    "build fails": ({"fail_build_at": 1}, BuildError),
    "build interrupted": ({"fail_build_at": 1, "interrupt": True}, KeyboardInterrupt),
    "load fails": ({"fail_load": True}, EngineError),
    "second tag fails": ({"fail_tag_at": 2}, EngineError),
    "second tag interrupted": ({"fail_tag_at": 2, "interrupt": True}, KeyboardInterrupt),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_build_that_fails_halfway_leaves_no_tag_and_no_record(
    spec: Spec, tmp_path: Path, fault: str
) -> None:
    settings, raised = FAULTS[fault]
    engine = FakeEngine(**settings)  # type: ignore[arg-type]
    lock_bytes = spec.lock_path.read_bytes()
    with pytest.raises(raised):
        build(spec, engine)
    assert engine.tags == {}
    assert not build_record_path(spec.path).exists()
    assert spec.lock_path.read_bytes() == lock_bytes
    assert not list((tmp_path / "cache").rglob(".staging-*"))
    # The next build, with the fault gone, succeeds and tags.
    engine.fail_build_at = engine.fail_tag_at = None
    engine.fail_load = False
    result = build(spec, engine)
    assert engine.tags_of(result.image_id) == sorted(result.tags)
    assert read_build_record(spec.path, result.lock_hash) is not None


def test_a_failed_rebuild_keeps_the_last_builds_record_and_its_image(spec: Spec) -> None:
    engine = FakeEngine()
    first = build(spec, engine)
    record = build_record_path(spec.path).read_bytes()
    engine.fail_build_at = 2
    with pytest.raises(BuildError):
        build(spec, engine, no_cache=True)
    assert build_record_path(spec.path).read_bytes() == record
    assert engine.tags_of(first.image_id) == sorted(first.tags)
    partial = [i for i, image in engine.images.items() if image.partial]
    assert len(partial) == 1 and engine.tags_of(partial[0]) == []


def test_a_failed_tag_of_a_new_build_gives_the_version_tag_back_to_the_last_image(
    spec: Spec,
) -> None:
    """`name:version` stays across a spec change: the build that moves it and then fails
    puts it back where it was, instead of leaving no image with it."""
    engine = FakeEngine()
    first = build(spec, engine)
    engine.fail_tag_at = engine._tag_calls + 2  # the new build's second tag
    with pytest.raises(EngineError):
        build(relock(spec, 'MARK = "one"', 'MARK = "two"'), engine)
    assert engine.tags_of(first.image_id) == sorted(first.tags)


def test_a_failed_build_through_the_cli_is_one_line_and_exit_1(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(fail_build_at=1)
    _inject(monkeypatch, engine)
    result = runner.invoke(app, ["build", str(spec.path)])
    assert result.exit_code == 1, result.output
    assert "fake: build failed at step 2/2" in result.stderr
    assert "Traceback" not in result.output
    assert engine.tags == {} and not build_record_path(spec.path).exists()


# -- verify ------------------------------------------------------------------------------


def test_verify_of_a_reproducible_build_is_identical_and_tidies_up(spec: Spec) -> None:
    engine = FakeEngine()
    built = build(spec, engine)
    images = set(engine.images)
    verdict = verify(spec, read_lock(spec.lock_path), engine)
    assert verdict.identical and verdict.differences == ()
    assert verdict.reference == verdict.rebuilt == built.digest
    assert [b["no_cache"] for b in engine.builds] == [False, True]
    # The rebuild is the same image: nothing new is kept, the build's image keeps its tags.
    assert set(engine.images) <= images
    assert engine.tags_of(built.image_id) == sorted(built.tags)


def test_verify_lists_what_differs_and_removes_the_rebuild(spec: Spec) -> None:
    engine = FakeEngine(drift=True)
    built = build(spec, engine)
    verdict = verify(spec, read_lock(spec.lock_path), engine)
    assert not verdict.identical
    assert verdict.reference == built.digest and verdict.rebuilt != built.digest
    assert any("imagesmith-fake/build-number" in line for line in verdict.differences), (
        verdict.differences
    )
    assert not any("table.csv" in line for line in verdict.differences)
    # Only the build's images stay: the rebuild's canonical and built images are gone.
    assert len(engine.images) == 2 and engine.tags_of(built.image_id) == sorted(built.tags)


def test_verify_cli_exits_1_and_prints_the_differences(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(drift=True)
    _inject(monkeypatch, engine)
    built = runner.invoke(app, ["build", str(spec.path)])
    assert built.exit_code == 0, built.output
    result = runner.invoke(app, ["verify", str(spec.path)])
    assert result.exit_code == 1, result.output
    assert "engine: fake (test)" in result.stderr
    assert "NOT reproducible: expected sha256:" in result.stderr
    assert "imagesmith-fake/build-number" in result.stderr
    assert "Traceback" not in result.output
    assert len(engine.builds) == 2


def test_verify_cli_exits_0_when_the_rebuild_is_identical(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine()
    _inject(monkeypatch, engine)
    assert runner.invoke(app, ["build", str(spec.path)]).exit_code == 0
    again = runner.invoke(app, ["build", str(spec.path), "--json"])
    assert again.exit_code == 0, again.output
    assert len(engine.builds) == 1  # the CLI's no-op build too: no engine build
    result = runner.invoke(app, ["verify", str(spec.path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["identical"] is True


# -- verify IMAGE: from the lock the image carries ----------------------------------------


@pytest.fixture
def plain_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    """A locked spec that copies nothing (verify IMAGE would take copied files out of the
    image's layers, which the fake does not hold as a real build's)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_spec(tmp_path / "lab", TINY_SPEC + '[env]\nMARK = "one"\n')
    locked(path)
    return load_spec(path)


def test_the_built_image_carries_its_lock_in_a_label(plain_spec: Spec) -> None:
    engine = FakeEngine()
    result = build(plain_spec, engine)
    info = engine.inspect_image("tiny:1.0")
    _, carried = lock_in_image("tiny:1.0", info.labels, path=plain_spec.lock_path)
    assert carried == read_lock(plain_spec.lock_path)
    assert info.id == result.image_id and info.env["MARK"] == "one"


def test_verify_image_is_identical_for_a_reproducible_build(plain_spec: Spec) -> None:
    engine = FakeEngine()
    built = build(plain_spec, engine)
    verdict = verify_image("tiny:1.0", engine)
    assert verdict.identical and verdict.differences == ()
    assert verdict.reference == verdict.rebuilt == built.image_id
    assert engine.tags_of(built.image_id) == sorted(built.tags)


def test_verify_image_cli_exits_1_with_the_differences(
    plain_spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = FakeEngine(drift=True)
    _inject(monkeypatch, engine)
    built = build(plain_spec, engine)
    result = runner.invoke(app, ["verify", "tiny:1.0"])
    assert result.exit_code == 1, result.output
    assert f"NOT reproducible: expected {built.image_id}" in result.stderr
    assert "imagesmith-fake/build-number" in result.stderr
    assert engine.tags_of(built.image_id) == sorted(built.tags)


# -- push: after a fake build, at the registry boundary -----------------------------------

TO = "registry.example.edu/lab/tiny"


class Registry:
    """Stands in for `registry.push_layout`: checks each blob of the layout it is given
    against its digest and answers the digest of the layout's manifest, as a registry
    that stored those bytes does (or `answer`, a registry that changed them)."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.pushes: list[tuple[Path, str, tuple[str, ...]]] = []

    def __call__(
        self, layout: Path, repository: ImageReference, tags: Sequence[str], **_: Any
    ) -> str:
        for blob in (layout / "blobs" / "sha256").iterdir():
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
        self.pushes.append((layout, repository.familiar_repository, tuple(tags)))
        index = json.loads((layout / "index.json").read_text())
        return self.answer or str(index["manifests"][0]["digest"])


def test_push_sends_the_layout_the_build_recorded_and_records_it(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    monkeypatch.setattr("imagesmith.pipeline.push.push_layout", registry)
    built = build(spec, FakeEngine())
    lock = read_lock(spec.lock_path)
    record = push(spec, lock, to=TO, inputs=False, attestations=False)
    assert registry.pushes == [(layout_dir(built.digest), TO, ("1.0", content_tag(lock)))]
    assert record.pinned == f"{TO}@{built.digest}"
    assert read_push_record(spec.path, lock.lock_hash) == record


def test_a_registry_that_holds_another_digest_leaves_no_push_record(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "imagesmith.pipeline.push.push_layout", Registry(answer="sha256:" + "9" * 64)
    )
    build(spec, FakeEngine())
    lock = read_lock(spec.lock_path)
    with pytest.raises(RegistryError, match="the registry holds sha256:9999"):
        push(spec, lock, to=TO, inputs=False, attestations=False)
    assert read_push_record(spec.path, lock.lock_hash) is None


def test_push_without_a_build_or_its_layout_says_what_to_run(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry()
    monkeypatch.setattr("imagesmith.pipeline.push.push_layout", registry)
    lock = read_lock(spec.lock_path)
    with pytest.raises(InputError, match="no image built from this env.lock yet"):
        push(spec, lock, to=TO, inputs=False, attestations=False)
    built = build(spec, FakeEngine())
    shutil.rmtree(layout_dir(built.digest))
    with pytest.raises(InputError, match="no longer in imagesmith's cache"):
        push(spec, lock, to=TO, inputs=False, attestations=False)
    assert registry.pushes == []


@pytest.mark.parametrize("answers", [True, False])
def test_the_system_stage_is_asked_for_only_when_the_registry_answered(
    spec: Spec, monkeypatch: pytest.MonkeyPatch, answers: bool
) -> None:
    """`--substitute` asks the registry for the image first; one that did not answer is not
    asked again for the system stage (one line and one timeout, not two)."""
    import imagesmith.pipeline.build
    import imagesmith.pipeline.substitute
    from imagesmith.registry.client import RegistryUnreachable

    repository = "127.0.0.1:9/lab/tiny"
    spec.path.write_text(spec.path.read_text() + f'[registry]\nrepository = "{repository}"\n')
    spec = load_spec(spec.path)

    def find(repo: str, lock: Any) -> None:
        if not answers:
            raise RegistryUnreachable(f"cannot reach registry {repo.split('/')[0]}")

    shared: list[str | None] = []
    real = imagesmith.pipeline.build.build_canonical

    def recording(*args: Any, share: str | None = None, **kwargs: Any) -> Any:
        shared.append(share)
        return real(*args, share=share, **kwargs)

    monkeypatch.setattr(imagesmith.pipeline.substitute, "find_substitute", find)
    monkeypatch.setattr(imagesmith.pipeline.build, "build_canonical", recording)
    lines: list[str] = []
    build(spec, FakeEngine(), substitute=True, on_line=lines.append)
    assert shared == [repository if answers else None]
    said = [line for line in lines if line.startswith(("substitution", "system stage"))]
    assert len(said) == 1 and said[0].startswith("substitution: "), said


def test_build_push_asks_an_unreachable_registry_once(
    spec: Spec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`build --push` first asks the registry whether it holds the lock's image; one that
    does not answer is said once and not asked again by the build (one timeout, not two)."""
    import imagesmith.pipeline.publish
    import imagesmith.pipeline.substitute
    from imagesmith.pipeline.publish import build_and_push
    from imagesmith.registry.client import RegistryUnreachable

    spec.path.write_text(spec.path.read_text() + '[registry]\nrepository = "127.0.0.1:9/lab/t"\n')
    spec = load_spec(spec.path)
    asked: list[str] = []

    def find(repo: str, lock: Any) -> None:
        asked.append(repo)
        raise RegistryUnreachable("cannot reach registry 127.0.0.1:9")

    def push(*_: Any, **__: Any) -> None:  # without its retries and their waits
        raise RegistryError("cannot reach registry 127.0.0.1:9")

    monkeypatch.setattr(imagesmith.pipeline.substitute, "find_substitute", find)
    monkeypatch.setattr(imagesmith.pipeline.publish, "push", push)
    lines: list[str] = []
    with pytest.raises(RegistryError):  # the push itself cannot reach it either
        build_and_push(spec, FakeEngine(), on_line=lines.append)
    assert asked == ["127.0.0.1:9/lab/t"]
    said = [line for line in lines if line.startswith("substitution")]
    assert said == ["substitution: skipped, cannot reach registry 127.0.0.1:9; building locally"], (
        said
    )
    assert read_build_record(spec.path, read_lock(spec.lock_path).lock_hash) is not None
