"""Docker, through docker-py; builds stream through the low-level API so no error is missed.

docker-py is imported on first use: on a local socket the calls an unchanged build makes
(ping, inspect) go through `engine.docker_socket`, which needs only the standard library."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith.engine.base import (
    Engine,
    ImageInfo,
    OutputTail,
    RunResult,
    build_proxies,
    check_context,
    check_tags,
    disk_full_message,
    is_disk_full,
    proxy_warning,
    split_ref,
)
from imagesmith.engine.docker_socket import BrokenAnswer, DockerSocket, error_message
from imagesmith.engine.events import (
    BuildEvent,
    EventCallback,
    ImageMade,
    StageStarted,
    StepCached,
    StepImage,
    StepStarted,
)
from imagesmith.errors import BuildError, EngineError, NoLocalImageError, RegistryError
from imagesmith.progress import LineCallback

if TYPE_CHECKING:
    from imagesmith.engine.overlay import LocalImage

DEFAULT_HOST = "unix:///var/run/docker.sock"
#: Seconds a quick liveness probe waits for the daemon.
PROBE_TIMEOUT = 3.0
PING_TIMEOUT = 60.0
#: Seconds an ordinary API call may take (builds, waits and streams have none).
API_TIMEOUT = 600


def docker_host() -> str:
    """Where docker-py will look for the daemon, as the user would write it."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def _unreachable(exc: BaseException) -> EngineError:
    text = str(exc)
    host = docker_host()
    if "Permission denied" in text or "PermissionError" in text:
        return EngineError(
            f"the Docker daemon at {host} refused this user (permission denied): "
            "run as root, join the docker group, or use --engine podman"
        )
    return EngineError(
        f"no Docker daemon answers at {host}: start it (dockerd &, or scripts/start-dockerd.sh) "
        "or use --engine podman"
    )


def _errors() -> Any:
    """docker-py's `docker.errors`, importing docker-py (with requests) on first use. An
    `except _errors().X` clause is only evaluated once an exception reaches it."""
    import docker.errors

    return docker.errors


def _broken() -> tuple[type[BaseException], ...]:
    """What a connection to the daemon that breaks mid-request raises: urllib3's
    ProtocolError ("Connection broken: IncompleteRead") from a stream, http.client's
    IncompleteRead or RemoteDisconnected, requests' ConnectionError and
    ChunkedEncodingError. All but the first two are OSErrors too."""
    import http.client

    import urllib3.exceptions

    return (urllib3.exceptions.HTTPError, http.client.HTTPException)


def connect(timeout: float = PROBE_TIMEOUT) -> Any:
    """A docker-py client for the daemon named by DOCKER_HOST; EngineError if none answers."""
    if not _socket_answers(timeout) and not _context_configured():
        raise _unreachable(ConnectionRefusedError())
    import docker

    try:
        # The socket is there, so a daemon is: give a busy one time to answer its ping
        # (seconds, under a heavy build on two cores) before calling it unreachable.
        client = docker.from_env(timeout=max(timeout, PING_TIMEOUT))
        client.ping()
    except _errors().DockerException as exc:
        raise _unreachable(exc) from None
    except OSError as exc:
        raise _unreachable(exc) from None
    return client


def _socket_answers(timeout: float) -> bool:
    """Whether the local socket (DOCKER_HOST unix://..., or the default) accepts connections.

    Probing first answers fast and avoids a docker-py socket leak on refused connections.
    Hosts that are not unix sockets are left to docker-py (True).
    """
    host = docker_host()
    if not host.startswith("unix://"):
        return True
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(host.removeprefix("unix://"))
        except PermissionError:
            raise _unreachable(PermissionError("Permission denied")) from None
        except OSError:
            return False
    return True


def _context_configured() -> bool:
    """Whether, without DOCKER_HOST, docker-py would follow a Docker CLI context elsewhere."""
    if os.environ.get("DOCKER_HOST"):
        return False
    if os.environ.get("DOCKER_CONTEXT", "default") != "default":
        return True
    from imagesmith.registry.docker_config import docker_config_path

    config = docker_config_path()
    try:
        current = json.loads(config.read_text()).get("currentContext", "default")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(current) and current != "default"


def local_socket() -> DockerSocket | None:
    """The daemon's unix socket when docker-py would talk to it (DOCKER_HOST unix://...,
    or the default with no Docker CLI context elsewhere); None for any other host."""
    host = docker_host()
    if not host.startswith("unix://") or _context_configured():
        return None
    return DockerSocket(host.removeprefix("unix://"))


def _connection_lost(what: str, exc: BaseException) -> EngineError:
    """The daemon stopped, restarted or closed the socket while `what` was under way."""
    return EngineError(
        f"docker: {what}: the connection to the Docker daemon at {docker_host()} broke "
        f"({_cause(exc)[:200]}); nothing was tagged or recorded: run the command again "
        "once `docker info` answers"
    )


def _cause(exc: BaseException) -> str:
    """`Connection broken: IncompleteRead(0 bytes read)` from requests' and urllib3's
    wrappers around wrappers."""
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    words = [str(exc.args[0])] if exc.args and isinstance(exc.args[0], str) else []
    last = exc.args[-1] if exc.args else None
    if isinstance(last, BaseException) and str(last) and str(last) not in " ".join(words):
        words.append(str(last))
    return " ".join(words) or type(exc).__name__


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, _errors().APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)


def _operation_error(what: str, exc: BaseException) -> EngineError:
    text = _error_text(exc)
    if is_disk_full(text):
        return EngineError(disk_full_message("Docker's data root (/var/lib/docker)"))
    return EngineError(f"docker: {what}: {text.splitlines()[0] if text else type(exc).__name__}")


@contextlib.contextmanager
def _socket_call(what: str) -> Iterator[None]:
    """Turn socket errors and answers cut short (`docker_socket`) into one-line EngineErrors."""
    try:
        yield
    except BrokenAnswer as exc:  # an answer cut short
        raise _connection_lost(what, exc) from None
    except OSError as exc:
        raise _os_error(what, exc) from None


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Turn docker-py's and requests' exceptions into one-line EngineErrors."""
    try:
        yield
    except _errors().DockerException as exc:
        raise _operation_error(what, exc) from None
    except _broken() as exc:
        raise _connection_lost(what, exc) from None
    except OSError as exc:
        raise _os_error(what, exc) from None


def _os_error(what: str, exc: OSError) -> EngineError:
    from_http = type(exc).__module__.startswith(("requests", "urllib3", "http"))
    if from_http or isinstance(exc, ConnectionError):
        text = str(exc).lower()
        if "refused" in text or "no such file" in text:
            return _unreachable(exc)  # no daemon listens (any more)
        return _connection_lost(what, exc)  # the connection to the daemon broke
    if exc.errno == errno.ENOSPC:
        return EngineError(disk_full_message(exc.filename or "the target directory"))
    return EngineError(f"docker: {what}: {exc.strerror or exc}")


def _stream_error(chunk: Mapping[str, Any]) -> str | None:
    """The error a JSON stream message reports, if it reports one."""
    detail = chunk.get("errorDetail")
    if isinstance(detail, Mapping) and detail.get("message"):
        return str(detail["message"])
    if detail:
        return str(detail)
    if chunk.get("error"):
        return str(chunk["error"])
    return None


def _env_dict(env: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in env or ():
        key, _, value = str(item).partition("=")
        out[key] = value
    return out


def _image_info(data: Mapping[str, Any]) -> ImageInfo:
    """ImageInfo from the daemon's answer to an image inspect."""
    config = data.get("Config") or {}
    return ImageInfo(
        id=str(data["Id"]),
        repo_tags=tuple(t for t in data.get("RepoTags") or () if t != "<none>:<none>"),
        repo_digests=tuple(d for d in data.get("RepoDigests") or () if not d.startswith("<none>")),
        labels=dict(config.get("Labels") or {}),
        size=int(data.get("Size") or 0),
        user=str(config.get("User") or ""),
        workdir=str(config.get("WorkingDir") or ""),
        env=_env_dict(config.get("Env")),
        architecture=str(data.get("Architecture") or ""),
        os=str(data.get("Os") or ""),
    )


_STEP = re.compile(r"^Step (\d+)/(\d+) ?: ?(.*)$")
_STAGE_NAME = re.compile(r"\sAS\s+(\S+)\s*$", re.IGNORECASE)
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


class BuildOutput:
    """Reads the classic builder's output into build events (see `engine.events`).

    ``Step 4/16 : FROM system AS python`` starts a step; the `` ---> <12 hex>`` after a
    ``FROM`` is the image the stage starts from, after any other step the image that step
    left (Docker runs the steps in order, so its stage is the last ``FROM``'s);
    `` ---> Using cache`` marks the step taken from the cache.
    """

    def __init__(self) -> None:
        self._stage: str | None = None
        """The ``AS`` name of the stage being built ("" unnamed; None before the first)."""
        self._after_from = False

    def __call__(self, line: str) -> list[BuildEvent]:
        after_from, self._after_from = self._after_from, False
        image = _STEP_IMAGE.match(line)
        if image:
            if after_from:
                return [StageStarted(image.group(1), name=self._stage or "")]
            return [] if self._stage is None else [StepImage(image.group(1), stage=self._stage)]
        if line == " ---> Using cache":
            return [StepCached()]
        step = _STEP.match(line)
        if step is None:
            return []
        number, total, instruction = step.groups()
        if instruction.startswith("FROM "):
            name = _STAGE_NAME.search(instruction)
            self._stage = name.group(1) if name else ""
            self._after_from = True
        return [StepStarted(int(number), int(total), instruction.strip())]


class DockerEngine(Engine):
    """A Docker daemon (DOCKER_HOST, or the local socket)."""

    name = "docker"
    loads_beside_builds = True

    def __init__(self, client: Any = None) -> None:
        """`client`: a docker-py client to use; without one, the daemon DOCKER_HOST names
        must answer now (EngineError if not), and on a local socket docker-py is only
        imported for the first call the socket does not answer itself."""
        self._socket = None if client is not None else local_socket()
        if client is None and self._socket is None:
            client = connect()
        elif self._socket is not None:
            self._ping(self._socket)
        self._client: Any = client
        self._store: Path | None = None  # DockerRootDir on a native overlay2, Path() if not

    @staticmethod
    def _ping(local: DockerSocket) -> None:
        try:
            # Quick when nothing listens; a busy daemon gets time (see connect).
            answered = local.ping(timeout=PING_TIMEOUT)
        except (OSError, BrokenAnswer) as exc:
            raise _unreachable(exc) from None
        if not answered:
            raise _unreachable(ConnectionRefusedError())

    @property
    def _api(self) -> Any:
        """docker-py's low-level client, connected on first use."""
        if self._client is None:
            self._client = connect()
        self._client.api.timeout = API_TIMEOUT
        return self._client.api

    @contextlib.contextmanager
    def _closing_responses(self) -> Iterator[None]:
        """Close every HTTP response opened inside the block when it ends.

        docker-py's streaming calls return generators that never close their response;
        a stream left early (an error, Ctrl-C) would leak the socket and, for a build,
        keep the daemon building. Closing the response makes the daemon cancel.
        """
        opened: list[Any] = []

        def keep(response: Any, *args: Any, **kwargs: Any) -> Any:
            opened.append(response)
            return response

        hooks = self._api.hooks.setdefault("response", [])
        hooks.append(keep)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                hooks.remove(keep)
            for response in opened:
                with contextlib.suppress(Exception):
                    response.close()

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
        tag_list = check_tags(tags)
        check_context(context, containerfile)
        out = OutputTail(on_line, parse=BuildOutput(), on_event=on_event)
        try:
            with self._closing_responses():
                image_id = self._stream_build(
                    context, containerfile, labels, build_args, no_cache, target, out
                )
        except _errors().APIError as exc:
            out.flush()
            raise self._build_error(_error_text(exc), out) from None
        except _errors().DockerException as exc:
            raise _operation_error("build", exc) from None
        except _broken() as exc:
            raise _connection_lost("build", exc) from None
        except OSError as exc:
            raise _os_error("build", exc) from None
        out.flush()
        if image_id is None:
            image_id = self._built_id(out.tail)
        out.announce(ImageMade(image_id))
        self.apply_tags(image_id, tag_list)
        return image_id

    def _stream_build(
        self,
        context: Path,
        containerfile: str,
        labels: Mapping[str, str] | None,
        build_args: Mapping[str, str] | None,
        no_cache: bool,
        target: str | None,
        out: OutputTail,
    ) -> str | None:
        """Run the build, feeding `out`; the image ID the daemon reported, if any."""
        image_id: str | None = None
        # docker-py passes the Docker config's proxies as build args; those holding a
        # password are left out (see build_proxies).
        configured = getattr(self._api, "_proxy_configs", None)
        proxies, dropped = build_proxies(configured.get_environment() if configured else {})
        if dropped:
            out.feed(proxy_warning(dropped) + "\n")
        # No tag here: the image is tagged by build(), only once the build succeeded.
        stream = self._api.build(
            path=str(context),
            dockerfile=containerfile,
            labels=dict(labels or {}),
            buildargs={**proxies, **(build_args or {})},
            use_config_proxy=False,
            nocache=no_cache,
            target=target,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                out.feed(str(chunk["stream"]))
            elif "status" in chunk:  # pulling the FROM image
                out.feed(f"{chunk['status']} {chunk.get('progress', '')}".rstrip() + "\n")
            aux = chunk.get("aux")
            if isinstance(aux, Mapping) and aux.get("ID"):
                image_id = str(aux["ID"])
            error = _stream_error(chunk)
            if error is not None:
                out.flush()
                raise self._build_error(error, out)
        return image_id

    def _built_id(self, tail: list[str]) -> str:
        """The ID from 'Successfully built abc123' (daemons that send no aux message)."""
        for line in reversed(tail):
            match = re.match(r"^Successfully built ([0-9a-f]+)$", line)
            if match:
                return self.inspect_image(match.group(1)).id
        raise BuildError("docker build ended without reporting an image ID", output_tail=tail)

    @staticmethod
    def _build_error(error: str, out: OutputTail) -> BuildError:
        first = error.strip().splitlines()[0] if error.strip() else "unknown error"
        if is_disk_full(error):
            first = disk_full_message("Docker's data root (/var/lib/docker)")
        # "The command '/bin/sh -c <the whole RUN line>' returned a non-zero code: 100":
        # the step is reported on its own line already, keep the verdict (the RUN line may
        # span lines: an [image] run script).
        failed = re.match(
            r"^The command .* returned a non-zero code: (\d+)$", error.strip(), re.DOTALL
        )
        if failed:
            first = f"the step exited with code {failed.group(1)}"
        return BuildError(f"docker build failed: {first}", step=out.step, output_tail=out.tail)

    def image_exists(self, ref: str) -> bool:
        return self._inspect(ref) is not None

    def inspect_image(self, ref: str) -> ImageInfo:
        data = self._inspect(ref)
        if data is None:
            raise NoLocalImageError("docker", ref)
        return _image_info(data)

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        """The daemon's description of image `ref`; None when it has no such image."""
        if self._socket is None:
            with _translated(f"inspect {ref}"):
                try:
                    return dict(self._api.inspect_image(ref))
                except _errors().NotFound:
                    return None
        with _socket_call(f"inspect {ref}"):
            status, answer = self._socket.inspect_image(ref, timeout=API_TIMEOUT)
        if status == 404:
            return None
        if status != 200 or not isinstance(answer, dict):
            raise _operation_error(f"inspect {ref}", Exception(error_message(answer)))
        return answer

    def tag(self, image: str, ref: str) -> None:
        repository, tag = split_ref(ref)
        with _translated(f"tag {image} as {ref}"):
            try:
                ok = self._api.tag(image, repository, tag=tag, force=True)
            except _errors().NotFound:
                raise EngineError(f"docker: cannot tag {image}: no such image") from None
        if not ok:
            raise EngineError(f"docker: tagging {image} as {ref} failed")

    def forget_build(self, image_id: str) -> None:
        # Removing the top image also removes its untagged parents: the chain a --no-cache
        # build left, which would otherwise split the classic builder's cache.
        self.remove_image(image_id)

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        with _translated(f"remove {ref}"):
            try:
                self._api.remove_image(ref, force=force)
            except _errors().NotFound:
                return

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
        with _translated(f"run {image}"):
            mode = None if network and not host_network else "host" if network else "none"
            host_config = self._api.create_host_config(network_mode=mode)
            try:
                container = self._api.create_container(
                    image,
                    command=list(command),
                    environment=dict(env or {}),
                    user=user or "",
                    host_config=host_config,
                )
            except _errors().NotFound:
                raise NoLocalImageError("docker", image) from None
            cid = container["Id"]
            try:
                try:
                    self._api.start(cid)
                except _errors().APIError as exc:
                    # The command cannot be started: answer like a shell (and podman) would.
                    text = _error_text(exc)
                    if "not found" in text or "no such file" in text.lower():
                        return RunResult(127, text)
                    if "permission denied" in text.lower():
                        return RunResult(126, text)
                    raise
                status = self._api.wait(cid)
                logs = self._api.logs(cid, stdout=True, stderr=True)
                output = bytes(logs).decode("utf-8", errors="replace")
                return RunResult(int(status.get("StatusCode", -1)), output)
            finally:
                with contextlib.suppress(_errors().DockerException, OSError):
                    self._api.remove_container(cid, force=True, v=True)

    # -- moving images -------------------------------------------------------------------

    def save(self, ref: str, dest: Path) -> None:
        part = dest.with_name(dest.name + ".part")
        try:
            with _translated(f"save {ref}"), self._closing_responses():
                try:
                    chunks = self._api.get_image(ref)
                    with part.open("wb") as fh:
                        for chunk in chunks:
                            fh.write(chunk)
                except _errors().NotFound:
                    raise NoLocalImageError("docker", ref) from None
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise EngineError(disk_full_message(str(dest.parent))) from None
                    raise
                part.replace(dest)
        finally:
            part.unlink(missing_ok=True)

    def _local_store(self) -> Path | None:
        """DockerRootDir when it is on this machine and readable as the image files are
        (overlay2, native diff, no user namespaces); else None."""
        if not docker_host().startswith("unix://"):
            return None  # the daemon's files are on another machine
        if self._store is None:
            try:
                info = self._api.info()
                status = {str(k): str(v) for k, v in info.get("DriverStatus") or ()}
                native = (
                    info.get("Driver") == "overlay2"
                    and status.get("Native Overlay Diff") == "true"
                    # user namespaces shift the ids on disk
                    and not any("userns" in str(o) for o in info.get("SecurityOptions") or ())
                )
                self._store = Path(info["DockerRootDir"]) if native else Path()
            except (_errors().DockerException, OSError, KeyError, TypeError, ValueError):
                return None
        return None if self._store == Path() else self._store

    def present_layers(self, diff_ids: Sequence[str]) -> int:
        store = self._local_store()
        if store is None:
            return 0
        layerdb = store / "image/overlay2/layerdb/sha256"
        count, chain = 0, ""
        for diff_id in diff_ids:
            # OCI chain IDs: the first layer's is its diff_id, then sha256("<parent> <diff>").
            chain = diff_id if not chain else _sha256_text(f"{chain} {diff_id}")
            try:
                recorded = (layerdb / chain.removeprefix("sha256:") / "diff").read_text()
            except OSError:
                break
            if recorded.strip() != diff_id:
                break
            count += 1
        return count

    def local_image(self, ref: str) -> LocalImage | None:
        store = self._local_store()
        if store is None:
            return None
        try:
            data = self._api.inspect_image(ref)
        except (_errors().DockerException, OSError, KeyError, TypeError, ValueError):
            return None
        from imagesmith.engine.overlay import local_image  # only for a build's rewrite

        driver = data.get("GraphDriver") or {}
        if driver.get("Name") != "overlay2":
            return None
        image_id = str(data.get("Id", ""))
        layers = (data.get("RootFS") or {}).get("Layers") or []
        return local_image(
            image_id,
            config_file=store
            / "image/overlay2/imagedb/content/sha256"
            / image_id.removeprefix("sha256:"),
            upper_dir=str((driver.get("Data") or {}).get("UpperDir") or ""),
            lower_dirs=str((driver.get("Data") or {}).get("LowerDir") or ""),
            layer_count=len(layers),
            description=f"docker image {ref}",
        )

    def load(self, archive: Path) -> str:
        if not archive.is_file():
            raise EngineError(f"docker: no archive at {archive}")
        loaded: list[str] = []
        with (
            _translated(f"load {archive}"),
            self._closing_responses(),
            archive.open("rb") as fh,
        ):
            for chunk in self._api.load_image(fh):
                error = _stream_error(chunk)
                if error is not None:
                    raise _operation_error(f"load {archive}", Exception(error))
                match = re.search(r"Loaded image(?: ID)?: (\S+)", str(chunk.get("stream", "")))
                if match:
                    loaded.append(match.group(1))
        if not loaded:
            raise EngineError(f"docker: loading {archive} reported no image")
        return self.inspect_image(loaded[0]).id

    def _registry_stream(self, what: str, chunks: Iterator[Mapping[str, Any]]) -> None:
        """Consume a pull/push progress stream; raise on the first error in it.

        docker-py does not raise for errors the daemon reports inside the stream
        (docker/docker-py#3161, #3277): every `error`/`errorDetail` message counts.
        """
        for chunk in chunks:
            error = _stream_error(chunk)
            if error is not None:
                first = error.strip().splitlines()[0] if error.strip() else "unknown error"
                if is_disk_full(error):
                    raise EngineError(disk_full_message("Docker's data root (/var/lib/docker)"))
                raise RegistryError(f"docker {what}: {first}")

    def _registry_call(self, what: str, call: Any) -> None:
        with _translated(what), self._closing_responses():
            try:
                self._registry_stream(what, call())
            except _errors().APIError as exc:
                first = (_error_text(exc).splitlines() or ["error"])[0]
                raise RegistryError(f"docker {what}: {first}") from None

    def pull(self, ref: str, *, auth: Mapping[str, str] | None = None) -> str:
        repository, tag = split_ref(ref)
        self._registry_call(
            f"pull {ref}",
            lambda: self._api.pull(
                repository,
                tag=tag,
                stream=True,
                decode=True,
                auth_config=dict(auth) if auth else None,
            ),
        )
        return self.inspect_image(ref).id

    # -- the engine itself ---------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        try:
            data = self._api.info()
        except (_errors().DockerException, OSError) as exc:
            raise _unreachable(exc) from None
        return dict(data)


def _sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("ascii")).hexdigest()
