"""A docker-registry process on 127.0.0.1 that the benchmark starts, measures and stops.

No authentication, filesystem storage in a folder of the run's work dir (its size, `du
-sb`, is what a push adds). Each process is noted in bench/.work/ while it runs, so the
next run stops what a killed run left (only a docker-registry serving that very config).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from proc import BenchError, output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalRegistry:
    root: Path
    host: str
    proc: subprocess.Popen[bytes]
    note: Path

    @property
    def storage(self) -> Path:
        return self.root / "data"

    def bytes_used(self) -> int:
        """Bytes in the registry's storage (`du -sb`; 0 before anything was pushed)."""
        if not self.storage.exists():
            return 0
        text = output(["du", "-sb", self.storage])
        if not text:
            raise BenchError(f"cannot measure {self.storage}")
        return int(text.split()[0])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.note.unlink(missing_ok=True)


def start_registry(root: Path, notes: Path) -> LocalRegistry:
    """A fresh registry (empty storage under `root`) on a free loopback port."""
    binary = shutil.which("docker-registry")
    if binary is None:
        raise BenchError("needs docker-registry (apt-get install docker-registry)")
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    return _serve(root, port, notes)


def _serve(root: Path, port: int, notes: Path) -> LocalRegistry:
    """Start docker-registry on `root`/config.yml (port `port`) and wait until it answers."""
    log = (root / "registry.log").open("a")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=log
    )
    log.close()
    notes.mkdir(parents=True, exist_ok=True)
    note = notes / f"registry-{proc.pid}.json"
    note.write_text(json.dumps({"pid": proc.pid, "config": str(root / "config.yml")}))
    registry = LocalRegistry(root=root, host=f"127.0.0.1:{port}", proc=proc, note=note)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return registry
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                registry.stop()
                raise BenchError(
                    f"docker-registry did not start: {(root / 'registry.log').read_text()[-300:]}"
                ) from None
            time.sleep(0.1)


def emptied(registry: LocalRegistry) -> LocalRegistry:
    """The same registry (same address) started again with its storage removed."""
    registry.stop()
    shutil.rmtree(registry.storage, ignore_errors=True)
    port = int(registry.host.rpartition(":")[2])
    return _serve(registry.root, port, registry.note.parent)


def stop_stale_registries(notes: Path) -> list[str]:
    """Stop the registries a killed run left (checked: that pid still serves that config)."""
    stopped = []
    for note in sorted(notes.glob("registry-*.json")):
        data = json.loads(note.read_text())
        pid, config = int(data["pid"]), str(data["config"])
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if b"serve" in cmdline and config.encode() in cmdline:
            os.kill(pid, signal.SIGTERM)
            stopped.append(f"{pid} ({config})")
        note.unlink()
    return stopped
