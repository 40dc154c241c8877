"""Time the SBOMs and provenance for a lock, and what attaching them adds to a push.

Run with imagesmith's own Python:  .venv/bin/python bench/attest_time.py LOCK [RUNS]
Prints one JSON object (seconds, medians of RUNS): `generate` (both SBOMs and the
provenance, in-process, from the lock), `attach_first` and `attach_again` (pushing the
three documents as referrers of a small image to a docker-registry started here on
127.0.0.1, the first time and on a re-push). Compare with the cold build in README.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imagesmith.attest.inventory import inventory
from imagesmith.attest.provenance import BuildRun, dump_statement, provenance_statement
from imagesmith.attest.publish import attach_attestations
from imagesmith.attest.sbom import render_sbom
from imagesmith.model.lock import read_lock
from imagesmith.model.records import BuildRecord
from imagesmith.model.reference import parse_reference
from imagesmith.registry.client import Pusher, RegistryClient

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _registry(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root}/data\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    binary = shutil.which("docker-registry")
    if binary is None:
        raise SystemExit("needs docker-registry (apt-get install docker-registry)")
    proc = subprocess.Popen(
        [binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"127.0.0.1:{port}"


def main(argv: list[str]) -> int:
    lock = read_lock(Path(argv[0]))
    runs = int(argv[1]) if len(argv) > 1 else 5
    run = BuildRun("bench", "sha256:" + "b" * 64, "docker", "urn:imagesmith:builder:bench")
    generate = []
    for _ in range(runs):
        started = time.perf_counter()
        contents = inventory(lock)
        render_sbom(contents, "spdx")
        render_sbom(contents, "cyclonedx")
        dump_statement(provenance_statement(lock, contents, run))
        generate.append(time.perf_counter() - started)
    first, again = [], []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        proc, host = _registry(root)
        try:
            for i in range(runs):
                path = f"bench/image{i}"  # a fresh subject each time: a first push
                pusher = Pusher(RegistryClient(host), path, None)
                config = json.dumps({"os": "linux", "architecture": "amd64", "n": i}).encode()
                (root / "config").write_bytes(config)
                pusher.push_blob(_sha(config), root / "config")
                manifest = json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": MANIFEST,
                        "config": {
                            "mediaType": "application/vnd.oci.image.config.v1+json",
                            "digest": _sha(config),
                            "size": len(config),
                        },
                        "layers": [],
                    }
                ).encode()
                pusher.push_manifest(_sha(manifest), manifest, MANIFEST)
                built = BuildRecord("x", _sha(manifest), (), "docker", lock.lock_hash, 0, 0)
                ref = parse_reference(f"{host}/{path}")
                for times in (first, again):
                    started = time.perf_counter()
                    attach_attestations(lock, built, ref, builder_id="urn:imagesmith:builder:bench")
                    times.append(time.perf_counter() - started)
        finally:
            proc.terminate()
            proc.wait()
    print(
        json.dumps(
            {
                "apt_packages": len(lock.apt.packages),
                "python_distributions": len(lock.python.packages) if lock.python else 0,
                "generate": round(statistics.median(generate), 4),
                "attach_first": round(statistics.median(first), 4),
                "attach_again": round(statistics.median(again), 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
