"""Podman, through its CLI (daemonless): no service to start, exit codes are the truth."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

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
)
from imagesmith.engine.events import (
    BuildEvent,
    EventCallback,
    ImageMade,
    StageStarted,
    StepCached,
    StepImage,
    StepStarted,
)
from imagesmith.errors import BuildError, EngineError, InputError, NoLocalImageError, RegistryError
from imagesmith.model.reference import is_loopback, parse_reference
from imagesmith.progress import LineCallback

if TYPE_CHECKING:
    from imagesmith.engine.overlay import LocalImage

INSTALL_HINT = "podman is not installed: apt-get install podman (or use --engine docker)"
RLIMIT_HINT = (
    "podman cannot set rlimits here: write '[containers]\\ndefault_ulimits = []' to "
    "/etc/containers/containers.conf (scripts/install-host.sh does)"
)
#: Seconds an interrupted podman build gets to fail and clean up before it is interrupted.
INTERRUPT_GRACE = 30.0


def podman_binary() -> str | None:
    return shutil.which("podman")


def _sha(image_id: str) -> str:
    image_id = image_id.strip()
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def _familiar(name: str) -> str:
    """podman stores `foo:1` as `localhost/foo:1`; report it as the user wrote it."""
    return name.removeprefix("localhost/")


_STEP_EXIT = re.compile(
    r'Error: building at STEP ".*": while running runtime: exit status (\d+)\s*$', re.S
)


def _error_line(output: str) -> str:
    """The line of podman's output that says what went wrong: for a step that failed,
    its exit code (the step itself is reported apart, and a multi-line RUN would cut
    podman's own line after its first line)."""
    failed = _STEP_EXIT.search(output)
    if failed:
        return f"the step exited with code {failed.group(1)}"
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("Error:") or line.startswith("error"):
            return line.removeprefix("Error:").strip()
    return lines[-1] if lines else "no output"


def _podman_failed(returncode: int, output: str) -> bool:
    """Whether `podman run` itself failed, not the container's command: no such image, a
    bad option, the runtime (125), or the network that could not start the container (126,
    e.g. rootless podman whose slirp4netns cannot open /dev/net/tun). podman says so in a
    line of its own starting with ``Error:``, possibly after its log lines (``time=...
    level=warning``). A command that is not there (127) or cannot be run (126: runc's
    ``exec: ...: permission denied``, crun's ``open executable``) is the command's result,
    as from a shell."""
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    if returncode == 125:
        return bool(errors)
    return returncode == 126 and any(
        not any(word in line for word in _COMMAND_WORDS) for line in errors
    )


#: What podman's error says when it is the container's command that cannot run.
_COMMAND_WORDS = ("exec:", "executable", "OCI permission denied")


def _explain(what: str, output: str) -> str:
    if is_disk_full(output):
        return disk_full_message("podman's storage (/var/lib/containers)")
    if "error setting rlimit" in output:
        return RLIMIT_HINT
    return f"podman {what}: {_error_line(output)}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _container_roots(pid: int) -> list[int]:
    """Processes under `pid` that started a session of their own: the containers of RUN steps.

    podman build -> buildah-oci-runtime -> the step's first process (in its own session).
    """
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        children.setdefault(int(fields[1]), []).append((int(entry), int(fields[3])))
    session = os.getsid(pid)
    roots, todo = [], [pid]
    while todo:
        for child, child_session in children.get(todo.pop(), ()):
            if child_session == session:
                todo.append(child)
            else:
                roots.append(child)
    return roots


def _stop_build(proc: subprocess.Popen[str]) -> None:
    """End an interrupted `podman build` so that it removes its working containers.

    Killing the running RUN step makes the step fail; podman then cleans up and exits
    on its own, as after any failed step. Steps started meanwhile are killed the same way.
    Only if podman does not finish in time is it interrupted (and may leave a container).
    """
    if proc.poll() is not None:
        return
    drain = None
    if proc.stdout is not None:  # keep podman from blocking on a full pipe
        drain = threading.Thread(target=_drain, args=(proc.stdout,), daemon=True)
        drain.start()
    try:
        _end_build(proc)
    finally:
        if drain is not None:
            drain.join(timeout=5)


def _drain(stream: IO[str]) -> None:
    with contextlib.suppress(Exception):
        stream.read()


def _end_build(proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + INTERRUPT_GRACE
    while Path("/proc/self").exists() and time.monotonic() < deadline:
        try:
            roots = _container_roots(proc.pid)
        except OSError:
            break
        for pid in roots:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(timeout=0.2)
            return
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(OSError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


_STEP = re.compile(r"^(?:\[(\d+)/(\d+)\] )?STEP (\d+)/(\d+) ?: ?(.*)$")
_FROM_ID = re.compile(r"^FROM (?:sha256:)?([0-9a-f]{64})\b")
_STAGE_NAME = re.compile(r"\s(?i:AS)\s+(\S+)\s*$")
_STEP_IMAGE = re.compile(r"^--> ([0-9a-f]{11,64})$")
_COMMIT = re.compile(r"^(?:\[\d+/\d+\] )?COMMIT\b")


class BuildOutput:
    """Reads podman's build output into build events (see `engine.events`).

    ``[2/3] STEP 1/4: FROM <64 hex> AS python`` (a multi-stage build numbers its steps
    per stage) starts a step, and a stage from that image, which podman prints once the
    stage it names is built (announced in multi-stage builds only, the lines with a
    ``[stage/stages]`` prefix); ``--> Using cache <64 hex>`` marks a step taken from the
    cache; the ``--> <11 hex>`` after a step is the image that step left. podman builds
    one stage at a time (`--jobs` is 1 unless asked, and imagesmith does not ask), so
    that step is the last one started and its stage the last ``FROM``'s. The ``-->``
    after ``COMMIT`` is the image made, which the engine announces itself (`ImageMade`).
    """

    def __init__(self) -> None:
        self._stage: str | None = None
        """The ``AS`` name of the stage being built ("" unnamed; None before the first)."""
        self._committed = False

    def __call__(self, line: str) -> list[BuildEvent]:
        if line.startswith("--> Using cache"):
            return [StepCached()]
        image = _STEP_IMAGE.match(line)
        if image:
            if self._stage is None or self._committed:
                return []
            return [StepImage(image.group(1), stage=self._stage)]
        if _COMMIT.match(line):
            self._committed = True
            return []
        step = _STEP.match(line)
        if step is None:
            return []
        self._committed = False
        stage, stages, number, total, instruction = step.groups()
        events: list[BuildEvent] = [
            StepStarted(
                int(number), int(total), instruction.strip(), int(stage or 0), int(stages or 0)
            )
        ]
        if number == "1" and instruction.startswith("FROM "):
            name = _STAGE_NAME.search(instruction)
            self._stage = name.group(1) if name else ""
            start = _FROM_ID.match(instruction) if stage else None
            if start:
                events.append(StageStarted(start.group(1), name=self._stage))
        return events


class PodmanEngine(Engine):
    """Podman on this machine, run as the current user (rootful as root)."""

    name = "podman"
    load_compressed = False

    def __init__(self, binary: str | None = None) -> None:
        found = binary or podman_binary()
        if found is None:
            raise EngineError(INSTALL_HINT)
        self._bin = found
        self._store: Path | None = None  # graphRoot of a rootful native overlay, Path() if not

    # -- running the CLI -----------------------------------------------------------------

    def _run(
        self, args: Sequence[str], *, what: str, ok: Sequence[int] = (0,)
    ) -> subprocess.CompletedProcess[str]:
        """Run podman; EngineError (one line) unless its exit code is in `ok`."""
        try:
            proc = subprocess.run(
                [self._bin, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
            )
        except FileNotFoundError:
            raise EngineError(INSTALL_HINT) from None
        if proc.returncode not in ok:
            raise EngineError(_explain(what, proc.stderr + proc.stdout))
        return proc

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
        path = check_context(context, containerfile)
        out = OutputTail(on_line, parse=BuildOutput(), on_event=on_event)
        with tempfile.TemporaryDirectory(prefix="imagesmith-podman-") as tmp:
            iidfile = Path(tmp) / "iid"
            # --format docker: ENV/LABEL/USER/HEALTHCHECK behave as they do on Docker.
            # No --tag: the image is tagged below, only once the build succeeded.
            cmd = [self._bin, "build", "--format", "docker", "--iidfile", str(iidfile)]
            cmd += ["--file", str(path)]
            for key, value in (labels or {}).items():
                cmd += ["--label", f"{key}={value}"]
            for key, value in (build_args or {}).items():
                cmd += ["--build-arg", f"{key}={value}"]
            if no_cache:
                cmd.append("--no-cache")
            if target:
                cmd += ["--target", target]
            cmd.append(str(context))
            # podman passes its own environment's proxy variables into RUN steps.
            environment, dropped = build_proxies(os.environ)
            if dropped and on_line is not None:
                on_line(proxy_warning(dropped))
            returncode = self._stream(cmd, out, environment)
            out.flush()
            image_id = iidfile.read_text().strip() if iidfile.exists() else ""
        if returncode < 0:  # podman itself was killed (OOM killer, kill -9), not a step
            raise EngineError(
                f"podman build was killed ({_signal_name(-returncode)}) before it finished; "
                "nothing was tagged or recorded: run the build again"
            )
        if returncode != 0 or not image_id:
            text = "\n".join(out.tail)
            if is_disk_full(text):
                message = disk_full_message("podman's storage (/var/lib/containers)")
            elif "error setting rlimit" in text:
                message = RLIMIT_HINT
            else:
                message = _error_line(text) if returncode != 0 else "no image ID written"
            raise BuildError(f"podman build failed: {message}", step=out.step, output_tail=out.tail)
        image_id = _sha(image_id)
        out.announce(ImageMade(image_id))
        self.apply_tags(image_id, tag_list)
        return image_id

    def _stream(self, cmd: list[str], out: OutputTail, env: Mapping[str, str]) -> int:
        """Run a build, feeding its merged output line by line; stop it cleanly on Ctrl-C.

        podman runs in its own session, so a Ctrl-C at the terminal reaches only us: a
        podman build that gets SIGINT itself exits at once and leaves its working container
        and the running RUN step behind (containers/podman#14523). `_stop_build` ends it
        so that podman cleans up after itself.
        """
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
                env=env,
            )
        except FileNotFoundError:
            raise EngineError(INSTALL_HINT) from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                out.feed(line)
            return proc.wait()
        except BaseException:
            _stop_build(proc)
            raise
        finally:
            proc.stdout.close()

    def image_exists(self, ref: str) -> bool:
        proc = self._run(["image", "exists", ref], what=f"image exists {ref}", ok=(0, 1))
        return proc.returncode == 0

    def inspect_image(self, ref: str) -> ImageInfo:
        proc = self._run(["image", "inspect", ref], what=f"inspect {ref}", ok=(0, 1, 125))
        if proc.returncode != 0:
            if "image not known" in proc.stderr or "no such" in proc.stderr.lower():
                raise NoLocalImageError("podman", ref)
            raise EngineError(_explain(f"inspect {ref}", proc.stderr))
        data = json.loads(proc.stdout)[0]
        config = data.get("Config") or {}
        env: dict[str, str] = {}
        for item in config.get("Env") or ():
            key, _, value = str(item).partition("=")
            env[key] = value
        return ImageInfo(
            id=_sha(str(data["Id"])),
            repo_tags=tuple(_familiar(t) for t in data.get("RepoTags") or ()),
            # podman gives every local image a `localhost/NAME@sha256:...`; no registry holds
            # those, so only digests from a real registry count (as Docker reports them).
            repo_digests=tuple(
                d for d in data.get("RepoDigests") or () if not d.startswith("localhost/")
            ),
            labels=dict(config.get("Labels") or data.get("Labels") or {}),
            size=int(data.get("Size") or 0),
            user=str(config.get("User") or ""),
            workdir=str(config.get("WorkingDir") or ""),
            env=env,
            architecture=str(data.get("Architecture") or ""),
            os=str(data.get("Os") or ""),
        )

    def tag(self, image: str, ref: str) -> None:
        try:
            parse_reference(ref)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self._run(["tag", image, ref], what=f"tag {image} as {ref}")

    def remove_image(self, ref: str, *, force: bool = False) -> None:
        args = ["rmi", *(["--force"] if force else []), ref]
        proc = self._run(args, what=f"remove {ref}", ok=(0, 1, 2, 125))
        if proc.returncode != 0 and "image not known" not in proc.stderr:
            raise EngineError(_explain(f"remove {ref}", proc.stderr))

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
        # --pull never: like Docker's API, run only what is here; --rm: never leave it behind.
        args = ["run", "--rm", "--pull", "never"]
        if not network:
            args += ["--network", "none"]
        elif host_network:
            args += ["--network", "host"]
        if user:
            args += ["--user", user]
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        with tempfile.TemporaryDirectory(prefix="imagesmith-podman-") as tmp:
            cidfile = Path(tmp) / "cid"
            args += ["--cidfile", str(cidfile), image, *command]
            returncode, output = self._run_container(args, cidfile)
        if _podman_failed(returncode, output):
            if "image not known" in output:
                raise NoLocalImageError("podman", image)
            raise EngineError(_explain(f"run {image}", output))
        return RunResult(returncode, output)

    def _run_container(self, args: list[str], cidfile: Path) -> tuple[int, str]:
        """`podman run ...`: exit code and merged output; on Ctrl-C the container is removed."""
        try:
            proc = subprocess.Popen(
                [self._bin, *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        except FileNotFoundError:
            raise EngineError(INSTALL_HINT) from None
        try:
            output, _ = proc.communicate()
            return proc.returncode, output
        except BaseException:
            # A container's PID 1 may ignore SIGINT: remove it by force, then podman ends.
            if cidfile.exists():
                subprocess.run(
                    [self._bin, "rm", "--force", "--cidfile", str(cidfile)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    check=False,
                )
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise

    # -- moving images -------------------------------------------------------------------

    def save(self, ref: str, dest: Path) -> None:
        part = dest.with_name(dest.name + ".part")
        part.unlink(missing_ok=True)  # podman refuses to overwrite
        try:
            args = ["save", "--quiet", "--format", "docker-archive", "--output", str(part), ref]
            proc = self._run(args, what=f"save {ref}", ok=range(256))
            if proc.returncode != 0:
                output = proc.stderr + proc.stdout
                if is_disk_full(output):
                    raise EngineError(disk_full_message(f"{dest.parent} (or /var/tmp)"))
                if "image not known" in output:
                    raise NoLocalImageError("podman", ref)
                raise EngineError(_explain(f"save {ref}", output))
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)

    def _local_store(self) -> Path | None:
        """graphRoot when its overlay files are readable as the images' files (rootful,
        native diff, no metacopy); else None."""
        if self._store is None:
            self._store = Path()
            try:
                store = self.info()
                status = store["store"]["graphStatus"]
                if (
                    store["host"]["security"]["rootless"] is False  # else ids are shifted on disk
                    and store["store"]["graphDriverName"] == "overlay"
                    and status.get("Native Overlay Diff") == "true"
                    and status.get("Using metacopy") == "false"
                ):
                    self._store = Path(store["store"]["graphRoot"])
            except (EngineError, OSError, KeyError, TypeError, ValueError):
                return None
        return None if self._store == Path() else self._store

    def present_layers(self, diff_ids: Sequence[str]) -> int:
        store = self._local_store()
        if store is None:
            return 0
        try:
            # containers/storage's own record of its layers (read-only here).
            records = json.loads((store / "overlay-layers/layers.json").read_text())
            children: dict[tuple[str, str], str] = {
                (str(r.get("parent") or ""), str(r["diff-digest"])): str(r["id"])
                for r in records
                # a layer still being written is flagged so (containers/storage)
                if r.get("diff-digest") and not (r.get("flags") or {}).get("incomplete")
            }
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        count, parent = 0, ""
        for diff_id in diff_ids:
            layer = children.get((parent, diff_id))
            if layer is None:
                break
            count, parent = count + 1, layer
        return count

    def local_image(self, ref: str) -> LocalImage | None:
        store = self._local_store()
        if store is None:
            return None
        try:
            proc = self._run(["image", "inspect", ref], what=f"inspect {ref}")
            data = json.loads(proc.stdout)[0]
        except (EngineError, OSError, KeyError, TypeError, ValueError, IndexError):
            return None
        from imagesmith.engine.overlay import local_image  # only for a build's rewrite

        driver = data.get("GraphDriver") or {}
        if driver.get("Name") != "overlay":
            return None
        image_id = _sha(str(data.get("Id", "")))
        key = base64.b64encode(image_id.encode("ascii")).decode("ascii")
        return local_image(
            image_id,
            config_file=store / "overlay-images" / image_id.removeprefix("sha256:") / f"={key}",
            upper_dir=str((driver.get("Data") or {}).get("UpperDir") or ""),
            lower_dirs=str((driver.get("Data") or {}).get("LowerDir") or ""),
            layer_count=len((data.get("RootFS") or {}).get("Layers") or []),
            description=f"podman image {ref}",
        )

    def load(self, archive: Path) -> str:
        if not archive.is_file():
            raise EngineError(f"podman: no archive at {archive}")
        proc = self._run(["load", "--input", str(archive)], what=f"load {archive}")
        match = re.search(r"Loaded image(?:\(s\))?: ([^\s,]+)", proc.stdout + proc.stderr)
        if match is None:
            raise EngineError(f"podman: loading {archive} reported no image")
        return self.inspect_image(match.group(1)).id

    @contextlib.contextmanager
    def _registry_args(self, ref: str, auth: Mapping[str, str] | None) -> Iterator[list[str]]:
        """Options for push/pull: credentials in a private auth file, no TLS on loopback.

        Docker accepts plain HTTP from registries on 127.0.0.0/8 without being told;
        podman does the same here, so both engines talk to a local test registry alike.
        """
        try:
            registry = parse_reference(ref).registry
        except ValueError as exc:
            raise InputError(str(exc)) from None
        args: list[str] = []
        if is_loopback(registry):
            args.append("--tls-verify=false")
        if not auth:
            yield args
            return
        entry: dict[str, str] = {}
        if auth.get("identitytoken"):
            entry["identitytoken"] = auth["identitytoken"]
        else:
            user_pass = f"{auth.get('username', '')}:{auth.get('password', '')}"
            entry["auth"] = base64.b64encode(user_pass.encode()).decode()
        with tempfile.TemporaryDirectory(prefix="imagesmith-auth-") as tmp:
            authfile = Path(tmp) / "auth.json"
            fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"auths": {registry: entry}}, fh)
            yield [*args, "--authfile", str(authfile)]

    def _registry(self, verb: str, ref: str, auth: Mapping[str, str] | None) -> None:
        with self._registry_args(ref, auth) as extra:
            proc = self._run([verb, "--quiet", *extra, ref], what=f"{verb} {ref}", ok=range(0, 256))
        if proc.returncode != 0:
            output = proc.stderr + proc.stdout
            if is_disk_full(output):
                raise EngineError(disk_full_message("podman's storage (/var/lib/containers)"))
            raise RegistryError(f"podman {verb} {ref}: {_error_line(output)}")

    def pull(self, ref: str, *, auth: Mapping[str, str] | None = None) -> str:
        self._registry("pull", ref, auth)
        return self.inspect_image(ref).id

    # -- the engine itself ---------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        proc = self._run(["info", "--format", "json"], what="info")
        data: dict[str, Any] = json.loads(proc.stdout)
        return data
