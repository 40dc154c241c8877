"""`FakeEngine`: an in-memory `Engine` for unit tests of the orchestration (build, verify).

It keeps images as docker-archive bytes, so everything after `Engine.build` runs for real:
`make_canonical` saves the built image, rewrites it canonically and loads the result
back, and the fake gives a loaded image the ID the real engines give it (the sha256 of
its config), which `make_canonical` checks. What the fake does not do is run the
Containerfile: a build makes one layer from the build context (the Containerfile and the
files beside it, so a changed input changes the image) and a config with what the
Containerfile's ENV, LABEL, USER, WORKDIR and CMD lines set (so the image carries its lock
in a label, as a real build's does).

Failures are injected where the orchestration has to clean up after them:
`fail_build_at=N` (the Nth `build` call fails, after leaving an untagged intermediate
image behind as a real build does), `fail_load`, `fail_tag_at=N` (the Nth `tag` call), and
`interrupt` (the failure is a KeyboardInterrupt instead of an engine error). `drift`
makes each build write one file whose content differs from build to build, as a build
that is not reproducible does.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagesmith.engine.base import Engine, ImageInfo, LineCallback, RunResult, check_context
from imagesmith.engine.events import EventCallback, ImageMade, StepStarted
from imagesmith.errors import BuildError, EngineError, NoLocalImageError
from imagesmith.image.oci import open_image
from imagesmith.progress import StepLine

#: The mtime of every entry the fake writes (the engines' own clock, before canonical clamps).
BUILD_TIME = 1_750_000_000


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _add(tar: tarfile.TarFile, name: str, data: bytes, *, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, BUILD_TIME
    tar.addfile(info, io.BytesIO(data))


def layer_from(files: Mapping[str, bytes]) -> bytes:
    """An uncompressed layer tar holding `files` (path in the image -> content), sorted."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        for d in dirs:
            for i in range(1, len(Path(d).parts) + 1):
                name = "/".join(Path(d).parts[:i])
                if name not in tar.getnames():
                    info = tarfile.TarInfo(name)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, BUILD_TIME
                    tar.addfile(info)
        for path in sorted(files):
            _add(tar, path, files[path])
    return buf.getvalue()


def docker_archive(config: Mapping[str, Any], layers: Sequence[bytes]) -> tuple[bytes, bytes]:
    """A docker-archive (the `docker save` format) of one image and its config's bytes;
    `config` gets its rootfs."""
    config = {
        **config,
        "rootfs": {"type": "layers", "diff_ids": [_sha256(layer) for layer in layers]},
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    buf = io.BytesIO()
    names = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for layer in layers:
            name = f"{hashlib.sha256(layer).hexdigest()}/layer.tar"
            _add(tar, name, layer)
            names.append(name)
        cfg_name = f"{hashlib.sha256(cfg).hexdigest()}.json"
        _add(tar, cfg_name, cfg)
        manifest = [{"Config": cfg_name, "RepoTags": [], "Layers": names}]
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return buf.getvalue(), cfg


def _words(text: str) -> list[str]:
    """The words of an ENV/LABEL argument as a builder reads them: double quotes group,
    and inside them a backslash escapes only a backslash, a quote or a dollar sign (the
    quoting `imagesmith.render.containerfile.quote_value` writes)."""
    words: list[str] = []
    word, quoted, i = "", False, 0
    while i < len(text):
        c = text[i]
        if quoted and c == "\\" and text[i + 1 : i + 2] in ('"', "\\", "$"):
            word, i = word + text[i + 1], i + 2
            continue
        if c == '"':
            quoted = not quoted
        elif c.isspace() and not quoted:
            if word:
                words.append(word)
            word = ""
        else:
            word += c
        i += 1
    return [*words, word] if word else words


def stage_config(containerfile: str, target: str | None = None) -> dict[str, Any]:
    """The image config (Env, Labels, User, WorkingDir, Cmd) the Containerfile's last stage,
    or stage `target`, ends with: what its ENV, LABEL, USER, WORKDIR and CMD lines set, on
    top of the stage it starts FROM when that is one of its own. RUN and COPY do nothing."""
    text = containerfile.replace("\\\n", "")
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] = {}
    for line in text.splitlines():
        instruction, _, rest = line.strip().partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ")
            current = json.loads(json.dumps(stages.get(base.strip(), {})))  # a copy
            if name.strip():
                stages[name.strip()] = current
        elif instruction in ("ENV", "LABEL"):
            pairs = dict(w.split("=", 1) for w in _words(rest))
            if instruction == "ENV":
                env = dict(e.split("=", 1) for e in current.get("Env", []))
                current["Env"] = [f"{k}={v}" for k, v in {**env, **pairs}.items()]
            else:
                current["Labels"] = {**current.get("Labels", {}), **pairs}
        elif instruction == "USER":
            current["User"] = rest.strip()
        elif instruction == "WORKDIR":
            current["WorkingDir"] = rest.strip()
        elif instruction == "CMD":
            current["Cmd"] = json.loads(rest)
    return stages[target] if target is not None else current


@dataclass
class FakeImage:
    archive: bytes
    """The image as a docker-archive (its tags live in `FakeEngine.tags`)."""
    config_bytes: bytes
    """The config as stored: its sha256 is the image ID, as on the real engines."""
    partial: bool = False
    """Left behind by a build that failed (what an engine's intermediate images are)."""


@dataclass
class FakeEngine(Engine):
    """An engine that holds images in memory (see the module doc)."""

    name: str = "fake"
    load_compressed: bool = True
    """False: `make_canonical` hands `load` plain layers, as it does podman."""
    fail_build_at: int | None = None
    fail_load: bool = False
    fail_tag_at: int | None = None
    interrupt: bool = False
    drift: bool = False
    run_output: dict[tuple[str, ...], RunResult] = field(default_factory=dict)
    """Canned answers of `run`, by command; any other command exits 0 with no output."""
    registry: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    """What `pull` finds: reference -> (docker-archive, config bytes), see `docker_archive`."""

    images: dict[str, FakeImage] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    """Every tag -> the ID of the image it names."""
    builds: list[dict[str, Any]] = field(default_factory=list)
    """The arguments of each `build` call, failed ones too."""
    calls: list[str] = field(default_factory=list)
    """The name of every method called, in order."""
    loaded: list[list[str]] = field(default_factory=list)
    """The layer member names of each archive `load` read (`<hex>.tar.gz` or plain `.tar`)."""
    ran: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    _tag_calls: int = 0

    # -- images --------------------------------------------------------------------------

    def build(
        self,
        *,
        context: Path,
        containerfile: str = "Containerfile",
        tags: Sequence[str] = (),
        labels: Mapping[str, str] | None = None,
        build_args: Mapping[str, str] | None = None,
        no_cache: bool = False,
        on_line: LineCallback | None = None,
        target: str | None = None,
        on_event: EventCallback | None = None,
    ) -> str:
        self.calls.append("build")
        self.builds.append(
            {
                "context": context,
                "tags": tuple(tags),
                "build_args": dict(build_args or {}),
                "no_cache": no_cache,
                "target": target,
            }
        )
        path = check_context(context, containerfile)
        files = {
            f"imagesmith-fake/context/{p.relative_to(context).as_posix()}": p.read_bytes()
            for p in sorted(context.rglob("*"))
            if p.is_file() and p != path
        }
        files["imagesmith-fake/Containerfile"] = path.read_bytes()
        files["imagesmith-fake/build-args.json"] = json.dumps(
            dict(build_args or {}), sort_keys=True
        ).encode()
        if self.drift:  # a build that is not reproducible: one file differs every time
            files["imagesmith-fake/build-number"] = str(len(self.builds)).encode()
        say = on_line or (lambda _: None)
        announce = on_event or (lambda _: None)
        say(StepLine(f"STEP 1/2: FROM {target or 'scratch'}"))
        announce(StepStarted(1, 2, f"FROM {target or 'scratch'}"))
        if self.fail_build_at == len(self.builds):
            # An engine keeps the steps that finished: an untagged intermediate image.
            self._store(self._image({}, [layer_from({"partial": b"step 1\n"})]), partial=True)
            say(StepLine("STEP 2/2: COPY . /imagesmith-fake/"))
            if self.interrupt:
                raise KeyboardInterrupt
            raise BuildError(
                "fake: build failed at step 2/2", step="STEP 2/2: COPY", output_tail=["boom"]
            )
        say(StepLine("STEP 2/2: COPY . /imagesmith-fake/"))
        announce(StepStarted(2, 2, "COPY . /imagesmith-fake/"))
        config = stage_config(path.read_text(encoding="utf-8"), target)
        config["Labels"] = {**config.get("Labels", {}), **(labels or {})}
        image_id = self._store(self._image(config, [layer_from(files)]))
        announce(ImageMade(image_id))
        for ref in tags:
            self.tag(image_id, ref)
        return image_id

    def image_exists(self, ref: str) -> bool:
        self.calls.append("image_exists")
        return self._find(ref) is not None

    def inspect_image(self, ref: str) -> ImageInfo:
        self.calls.append("inspect_image")
        image_id = self._resolve(ref)
        config = self.config(image_id)
        inner = config.get("config") or {}
        return ImageInfo(
            id=image_id,
            repo_tags=tuple(sorted(t for t, i in self.tags.items() if i == image_id)),
            labels=dict(inner.get("Labels") or {}),
            size=len(self.images[image_id].archive),
            user=str(inner.get("User") or ""),
            workdir=str(inner.get("WorkingDir") or ""),
            env=dict(e.split("=", 1) for e in inner.get("Env") or ()),
            architecture=str(config.get("architecture", "")),
            os=str(config.get("os", "")),
        )

    def tag(self, image: str, ref: str) -> None:
        self.calls.append("tag")
        self._tag_calls += 1
        image_id = self._resolve(image)
        if self.fail_tag_at == self._tag_calls:
            if self.interrupt:
                raise KeyboardInterrupt
            raise EngineError(f"fake: cannot tag {image} as {ref}")
        self.tags[ref] = image_id

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        self.calls.append("remove_image")
        if ref in self.tags:
            image_id = self.tags.pop(ref)
            if image_id in self.tags.values():
                return  # another tag still names it: only the tag goes
        elif ref in self.images:
            image_id = ref
            named = [t for t, i in self.tags.items() if i == image_id]
            if named and not force:
                raise EngineError(f"fake: {ref} is tagged {', '.join(named)}; use force")
            for t in named:
                del self.tags[t]
        else:
            return
        self.images.pop(image_id, None)

    def forget_build(self, image_id: str) -> None:
        self.calls.append("forget_build")
        if image_id in self.images and image_id not in self.tags.values():
            del self.images[image_id]

    # -- containers ----------------------------------------------------------------------

    def run(
        self,
        image: str,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        network: bool = True,
        host_network: bool = False,
    ) -> RunResult:
        self.calls.append("run")
        self._resolve(image)
        self.ran.append((image, tuple(command)))
        return self.run_output.get(tuple(command), RunResult(exit_code=0, output=""))

    # -- moving images -------------------------------------------------------------------

    def save(self, ref: str, dest: Path) -> None:
        self.calls.append("save")
        dest.write_bytes(self.images[self._resolve(ref)].archive)

    def load(self, archive: Path) -> str:
        self.calls.append("load")
        if self.fail_load:
            if self.interrupt:
                raise KeyboardInterrupt
            raise EngineError(f"fake: cannot load {archive.name}")
        with open_image(archive) as src:
            config, repo_tags = src.config, list(src.repo_tags)
            self.loaded.append(list(src.layer_names))
            for i in range(len(src.layer_names)):
                src.open_layer(i).read()  # an unreadable layer fails the load, as it would
        image_id = self._store(FakeImage(archive.read_bytes(), config))
        for ref in repo_tags:
            self.tags[ref] = image_id
        return image_id

    def pull(self, ref: str, *, auth: Mapping[str, str] | None = None) -> str:
        self.calls.append("pull")
        if ref not in self.registry:
            raise EngineError(f"fake: {ref} not found in the registry")
        archive, config = self.registry[ref]
        image_id = self._store(FakeImage(archive, config))
        self.tags[ref] = image_id
        return image_id

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "images": len(self.images)}

    # -- the fake's own ------------------------------------------------------------------

    def tags_of(self, image_id: str) -> list[str]:
        return sorted(t for t, i in self.tags.items() if i == image_id)

    def _image(self, inner: Mapping[str, Any], layers: Sequence[bytes]) -> FakeImage:
        config: dict[str, Any] = {
            "architecture": "amd64",
            "os": "linux",
            "created": "2025-06-15T15:06:40Z",
            "config": {"Env": ["PATH=/usr/bin:/bin"], **inner},
            "history": [{"created": "2025-06-15T15:06:40Z", "created_by": "COPY . /"}],
        }
        return FakeImage(*docker_archive(config, layers))

    def config(self, image_id: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.images[image_id].config_bytes)
        return found

    def _store(self, image: FakeImage, *, partial: bool = False) -> str:
        image_id = _sha256(image.config_bytes)
        image.partial = partial
        self.images.setdefault(image_id, image)
        return image_id

    def _find(self, ref: str) -> str | None:
        if ref in self.images:
            return ref
        if ref in self.tags:
            return self.tags[ref]
        matches = [i for i in self.images if ref and i.removeprefix("sha256:").startswith(ref)]
        return matches[0] if len(matches) == 1 else None

    def _resolve(self, ref: str) -> str:
        found = self._find(ref)
        if found is None:
            raise NoLocalImageError(self.name, ref)
        return found
