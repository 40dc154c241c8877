"""What the fault-injection tests share: imagesmith as a subprocess, killed at a chosen
moment, tiny specs, and the clean-up of what a killed process cannot clean up itself.

imagesmith runs as a user runs it: its own process group (so SIGKILL reaches the engine
clients it started too), its own XDG_CACHE_HOME and TMPDIR under the test's folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from imagesmith.engine.base import Engine
from imagesmith.errors import EngineError

IMAGESMITH = str(Path(sys.executable).with_name("imagesmith"))
DIGEST_LINE = "  digest: "


def tiny_spec(
    folder: Path, base_image: str, *, name: str, python: bool = True, extra: str = ""
) -> Path:
    """One small apt package, and (with `python`) one small pure wheel."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f'name = "{name}"\nversion = "1"\n[base]\nimage = "{base_image}"\n'
    text += '[apt]\npackages = ["hello"]\n'
    if python:
        text += '[python]\nrequirements = ["six==1.17.0"]\n'
    (folder / "env.toml").write_text(text + extra)
    return folder / "env.toml"


def environment(root: Path, **extra: str) -> dict[str, str]:
    """The environment imagesmith runs in: a cache and a TMPDIR of the test's own."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "CI": "1",
        "XDG_CACHE_HOME": str(root / "cache"),
        "TMPDIR": str(root / "tmp"),
    }
    env.update(extra)
    return env


def imagesmith(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMAGESMITH, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def build_digest(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(DIGEST_LINE):
            return line.removeprefix(DIGEST_LINE).strip()
    raise AssertionError(f"no digest line in:\n{output}")


@dataclass
class Killed:
    stderr: list[str] = field(default_factory=list)
    returncode: int | None = None
    killed: bool = False


def run_and_kill(
    args: Sequence[str],
    env: dict[str, str],
    reached: Callable[[list[str]], bool],
    *,
    delay: float = 0.0,
    timeout: float = 300,
) -> Killed:
    """Run imagesmith and SIGKILL its whole process group once `reached(stderr lines so
    far)` holds (checked on every line and every 20 ms), after `delay` seconds."""
    result = Killed()
    proc = subprocess.Popen(
        [IMAGESMITH, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert proc.stderr is not None
    stream = proc.stderr

    def read() -> None:
        for line in stream:
            result.stderr.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if reached(list(result.stderr)):
                time.sleep(delay)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                result.killed = True
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not result.killed:
            os.killpg(proc.pid, signal.SIGKILL)
        result.returncode = proc.wait()
        with contextlib.suppress(ProcessLookupError):  # what the group left running
            os.killpg(proc.pid, signal.SIGKILL)
        reader.join(timeout=10)
        stream.close()
    return result


def line_seen(text: str, count: int = 1) -> Callable[[list[str]], bool]:
    return lambda lines: sum(text in line for line in lines) >= count


def file_settled(folder: Path, name: str) -> Callable[[list[str]], bool]:
    """True once a file `name` under `folder` exists and stopped growing (written whole:
    the next step, reading it, has begun)."""
    sizes: dict[Path, int] = {}

    def check(_: list[str]) -> bool:
        for path in folder.rglob(name):
            with contextlib.suppress(OSError):
                size = path.stat().st_size
                if size and sizes.get(path) == size:
                    return True
                sizes[path] = size
        return False

    return check


def parsed(path: Path) -> Any:
    """The file's content, parsed (TOML or JSON); None when there is no file. A partial
    file fails here."""
    if not path.exists():
        return None
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".lock":
        return tomllib.loads(text)
    return json.loads(text)


def remove_recorded(engine: Engine, spec: Path) -> None:
    """Remove the image and tags the spec's build record names."""
    record = spec.with_suffix(".build.json")
    if not record.exists():
        return
    with contextlib.suppress(ValueError, OSError):
        data = json.loads(record.read_text())
        for ref in (*data["tags"], data["image_id"]):
            with contextlib.suppress(EngineError):
                engine.remove_image(ref, force=True)


def _containers(cli: str) -> dict[str, str]:
    """Every container's ID -> its image, on `cli` (docker or podman)."""
    listed = subprocess.run(
        [cli, "ps", "--all", "--no-trunc", "--format", "{{.ID}} {{.Image}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(line.split(maxsplit=1) for line in listed.stdout.splitlines() if " " in line)


def _working_containers() -> set[str]:
    listed = subprocess.run(
        ["buildah", "containers", "--quiet", "--notruncate"],
        capture_output=True,
        text=True,
        check=False,
    )
    return set(listed.stdout.split()) if listed.returncode == 0 else set()


@contextlib.contextmanager
def removing_killed_leftovers(engine: Engine, base_image: str) -> Iterator[None]:
    """A process killed with SIGKILL leaves what only it would have removed: a probe
    container started from the base (`docker run` through the API has no --rm), or
    buildah's working containers under a killed `podman build`. Remove those that appeared
    meanwhile and stem from the base or from an image without a name (a build step)."""
    cli = engine.name
    before = set(_containers(cli))
    working = _working_containers() if cli == "podman" else set()
    base_ids = {base_image}
    with contextlib.suppress(EngineError):
        base_ids.add(engine.inspect_image(base_image).id)
    yield
    time.sleep(0.5)
    for cid, image in _containers(cli).items():
        ours = image in base_ids or re.fullmatch("(sha256:)?[0-9a-f]{12,64}", image) is not None
        if cid not in before and ours:
            subprocess.run([cli, "rm", "--force", cid], capture_output=True, check=False)
    if cli == "podman":
        new = sorted(_working_containers() - working)
        if new:
            subprocess.run(["buildah", "rm", *new], capture_output=True, check=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


_HEX64 = re.compile("[0-9a-f]{64}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_problems(cache: Path, *, killed: bool = False) -> list[str]:
    """Every entry of imagesmith's cache (XDG_CACHE_HOME/imagesmith) hashed again against
    the digest it is stored under or with: the .debs, layer blobs, canonical layouts'
    blobs, wheels and venv archives. Also any temporary file a writer left behind, unless
    `killed`: a killed process leaves its scratch folders (`.staging-*`, `*.partial-*`),
    which no later run takes for an entry; the next one that makes a scratch folder of the
    same kind removes them (imagesmith.cache.scratch), but a `lock` or `push` makes none."""
    problems: list[str] = []
    named = [
        *(cache / "debs").glob("*"),
        *(cache / "layers" / "blobs").glob("*"),
        *(cache / "images").glob("*/blobs/sha256/*"),
    ]
    for path in named:
        if path.is_file() and _HEX64.fullmatch(path.name) and _sha256(path) != path.name:
            problems.append(f"{path}: content does not match its name")
    for sums in (cache / "wheels").glob("*/SHA256SUMS.json"):
        for name, digest in json.loads(sums.read_text()).items():
            wheel = sums.parent / "wheels" / name
            if f"sha256:{_sha256(wheel)}" != digest:
                problems.append(f"{wheel}: content does not match SHA256SUMS.json")
    for archive in (cache / "venvs").glob("*/venv.tar.gz"):
        recorded = archive.with_name(archive.name + ".sha256").read_text().strip()
        if f"sha256:{_sha256(archive)}" != recorded:
            problems.append(f"{archive}: content does not match its .sha256")
    for layout in (cache / "images").glob("*"):
        if (
            layout.is_dir()
            and not layout.name.startswith(".")
            and not (layout / "index.json").is_file()
        ):
            problems.append(f"{layout}: a layout without index.json")
    for path in cache.rglob("*"):
        name = path.name
        if killed and (name.startswith(".staging-") or ".partial-" in name):
            continue
        if (
            name.startswith(".staging-")
            or name.endswith((".tmp", ".partial"))
            or ".partial-" in name
        ):
            problems.append(f"{path}: a temporary file left behind")
    return problems
