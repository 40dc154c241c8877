"""Whole-process timing: run a command, wall clock from spawn to exit, lines time-stamped."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TIMEOUT = 3600.0


class BenchError(RuntimeError):
    """A measured command failed; carries the tail of its output."""


@dataclass
class Timed:
    """One whole-process measurement."""

    cmd: list[str]
    seconds: float
    returncode: int
    stdout: str
    events: list[tuple[float, str]] = field(default_factory=list)
    """stderr lines, each with the seconds since the process was spawned."""

    @property
    def lines(self) -> list[str]:
        return [line for _, line in self.events]

    def first(self, prefix: str) -> float | None:
        """When the first stderr line starting with `prefix` (after stripping) appeared."""
        for at, line in self.events:
            if line.strip().startswith(prefix):
                return at
        return None

    def tail(self, count: int = 15) -> str:
        return "\n".join([*self.lines[-count:], *self.stdout.splitlines()[-count:]])


def _pump(stream: object, sink: list[tuple[float, str]], started: float) -> None:
    assert hasattr(stream, "readline")
    for raw in iter(stream.readline, ""):
        sink.append((time.perf_counter() - started, raw.rstrip("\n")))


def timed(
    cmd: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    merge: bool = False,
) -> Timed:
    """Run `cmd` to completion and time it as a whole; stderr (or both, `merge`) is streamed."""
    args = [str(part) for part in cmd]
    events: list[tuple[float, str]] = []
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge else subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
    )
    assert proc.stdout is not None
    if merge:
        reader = threading.Thread(target=_pump, args=(proc.stdout, events, started), daemon=True)
        reader.start()
        stdout = ""
    else:
        assert proc.stderr is not None
        reader = threading.Thread(target=_pump, args=(proc.stderr, events, started), daemon=True)
        reader.start()
    try:
        if not merge:
            stdout = proc.stdout.read()
        proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    seconds = time.perf_counter() - started
    reader.join()
    result = Timed(
        cmd=args, seconds=seconds, returncode=proc.returncode, stdout=stdout, events=events
    )
    if check and proc.returncode != 0:
        raise BenchError(
            f"`{' '.join(args[:6])}` exited {proc.returncode} after {seconds:.1f} s:\n"
            + result.tail()
        )
    return result


def output(cmd: Sequence[str | Path], *, env: Mapping[str, str] | None = None) -> str:
    """stdout of a short untimed helper command ('' when it fails)."""
    try:
        done = subprocess.run(
            [str(part) for part in cmd],
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def bench_env(**overrides: str | None) -> dict[str, str]:
    """This process's environment with pip pointed at PyPI alone, plus `overrides`.

    The machine's pip configuration adds local find-links and extra indexes; every
    measured pip (imagesmith's host-side wheel fetch, the hand-written pip download,
    pip-compile) runs without it, so all of them talk to the same index.
    """
    env = dict(os.environ)
    for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_CACHE_DIR"):
        env.pop(key, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    # imagesmith runs with its bytecode, as a pip-installed one does: a machine that sets
    # PYTHONDONTWRITEBYTECODE (these do) would make every run compile ~100 modules (0.2 s).
    # The .pyc files go to a folder of the bench's own, not into the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path.home() / ".cache" / "imagesmith-bench" / "pycache")
    env["CI"] = "true"  # imagesmith prints plain progress lines
    env["DOCKER_BUILDKIT"] = "0"  # the classic builder, the one imagesmith drives via the API
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
