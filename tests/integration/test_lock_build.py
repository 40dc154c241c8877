"""lock and build against real engines: the foundation issue's example, end to end.

Each test runs on Docker and on podman (the `engine` fixture). The base is the Debian
image `imagesmith base` makes; apt resolves against the real Debian archive and pip
against the real package index, as a lab's machine would.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagesmith.engine.base import Engine
from imagesmith.errors import BuildError, ResolveError
from imagesmith.locking.resolve import lock_spec
from imagesmith.model.lock import read_lock
from imagesmith.model.records import build_record_path
from imagesmith.model.spec_loading import load_spec
from imagesmith.pipeline.build import build
from tests.conftest import EXAMPLE
from tests.integration.conftest import ImageTracker

pytestmark = pytest.mark.integration


def _spec_folder(tmp_path: Path, base_image: str, *, name: str, edit: str = "") -> Path:
    folder = tmp_path / name
    shutil.copytree(EXAMPLE, folder)
    text = (folder / "env.toml").read_text()
    text = text.replace('name = "lab-analysis"', f'name = "{name}"')
    text = text.replace('image = "debian:bookworm"', f'image = "{base_image}"')
    (folder / "env.toml").write_text(text + edit)
    return folder


@pytest.fixture
def cleanup_builds(engine: Engine) -> Iterator[list[Path | str]]:
    """Spec paths (their last build's tags and image go) and image IDs a test made."""
    made: list[Path | str] = []
    yield made
    for item in made:
        if isinstance(item, str):
            engine.remove_image(item, force=True)
            continue
        record_path = build_record_path(item)
        if record_path.exists():
            record = json.loads(record_path.read_text())
            for tag in record["tags"]:
                engine.remove_image(tag, force=True)
            engine.remove_image(record["image_id"], force=True)


def test_lock_pins_everything_and_is_byte_identical(
    engine: Engine, base_image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1747699200")
    folder = _spec_folder(tmp_path, base_image, name="lock-twice")
    spec = load_spec(folder / "env.toml")
    first = lock_spec(spec, engine=lambda: engine)
    second = lock_spec(spec, engine=lambda: engine)
    assert first.to_toml() == second.to_toml()
    names = {p.name for p in first.apt.packages}
    # Named packages, their dependencies and the Python the [python] table needs.
    # (tzdata too, unless the base already has it: apt installs nothing for it then.)
    assert {"git", "curl", "libhdf5-dev", "tree", "python3", "python3-venv"} <= names
    assert len(names) > 20
    assert all(p.version for p in first.apt.packages)
    # NAME=VERSION in the spec is kept (bookworm's tree has had one version since release).
    assert next(p for p in first.apt.packages if p.name == "tree").version == "2.1.0-1"
    # Each .deb's sha256, and where it lives, so that build can fetch and check it.
    assert all(p.fetchable for p in first.apt.packages)
    assert first.python is not None
    pinned = {p.name for p in first.python.packages}
    assert {"numpy", "requests", "pyyaml", "urllib3", "idna", "certifi"} <= pinned  # transitive too
    assert all(
        p.hashes and all(h.startswith("sha256:") for h in p.hashes) for p in first.python.packages
    )
    assert first.python.version == "3.11"
    assert first.base.digest.startswith("sha256:")


def test_unknown_apt_package_is_named(engine: Engine, base_image: str, tmp_path: Path) -> None:
    folder = _spec_folder(tmp_path, base_image, name="bad-apt")
    path = folder / "env.toml"
    path.write_text(path.read_text().replace('"curl",', '"curl", "no-such-package-xyz",'))
    with pytest.raises(ResolveError) as caught:
        lock_spec(load_spec(path), engine=lambda: engine)
    assert (
        str(caught.value)
        == "apt: not available in the base image's Debian suite: no-such-package-xyz"
    )
    assert caught.value.exit_code == 2


def test_unsatisfiable_python_gives_the_resolvers_reason(
    engine: Engine, base_image: str, tmp_path: Path
) -> None:
    folder = _spec_folder(tmp_path, base_image, name="bad-py")
    path = folder / "env.toml"
    path.write_text(path.read_text().replace('"numpy>=2"', '"numpy>=2", "numpy<1"'))
    with pytest.raises(ResolveError) as caught:
        lock_spec(load_spec(path), engine=lambda: engine)
    message = str(caught.value)
    assert message.startswith("python: ") and "numpy" in message
    assert "\n" not in message and len(message) < 400


def test_example_builds_runs_and_rebuilds_from_cache(
    engine: Engine, base_image: str, tmp_path: Path, cleanup_builds: list[Path | str]
) -> None:
    name = f"it-lab-{uuid.uuid4().hex[:8]}"
    folder = _spec_folder(tmp_path, base_image, name=name)
    spec = load_spec(folder / "env.toml")
    cleanup_builds.append(spec.path)
    first_lines: list[str] = []
    result = build(spec, engine, on_line=first_lines.append)
    cleanup_builds.append(result.image_id)  # its tags move to the rebuild below
    assert result.tags[:2] == (
        f"{name}:1.0.0",
        f"{name}:lock-{read_lock(spec.lock_path).lock_hash[7:23]}",
    )
    assert result.digest.startswith("sha256:") and result.image_id.startswith("sha256:")
    for tag in result.tags:
        assert engine.inspect_image(tag).id == result.image_id

    check = (
        "python3 -c 'import numpy, requests, yaml; print(\"numpy\", numpy.__version__)' && "
        "git --version && curl --version >/dev/null && echo curl-ok && id -u && "
        # HTTPS from curl/git needs the CA bundle (python3-venv's closure brings it).
        "test -s /etc/ssl/certs/ca-certificates.crt && echo certs-ok && "
        'printf \'[%s]\' "$GREETING" "$OMP_NUM_THREADS" && pwd'
    )
    run = engine.run(result.tags[0], ["/bin/sh", "-c", check])
    assert run.exit_code == 0, run.output
    assert "numpy 2." in run.output and "git version" in run.output and "curl-ok" in run.output
    assert "certs-ok" in run.output
    assert "\n10001\n" in run.output  # the default uid
    assert '[it\'s "quoted" $HOME and ünïcode][1]' in run.output  # byte for byte, not expanded
    assert run.output.rstrip().endswith("/work")

    # A no-op rebuild: every step from the cache, the same image.
    lines: list[str] = []
    again = build(spec, engine, on_line=lines.append)
    assert again.image_id == result.image_id and again.digest == result.digest
    assert not any(line.startswith(("python: fetching", "canonical:")) for line in lines)

    # One Python pin changes: the build starts from the system stage the first build made
    # (apt does not run, not even as a cache lookup); only the Python layers rerun.
    stage = re.findall(r"FROM (sha256:[0-9a-f]{64}) AS system", "\n".join(first_lines))[-1]
    path = folder / "env.toml"
    path.write_text(path.read_text().replace('"pyyaml"', '"pyyaml==6.0.1"'))
    lines.clear()
    changed = build(load_spec(path), engine, relock=True, on_line=lines.append)
    assert changed.image_id != result.image_id
    assert not any("apt-get install" in line for line in lines), lines
    assert f"FROM {stage} AS system" in "\n".join(lines)
    python_step = _step(lines, "python3 -m venv")
    # The Python stage made a new layer (an earlier run with the same pins may have cached it).
    assert _step_result(python_step) != _step_result(_step(first_lines, "python3 -m venv"))


def test_plain_build_after_a_no_cache_build_is_all_cache_hits(
    engine: Engine, base_image: str, tmp_path: Path, cleanup_builds: list[Path | str]
) -> None:
    """A --no-cache build (what `verify` and benchmarks do) leaves a second, newer chain
    of look-alike steps. The next plain build starts from the system stage the last build
    made (noted by imagesmith: podman's cache may pick the oldest of several look-alike
    chains and then run apt again), finds every later step in the cache, and gives the
    same image, on both engines."""
    name = f"it-nocache-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
        '[python]\nrequirements = ["six"]\n[image]\nrun = ["echo made > /etc/marker"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    cleanup_builds.append(spec.path)
    first = build(spec, engine)
    cleanup_builds.append(first.image_id)
    build(spec, engine, no_cache=True)
    # Without its record the next build cannot answer at once (test_noop_build covers
    # that): it runs the engine, which must find every step in its cache.
    (tmp_path / "env.build.json").unlink()
    lines: list[str] = []
    again = build(spec, engine, on_line=lines.append)
    assert again.image_id == first.image_id and again.digest == first.digest
    assert not any("useradd" in line for line in lines), "the system stage was built again"
    assert not any(line.startswith("canonical:") for line in lines), lines
    for marker in ("ADD python/venv.tar.gz", "python3 -m venv", "/etc/marker"):
        assert "Using cache" in _step(lines, marker), _step(lines, marker)

    # A Python pin changes after a --no-cache build: the system stage is not built again.
    (tmp_path / "env.toml").write_text(
        (tmp_path / "env.toml").read_text().replace('"six"', '"six==1.16.0"')
    )
    lines.clear()
    changed = build(load_spec(tmp_path / "env.toml"), engine, relock=True, on_line=lines.append)
    cleanup_builds.append(changed.image_id)
    assert changed.digest != first.digest
    assert not any("useradd" in line for line in lines), "the system stage was built again"
    assert "Using cache" not in _step(lines, "python3 -m venv")


def test_python_packages_are_prepared_while_the_system_stage_builds(
    engine: Engine,
    base_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_builds: list[Path | str],
) -> None:
    """With wheels to download and install, the engine builds the system stage (apt)
    meanwhile and the full build starts from that stage's image: the same image as one
    build of the file, with or without the engine's cache."""
    from imagesmith.inputs.context import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no wheels yet
    name = f"it-overlap-{uuid.uuid4().hex[:8]}"
    (tmp_path / "env.toml").write_text(
        f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
        '[python]\nrequirements = ["six"]\n[image]\nrun = ["echo made > /etc/marker"]\n'
    )
    spec = load_spec(tmp_path / "env.toml")
    cleanup_builds.append(spec.path)
    lines: list[str] = []
    first = build(spec, engine, on_line=lines.append)
    cleanup_builds.append(first.image_id)
    prepared = "python: fetching and installing 1 packages on the host while the system"
    assert any(line.startswith(prepared) for line in lines), lines
    starts = re.findall(r"FROM (sha256:[0-9a-f]{64}) AS system", "\n".join(lines))
    assert len(set(starts)) == 2, starts  # the base, then the system stage built first
    assert starts[-1] != first.image_id

    lines.clear()
    whole = build(spec, engine, no_cache=True, on_line=lines.append)  # the tree is cached now
    assert not any(line.startswith("python: fetching") for line in lines)
    assert whole.digest == first.digest and whole.image_id == first.image_id

    # The installed tree evicted (wheels kept): a --no-cache build overlaps as well.
    shutil.rmtree(cache_dir() / "venvs")
    lines.clear()
    split = build(spec, engine, no_cache=True, on_line=lines.append)
    assert any(line.startswith(prepared) for line in lines), lines
    assert split.digest == first.digest and split.image_id == first.image_id


def test_cache_over_budget_drops_the_least_recently_used_image(
    engine: Engine,
    base_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleanup_builds: list[Path | str],
) -> None:
    from imagesmith.pipeline.canonical_build import layout_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("IMAGESMITH_CACHE_MAX", "1")  # one byte: only the newest build stays
    built = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "env.toml").write_text(
            f'name = "it-gc-{name}-{uuid.uuid4().hex[:6]}"\nversion = "1"\n'
            f'[base]\nimage = "{base_image}"\n[image]\nrun = ["echo {name} > /etc/marker"]\n'
        )
        spec = load_spec(folder / "env.toml")
        cleanup_builds.append(spec.path)
        lines: list[str] = []
        built.append(build(spec, engine, on_line=lines.append))
    assert not layout_dir(built[0].digest).exists()
    assert (layout_dir(built[1].digest) / "index.json").is_file()
    assert any(line.startswith("cache: removed the ") for line in lines), lines
    # The evicted image is still in the engine; only imagesmith's copy for push went.
    assert engine.image_exists(built[0].image_id)


def _step(lines: list[str], marker: str) -> str:
    """The output of the build step whose instruction contains `marker`."""
    text = "\n".join(lines)
    steps = re.split(r"\n(?=(?:\[\d+/\d+\] )?(?:STEP|Step) \d+/\d+)", text)
    # Docker prints a step on one line, podman keeps its continuation lines: find by content.
    return next(s for s in steps if marker in s)


def _step_result(step: str) -> str:
    """The image ID a step ended with (` ---> abc123` in Docker, `--> abc123` in podman).

    Both print a shortened ID; podman's length varies (11 or 12 hex digits seen).
    """
    return str(re.findall(r"-->\s+(?:Using cache\s+)?([0-9a-f]{6,64})\b", step)[-1])


def test_failed_build_leaves_no_tag_and_no_record(
    engine: Engine, base_image: str, tmp_path: Path
) -> None:
    name = f"it-fail-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
        '[image]\nrun = ["echo about to fail", "exit 7"]\n'
    )
    spec = load_spec(folder / "env.toml")
    with pytest.raises(BuildError) as caught:
        build(spec, engine)
    assert caught.value.exit_code == 1
    # The verdict, not the first line of the (multi-line) RUN script the engine quotes.
    assert str(caught.value) == f"{engine.name} build failed: the step exited with code 7"
    assert "about to fail" in "\n".join(caught.value.output_tail)
    assert not engine.image_exists(f"{name}:1")
    assert not build_record_path(spec.path).exists()
    assert spec.lock_path.exists()  # the lock itself is good and kept


def test_any_env_or_label_string_arrives_byte_for_byte(
    engine: Engine, base_image: str, tmp_path: Path, cleanup_builds: list[Path | str]
) -> None:
    name = f"it-env-{uuid.uuid4().hex[:8]}"
    value = 'two\nlines\tand "quotes" $HOME ${X:-y} \\back  ünïcode  '
    folder = tmp_path / name
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "{name}"\n[base]\nimage = "{base_image}"\n'
        f"[env]\nMULTI = {json.dumps(value)}\nPLAIN = {json.dumps('it' + chr(39) + 's $HOME')}\n"
        f'[image]\nlabels = {{ "org.example.note" = {json.dumps(value)} }}\n'
    )
    spec = load_spec(folder / "env.toml")
    cleanup_builds.append(spec.path)
    result = build(spec, engine)
    run = engine.run(result.image_id, ["/bin/sh", "-c", 'printf "[%s]" "$MULTI" "$PLAIN"'])
    assert run.exit_code == 0, run.output
    assert run.output == f"[{value}][it's $HOME]"
    assert engine.inspect_image(result.image_id).labels["org.example.note"] == value


def test_labels_longer_than_a_containerfile_line_survive(
    engine: Engine, base_image: str, tmp_path: Path, cleanup_builds: list[Path | str]
) -> None:
    """Builders read 64 KiB a line at most (Docker refuses, podman drops the LABEL)."""
    name = f"it-long-{uuid.uuid4().hex[:8]}"
    plain = "".join(chr(ord("a") + i % 26) for i in range(70_000))  # split across lines
    escaped = 'say "$HOME" \\ ' * 6_000  # ~84 KB with escapes: goes as a build arg
    folder = tmp_path / name
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "{name}"\n[base]\nimage = "{base_image}"\n'
        f'[image]\nlabels = {{ "org.example.plain" = "{plain}", "org.example.esc" = {json.dumps(escaped)} }}\n'
    )
    spec = load_spec(folder / "env.toml")
    cleanup_builds.append(spec.path)
    result = build(spec, engine)
    labels = engine.inspect_image(result.image_id).labels
    assert labels["org.example.plain"] == plain
    assert labels["org.example.esc"] == escaped
    assert labels["dev.imagesmith.lock-hash"] == read_lock(spec.lock_path).lock_hash


def test_run_time_settings_change_neither_the_lock_nor_the_digest(
    engine: Engine, base_image: str, tmp_path: Path, cleanup_builds: list[Path | str]
) -> None:
    """Memory, GPUs, the job's command and the registry are not the image (0.6.0)."""
    from typer.testing import CliRunner

    from imagesmith.cli import app

    name = f"it-runtime-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    spec_path = folder / "env.toml"
    spec_path.write_text(
        f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
        '[env]\nMARK = "runtime"\n'
        '[registry]\nrepository = "registry.example.edu/lab/runtime"\n'
        '[resources]\ncpu = "1"\nmemory = "1Gi"\n'
        '[job]\ncommand = ["/bin/sh", "-c", "echo one"]\n'
    )
    spec = load_spec(spec_path)
    cleanup_builds.append(spec.path)
    first = build(spec, engine)
    locked = spec.lock_path.read_bytes()
    spec_path.write_text(
        spec_path.read_text()
        .replace('memory = "1Gi"', 'memory = "3Gi"\ngpu = 1')
        .replace("echo one", "echo two")
        .replace("lab/runtime", "lab/elsewhere")
    )
    runner = CliRunner()
    check = runner.invoke(app, ["lock", "--check", str(spec_path)])
    assert check.exit_code == 0, check.output
    again = build(load_spec(spec_path), engine)
    assert again.digest == first.digest and not again.locked
    assert spec.lock_path.read_bytes() == locked
    manifest = runner.invoke(app, ["manifest", str(spec_path)])
    assert manifest.exit_code == 0, manifest.output
    assert "memory: 3Gi" in manifest.stdout and "echo two" in manifest.stdout
    assert f"registry.example.edu/lab/elsewhere@{first.digest}" in manifest.stdout


def test_a_base_that_runs_as_another_user_builds_as_root_and_runs_as_the_specs(
    engine: Engine,
    base_image: str,
    tmp_path: Path,
    images: ImageTracker,
    cleanup_builds: list[Path | str],
) -> None:
    """Jupyter's images and many others end with a USER that is not root: apt, the venv
    and the spec's run steps still run as root, and the image as the spec's user."""
    user_base = images.derive(
        "user-base",
        f"FROM {base_image}\nRUN useradd --uid 1000 --create-home jovyan\n"
        "WORKDIR /home/jovyan\nUSER 1000\n",
        tmp_path,
    )
    name = f"it-user-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "env.toml").write_text(
        f'name = "{name}"\n[base]\nimage = "{user_base}"\n[apt]\npackages = ["jq"]\n'
        '[image]\nuser = "lab"\nrun = ["mkdir /opt/lab", "touch /opt/lab/made-as-root"]\n'
    )
    spec = load_spec(folder / "env.toml")
    cleanup_builds.append(spec.path)
    result = build(spec, engine)
    assert read_lock(spec.lock_path).base.user == "1000"
    run = engine.run(result.image_id, ["/bin/sh", "-c", "id -u; stat -c %U /opt/lab/*; jq -n 1"])
    assert run.exit_code == 0, run.output
    assert run.output.split() == ["10001", "root", "1"]
