"""The one interface imagesmith talks to: a container engine that builds, runs and moves images.

Every method takes keyword-only options; what differs between Docker and podman stays in
the implementations (`docker.py`, `podman.py`). Conventions all engines keep:

- image IDs are returned as `sha256:<64 hex>`;
- a build is tagged only after it succeeded, so a failed or interrupted build never
  carries one of the requested tags;
- a missing image is not an error for `remove_image`, and is `False` for `image_exists`;
- errors are `imagesmith.errors` exceptions (`EngineError`, `BuildError`, `RegistryError`,
  `InputError`), each with a message that fits one line;
- a build passes every line of its output to `on_line` (as a `imagesmith.progress.StepLine`
  when the line starts a step, which the CLI keeps on screen) and announces what it
  recognises in that output as typed events (`imagesmith.engine.events`) to `on_event`:
  each step it starts (`StepStarted`) and takes from its cache (`StepCached`), the image
  each stage starts from (`StageStarted`), the image a step left where the engine can
  tell its stage (`StepImage`), and the image it made (`ImageMade`). Reading the
  engine's own output is the engine's business alone: the pipeline and the CLI see
  lines and events only.
"""

from __future__ import annotations

import abc
import contextlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith.engine.events import BuildEvent, EventCallback, StepStarted
from imagesmith.errors import InputError
from imagesmith.model.reference import parse_reference
from imagesmith.progress import LineCallback, StepLine

if TYPE_CHECKING:
    from imagesmith.engine.overlay import LocalImage

#: How many trailing lines of build output a BuildError carries.
TAIL_LINES = 20


@dataclass(frozen=True)
class ImageInfo:
    """What imagesmith needs to know about a local image, the same on every engine."""

    id: str
    repo_tags: tuple[str, ...] = ()
    repo_digests: tuple[str, ...] = ()
    """`name@sha256:...` of the manifests registries hold for it (none for a local-only image)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    size: int = 0
    user: str = ""
    workdir: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    architecture: str = ""
    os: str = ""


@dataclass(frozen=True)
class RunResult:
    """Exit code and combined stdout+stderr of a finished, already removed container."""

    exit_code: int
    output: str


class Engine(abc.ABC):
    """A container engine. Instances are cheap to keep; they hold no running containers."""

    name: str
    load_compressed: bool = True
    """Whether `load` should get gzip layers (smaller archive) rather than plain tar ones
    (no decompression in the engine). Measured on the example image: docker 20.10 loads
    either in about 2 s; podman 4.3 takes 11.4 s for gzip layers and 3.9 s for plain."""
    loads_beside_builds: bool = False
    """Whether `load` may run while a build runs on the same engine, so that a build's
    finished layers, made canonical, can be loaded before the build ends (`Prewarm`)."""

    # -- images --------------------------------------------------------------------------

    @abc.abstractmethod
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
        """Build `context/containerfile`, tag the result with every tag; return its image ID.

        `target` stops at that stage (``AS NAME``) instead of the last one. Every output
        line goes to `on_line`, after it the events read from it to `on_event` (see the
        module doc); `ImageMade` comes last, before the tags are applied.

        Raises BuildError (with the failing step and the last output lines) when any step
        or any message in the engine's output reports an error; no tag is applied then.
        """

    @abc.abstractmethod
    def image_exists(self, ref: str) -> bool:
        """Whether `ref` (name, name:tag or image ID) names a local image."""

    @abc.abstractmethod
    def inspect_image(self, ref: str) -> ImageInfo:
        """Details of a local image; EngineError when there is none."""

    @abc.abstractmethod
    def tag(self, image: str, ref: str) -> None:
        """Give the local image `image` (ID or reference) the additional name `ref`."""

    @abc.abstractmethod
    def remove_image(self, ref: str, *, force: bool = False) -> None:
        """Remove a tag or an image; nothing happens when it does not exist."""

    # -- containers ----------------------------------------------------------------------

    @abc.abstractmethod
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
        """Run `command` in a new container of the local `image`, wait, remove the container.

        `network=False`: no network at all; `host_network`: the host's network namespace
        (so that the container reaches services on the host's loopback)."""

    # -- moving images -------------------------------------------------------------------

    @abc.abstractmethod
    def save(self, ref: str, dest: Path) -> None:
        """Write `ref` to `dest` as a docker-archive tarball (the `docker save` format)."""

    def local_image(self, ref: str) -> LocalImage | None:
        """The image's config and layer directories in the engine's store, when this process
        can read them there (the engine runs here, on a native overlay store); else None.

        Lets `canonical_build` skip `save` (see `imagesmith.engine.overlay`).
        """
        return None

    @abc.abstractmethod
    def load(self, archive: Path) -> str:
        """Load a docker-archive tarball; return the ID of the (first) image in it."""

    def present_layers(self, diff_ids: Sequence[str]) -> int:
        """How many of `diff_ids` (bottom first) the engine already stores, as that very
        chain of layers. `load` reuses those without reading them, so the archive may
        leave them empty. 0 when the engine's store cannot be read here."""
        return 0

    def forget_build(self, image_id: str) -> None:
        """Drop an image a build made and nothing else needs, where that is safe for the
        engine's build cache. By default nothing is removed."""
        return None

    @abc.abstractmethod
    def pull(self, ref: str, *, auth: Mapping[str, str] | None = None) -> str:
        """Pull `ref` from its registry; return the local image ID."""

    # -- the engine itself ---------------------------------------------------------------

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """The engine's own description of itself; EngineError when it does not answer."""

    # -- shared by the implementations and the pipeline ----------------------------------

    def apply_tags(self, image_id: str, tags: Sequence[str]) -> None:
        """Tag `image_id` with every tag; if that is cut short, undo the tags already set.

        Undo means: a tag that named another image before names it again, a new tag is
        removed. This runs for KeyboardInterrupt too.
        """
        done: list[tuple[str, str | None]] = []
        try:
            for ref in tags:
                previous = self.inspect_image(ref).id if self.image_exists(ref) else None
                if previous == image_id:
                    continue
                self.tag(image_id, ref)
                done.append((ref, previous))
        except BaseException:
            for ref, previous in reversed(done):
                with contextlib.suppress(Exception):
                    if previous is None:
                        self.remove_image(ref)
                    else:
                        self.tag(previous, ref)
            raise

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def check_tags(tags: Iterable[str]) -> list[str]:
    """The tags as a list; InputError when one is not a `name[:tag]` reference."""
    if isinstance(tags, str):
        raise InputError(f"tags must be a list of references, not the string {tags!r}")
    out = []
    for tag in tags:
        try:
            ref = parse_reference(tag)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if ref.digest is not None:
            raise InputError(f"{tag!r} cannot be used as a tag: it contains a digest")
        out.append(tag)
    return out


def check_context(context: Path, containerfile: str) -> Path:
    """The Containerfile's path; InputError when the context or the file is missing."""
    if not context.is_dir():
        raise InputError(f"build context {context} is not a directory")
    path = Path(containerfile)
    if not path.is_absolute():
        path = context / path
    if not path.is_file():
        raise InputError(f"no Containerfile at {path}")
    return path


#: Reads one line of an engine's build output (the engine's own format): the events in it.
OutputParser = Callable[[str], Sequence[BuildEvent]]


class OutputTail:
    """Collects build output: the last lines, the step being run, every line to `on_line`
    (a `StepLine` when it starts a step), and after it the events `parse` reads from it
    to `on_event`."""

    def __init__(
        self,
        on_line: LineCallback | None,
        *,
        parse: OutputParser | None = None,
        on_event: EventCallback | None = None,
    ) -> None:
        self._on_line = on_line
        self._parse = parse
        self._on_event = on_event
        self._partial = ""
        self.lines: deque[str] = deque(maxlen=TAIL_LINES)
        self.step = ""

    def feed(self, text: str) -> None:
        """Add raw output; complete lines are handled now, a trailing partial line later."""
        text = self._partial + text
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._line(line)

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = ""

    def announce(self, event: BuildEvent) -> None:
        """Pass an event to `on_event` (the step it starts becomes `step`)."""
        if isinstance(event, StepStarted):
            self.step = event.describe()
        if self._on_event is not None:
            self._on_event(event)

    def _line(self, raw: str) -> None:
        # Progress bars redraw with \r: keep what the terminal would finally show.
        line = raw.rstrip("\r").rsplit("\r", 1)[-1].rstrip()
        events = self._parse(line) if self._parse is not None else ()
        self.lines.append(line)
        if self._on_line is not None:
            starts_step = any(isinstance(event, StepStarted) for event in events)
            self._on_line(StepLine(line) if starts_step else line)
        for event in events:
            self.announce(event)

    @property
    def tail(self) -> list[str]:
        return list(self.lines)


_DISK_FULL = "no space left on device"


def is_disk_full(message: str) -> bool:
    return _DISK_FULL in message.lower()


def disk_full_message(where: str) -> str:
    return (
        f"the disk holding {where} is full (no space left on device): "
        "free space, e.g. remove unused images, and retry"
    )


def split_ref(ref: str) -> tuple[str, str]:
    """`(repository, tag_or_digest)` as the engines' APIs want it; the tag defaults to latest."""
    try:
        parsed = parse_reference(ref)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    repository = name.rsplit(":", 1)[0] if ":" in last else name
    if parsed.digest:
        return repository, parsed.digest
    return repository, parsed.tag or "latest"


#: The variables engines pass into RUN steps as the build's proxy (Docker's predefined
#: build args; podman's --http-proxy passes its own environment's).
PROXY_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "ftp_proxy", "all_proxy", "no_proxy",
)  # fmt: skip


def build_proxies(proxies: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The proxy settings a build may see, and the names of those it may not.

    A RUN step sees the proxy variables and may write them into a layer (`env > file`,
    a tool's log): a proxy URL with a user name or password in it is left out, so that
    the password never reaches an image. A build that needs that proxy fails to reach
    the network instead, which the warning explains.
    """
    from imagesmith.model.spec_checks import url_has_credentials

    kept: dict[str, str] = {}
    dropped: list[str] = []
    for name, value in proxies.items():
        if name in PROXY_VARIABLES and url_has_credentials(value):
            dropped.append(name)
        else:
            kept[name] = value
    return kept, sorted(dropped)


def proxy_warning(dropped: Sequence[str]) -> str:
    return (
        f"warning: {', '.join(dropped)} holds a user name or password: not passed into the "
        "build, where a step could write it into a layer (apt and other RUN steps see no "
        "proxy; a lab proxy that needs a login cannot serve builds)"
    )
