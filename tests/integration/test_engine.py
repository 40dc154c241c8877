"""The Engine interface on real Docker and real podman: same calls, same answers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from imagesmith.engine import get_engine
from imagesmith.engine.base import TAIL_LINES, Engine
from imagesmith.engine.docker import DockerEngine
from imagesmith.engine.podman import PodmanEngine
from imagesmith.errors import BuildError, EngineError, InputError, RegistryError

if TYPE_CHECKING:
    from tests.integration.conftest import ContextMaker, ImageTracker, Registry

pytestmark = pytest.mark.integration


def _simple(base: str) -> str:
    return (
        f"FROM {base}\n"
        "ARG GREETING=unset\n"
        "ENV FOO=bar\n"
        'RUN echo "$GREETING" > /greeting && mkdir /work\n'
        "WORKDIR /work\n"
        "USER nobody\n"
    )


def test_build_tag_label_inspect_run(
    engine: Engine, base_image: str, images: ImageTracker, make_context: ContextMaker
) -> None:
    first, second = images.tag("simple"), images.tag("simple")
    lines: list[str] = []
    image_id = engine.build(
        context=make_context(_simple(base_image)),
        tags=[first, second],
        labels={"org.example.purpose": "test", "org.example.empty": ""},
        build_args={"GREETING": "hello from the build"},
        on_line=lines.append,
    )
    assert image_id.startswith("sha256:") and len(image_id) == 71
    assert any(line.startswith(("STEP 1/", "Step 1/")) for line in lines)

    for ref in (first, second, image_id):
        assert engine.image_exists(ref)
    info = engine.inspect_image(first)
    assert info.id == image_id
    assert first in info.repo_tags and second in info.repo_tags
    assert info.labels["org.example.purpose"] == "test"
    assert info.labels["org.example.empty"] == ""
    assert info.env["FOO"] == "bar"
    assert info.env["PATH"].startswith("/usr/local/sbin")
    assert (info.user, info.workdir) == ("nobody", "/work")
    assert (info.os, info.architecture) == ("linux", "amd64")
    assert info.size > 10_000_000

    result = engine.run(
        first, ["sh", "-c", "cat /greeting; id -un; pwd; echo $FOO $EXTRA"], env={"EXTRA": "x y"}
    )
    assert result.exit_code == 0
    assert result.output.splitlines() == ["hello from the build", "nobody", "/work", "bar x y"]

    as_root = engine.run(first, ["id", "-u"], user="0")
    assert (as_root.exit_code, as_root.output.strip()) == (0, "0")

    both = engine.run(first, ["sh", "-c", "echo out; echo err >&2; exit 7"])
    assert both.exit_code == 7
    assert sorted(both.output.split()) == ["err", "out"]

    missing = engine.run(first, ["no-such-command"])
    assert missing.exit_code == 127

    offline = engine.run(first, ["ls", "/sys/class/net"], network=False)
    assert offline.output.split() == ["lo"]
    online = engine.run(first, ["ls", "/sys/class/net"])
    assert "eth0" in online.output.split() or len(online.output.split()) > 1


def test_build_rejects_bad_input(
    engine: Engine, images: ImageTracker, make_context: ContextMaker, tmp_path: Path
) -> None:
    with pytest.raises(InputError):
        engine.build(context=tmp_path / "nowhere", tags=[images.tag()])
    with pytest.raises(InputError):
        engine.build(context=make_context("FROM scratch\n"), containerfile="Nope", tags=[])
    with pytest.raises(InputError):
        engine.build(context=make_context("FROM scratch\n"), tags=["Not A Tag"])


FAILING = """\
FROM {base}
RUN echo one && echo two
RUN for i in $(seq 1 40); do echo "noise $i"; done; echo "about to fail"; exit 3
RUN echo never
"""


def test_failing_step_raises_and_leaves_no_tag(
    engine: Engine, base_image: str, images: ImageTracker, make_context: ContextMaker
) -> None:
    fresh = images.tag("failing")
    kept = images.tag("failing")
    # `kept` already names a good image: a failed build must not move it.
    good = engine.build(context=make_context(f"FROM {base_image}\nLABEL good=yes\n"), tags=[kept])

    with pytest.raises(BuildError) as caught:
        engine.build(context=make_context(FAILING.format(base=base_image)), tags=[fresh, kept])
    error = caught.value
    assert error.step.startswith("STEP 3/4: RUN for i in")
    assert len(error.output_tail) == TAIL_LINES
    assert "about to fail" in error.output_tail
    assert "noise 40" in error.output_tail
    assert "never" not in "\n".join(error.output_tail)
    assert "build failed" in str(error)
    assert any("failing step: STEP 3/4" in line for line in error.lines())

    assert not engine.image_exists(fresh)
    assert engine.inspect_image(kept).id == good


def test_error_in_stream_is_a_failure(
    engine: Engine, images: ImageTracker, make_context: ContextMaker
) -> None:
    """An error the engine reports before any step runs (unknown base image)."""
    tag = images.tag("nobase")
    with pytest.raises(BuildError) as caught:
        engine.build(
            context=make_context("FROM localhost:1/imagesmith-it/no-such-base:1\nRUN true\n"),
            tags=[tag],
        )
    assert caught.value.step.startswith("STEP 1/2: FROM")
    assert not engine.image_exists(tag)


def _processes_mentioning(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if token.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _podman_build_containers() -> set[str]:
    """IDs of podman's external (buildah) containers, the ones `podman build` works in."""
    out = subprocess.run(
        ["podman", "ps", "--all", "--external", "--quiet", "--no-trunc"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_ctrl_c_during_build_leaves_no_tag(
    engine: Engine, base_image: str, images: ImageTracker, make_context: ContextMaker
) -> None:
    """Ctrl-C in the middle of a RUN step: no tag, and the step does not keep running."""
    tag = images.tag("interrupted")
    token = uuid.uuid4().hex

    def interrupt(line: str) -> None:
        if line == "marker-42":  # printed by the RUN step, not the echo of the step itself
            raise KeyboardInterrupt

    context = make_context(
        f'FROM {base_image}\nRUN echo "marker-$((40+2))" && sleep 60 && echo {token}\n'
    )
    before = _podman_build_containers() if isinstance(engine, PodmanEngine) else set()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine.build(context=context, tags=[tag], on_line=interrupt)
    assert time.monotonic() - started < 45
    assert not engine.image_exists(tag)

    deadline = time.monotonic() + 15
    while _processes_mentioning(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(token) == [], "the interrupted RUN step is still running"
    if isinstance(engine, PodmanEngine):
        # Only this test builds here under scripts/test.sh; give podman a moment to clean up.
        deadline = time.monotonic() + 15
        while not _podman_build_containers() <= before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _podman_build_containers() <= before, "podman left its working container"
    assert engine.image_exists(base_image)  # the engine is still usable


def test_save_load_round_trip(
    engine: Engine,
    base_image: str,
    images: ImageTracker,
    make_context: ContextMaker,
    tmp_path: Path,
) -> None:
    tag = images.tag("saved")
    image_id = engine.build(
        context=make_context(f"FROM {base_image}\nRUN echo saved > /saved\n"), tags=[tag]
    )
    archive = tmp_path / "image.tar"
    engine.save(tag, archive)
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert len(manifest) == 1 and manifest[0]["Layers"]
    assert not list(tmp_path.glob("*.part"))

    engine.remove_image(tag, force=True)
    assert not engine.image_exists(tag)
    assert engine.load(archive) == image_id
    assert engine.image_exists(tag)
    assert engine.run(tag, ["cat", "/saved"]).output.strip() == "saved"


def test_save_to_a_full_disk_says_so(engine: Engine, base_image: str, tmp_path: Path) -> None:
    """A real full filesystem (a 1 MiB tmpfs): one clear line, no partial file left."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(full)], check=True)
    try:
        with pytest.raises(EngineError) as caught:
            engine.save(base_image, full / "image.tar")
        assert "no space left on device" in str(caught.value)
        assert str(full) in str(caught.value)
        assert len(caught.value.lines()) == 1
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=True)


def test_missing_images(engine: Engine, images: ImageTracker, tmp_path: Path) -> None:
    ghost = images.tag("ghost")
    assert not engine.image_exists(ghost)
    engine.remove_image(ghost)  # not an error
    engine.remove_image(ghost, force=True)
    with pytest.raises(EngineError, match="no local image"):
        engine.inspect_image(ghost)
    with pytest.raises(EngineError, match="no local image"):
        engine.run(ghost, ["true"])
    with pytest.raises(EngineError):
        engine.save(ghost, tmp_path / "ghost.tar")
    assert not (tmp_path / "ghost.tar").exists()
    with pytest.raises(EngineError):
        engine.tag(ghost, images.tag("ghost"))


def test_info(engine: Engine) -> None:
    assert isinstance(engine.info(), dict)


@pytest.mark.registry
def test_pull_with_auth(
    engine: Engine,
    base_image: str,
    images: ImageTracker,
    make_context: ContextMaker,
    registry: Registry,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the engine pulls with credentials is what imagesmith's registry client pushed
    (engines never push: `imagesmith.registry.client` does; test_push.py has its wrong
    password)."""
    from imagesmith.model.reference import parse_reference
    from imagesmith.pipeline.canonical_build import rewrite_into
    from imagesmith.registry.client import Credentials, push_layout

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    local = images.tag("pushed")
    built = engine.build(
        context=make_context(f"FROM {base_image}\nRUN echo pushed > /pushed\n"), tags=[local]
    )
    canonical = rewrite_into(engine, built, epoch=0, workdir=tmp_path)
    images.add(canonical.image_id)  # what the pull gives
    remote = images.add(f"{registry.host}/{local}")
    push_layout(
        canonical.layout,
        parse_reference(remote.rsplit(":", 1)[0]),
        [remote.rsplit(":", 1)[1]],
        credentials=Credentials(registry.username, registry.password),
    )

    # Wrong or no credentials: the registry says no; that must raise.
    with pytest.raises(RegistryError):
        engine.pull(remote, auth={"username": registry.username, "password": "wrong"})
    with pytest.raises(RegistryError):
        engine.pull(remote, auth={"username": "nobody", "password": "nothing"})
    with pytest.raises(RegistryError):
        engine.pull(f"{registry.host}/imagesmith-it/absent:1", auth=registry.auth)
    assert engine.pull(remote, auth=registry.auth) == canonical.image_id
    assert engine.run(remote, ["cat", "/pushed"]).output.strip() == "pushed"


# -- choosing an engine ----------------------------------------------------------------


def test_get_engine_names(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="auto, docker, podman"):
        get_engine("containerd")


@pytest.mark.docker
def test_get_engine_docker_and_auto(docker_engine: Engine) -> None:
    assert isinstance(get_engine("docker"), DockerEngine)
    assert isinstance(get_engine("auto"), DockerEngine)


@pytest.mark.podman
def test_get_engine_falls_back_to_podman(
    podman_engine: Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    socket = tmp_path / "nothing.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket}")
    started = time.monotonic()
    with pytest.raises(EngineError) as caught:
        get_engine("docker")
    assert str(caught.value).startswith(f"no Docker daemon answers at unix://{socket}: start it")
    assert len(caught.value.lines()) == 1
    assert isinstance(get_engine("auto"), PodmanEngine)
    assert time.monotonic() - started < 10


def test_no_engine_at_all(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError, match="apt-get install podman"):
        get_engine("podman")
    with pytest.raises(EngineError, match=r"start dockerd .* or apt-get install podman"):
        get_engine("auto")
