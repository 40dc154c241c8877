"""The two engines as the benchmark drives them, and a ledger of every image it made.

Other people build on the same engines at the same time, so nothing here prunes: the
ledger removes exactly the tags it applied and the images whose creation it saw in a
build log (a step that ran, not one served from the cache), never with --force.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proc import BenchError, output

REPO = Path(__file__).resolve().parent.parent
ENGINES = ("docker", "podman")

# docker: "Step 3/16 : RUN ...", podman: "STEP 3/16: RUN ..." or "[1/3] STEP 2/2: RUN ..."
_STEP = re.compile(r"^\s*(?:\[\d+/\d+\]\s*)?(?:Step|STEP) (\d+)/\d+ ?: ?(\S+)")
_CACHED = re.compile(r"^\s*-+>\s+Using cache")
_ID = re.compile(r"^\s*-+>\s+([0-9a-f]{11,64})\s*$")  # podman prints 11 hex digits
_DOCKER_FINAL = re.compile(r"^\s*Successfully built ([0-9a-f]{12,64})\s*$")
_PODMAN_FINAL = re.compile(r"^([0-9a-f]{64})$")


def created_images(lines: Iterable[str]) -> list[str]:
    """IDs of the images a classic docker / podman build log shows being made, in order.

    A step's image counts only when the step ran: FROM steps and cache hits are
    someone's (maybe another person's) existing images.
    """
    created: list[str] = []
    instruction: str | None = None
    cached = False
    last: str | None = None

    def close() -> None:
        if instruction and instruction.upper() != "FROM" and not cached and last:
            created.append(last)

    for line in lines:
        step = _STEP.match(line)
        if step:
            close()
            instruction, cached, last = step.group(2), False, None
            continue
        if _CACHED.match(line):
            cached = True
            continue
        found = _ID.match(line)
        if found:
            last = found.group(1)
            continue
        final = _DOCKER_FINAL.match(line) or _PODMAN_FINAL.match(line)
        if final and not cached:
            created.append(final.group(1))
    close()
    return list(dict.fromkeys(created))


def steps_run(lines: Iterable[str]) -> list[str]:
    """The build steps that ran (not served from the cache), as `N INSTRUCTION` strings.

    podman numbers steps per stage, so its N restarts at 1 in each stage.
    """
    ran: list[str] = []
    current: str | None = None
    cached = False

    def close() -> None:
        if current and not cached and current.split(" ", 2)[1].upper() != "FROM":
            ran.append(current)

    for line in lines:
        step = _STEP.match(line)
        if step:
            close()
            current, cached = f"{step.group(1)} {step.group(2)}", False
        elif _CACHED.match(line):
            cached = True
    close()
    return ran


def ensure_engine(name: str) -> None:
    """Make sure the engine answers (the Docker daemon is started when it does not)."""
    if name == "docker":
        if output(["docker", "info", "--format", "{{.ServerVersion}}"]):
            return
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / "start-dockerd.sh")],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"the Docker daemon does not answer: {done.stderr.strip()[-300:]}")
    elif not output(["podman", "version", "--format", "{{.Client.Version}}"]):
        raise BenchError("podman does not answer")


def engine_version(name: str) -> str:
    if name == "docker":
        server = output(["docker", "version", "--format", "{{.Server.Version}}"])
        client = output(["docker", "version", "--format", "{{.Client.Version}}"])
        return f"Docker {server or '?'} (CLI {client or '?'})"
    return f"podman {output(['podman', 'version', '--format', '{{.Client.Version}}']) or '?'}"


def image_size(engine: str, ref: str) -> int:
    text = output([engine, "image", "inspect", "--format", "{{.Size}}", ref])
    if not text.isdigit():
        raise BenchError(f"{engine}: cannot read the size of {ref}")
    return int(text)


def build_command(engine: str, context: Path, tag: str, *, no_cache: bool) -> list[str | Path]:
    cmd: list[str | Path] = [engine, "build", "-t", tag, "-f", context / "Containerfile"]
    if no_cache:
        cmd.append("--no-cache")
    cmd.append(context)
    return cmd


def _repo_tags(engine: str, ref: str) -> list[str] | None:
    """The image's tags, or None when there is no such image."""
    text = output([engine, "image", "inspect", "--format", "{{json .RepoTags}}", ref])
    if not text:
        return None
    tags = json.loads(text) or []
    return [str(tag).removeprefix("localhost/") for tag in tags]


@dataclass
class Ledger:
    """Every tag and image the benchmark made, per engine, for the final clean-up."""

    tags: dict[str, list[str]] = field(default_factory=dict)
    images: dict[str, list[str]] = field(default_factory=dict)
    path: Path | None = None
    """Where the ledger is kept on disk as it grows, so a killed run can be cleaned later."""

    @classmethod
    def load(cls, path: Path) -> Ledger:
        data = json.loads(path.read_text())
        return cls(tags=data.get("tags", {}), images=data.get("images", {}), path=path)

    def _persist(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"tags": self.tags, "images": self.images}))

    def add_tags(self, engine: str, tags: Iterable[str]) -> None:
        known = self.tags.setdefault(engine, [])
        known.extend(tag for tag in tags if tag not in known)
        self._persist()

    def add_images(self, engine: str, ids: Iterable[str]) -> None:
        known = self.images.setdefault(engine, [])
        known.extend(i for i in ids if i and i not in known)
        self._persist()

    def add_build_log(self, engine: str, lines: Iterable[str]) -> None:
        self.add_images(engine, created_images(lines))

    def clean(self, only: str | None = None) -> list[str]:
        """Remove what was recorded (on engine `only`, when given); returns what could not
        be removed."""
        left: list[str] = []
        for engine in sorted(set(self.tags) | set(self.images)):
            if only is not None and engine != only:
                continue
            ours = {t.removeprefix("localhost/") for t in self.tags.get(engine, [])}
            for tag in self.tags.get(engine, []):
                if _repo_tags(engine, tag) is not None:
                    subprocess.run([engine, "rmi", tag], capture_output=True, check=False)
            pending = list(reversed(self.images.get(engine, [])))
            for _ in range(4):  # children first; a parent goes once its children are gone
                remaining = []
                for image in pending:
                    tags = _repo_tags(engine, image)
                    if tags is None:
                        continue
                    if any(tag not in ours for tag in tags):
                        continue  # someone else tagged it: not ours to remove
                    done = subprocess.run([engine, "rmi", image], capture_output=True, check=False)
                    if done.returncode != 0:
                        remaining.append(image)
                pending = remaining
                if not pending:
                    break
            left += [f"{engine}:{image}" for image in pending]
            left += [
                f"{engine}:{tag}"
                for tag in self.tags.get(engine, [])
                if _repo_tags(engine, tag) is not None
            ]
        return left
