"""The Pod manifest, run for real with `podman kube play` (no GPU), by digest.

A tiny image (a user with uid 1000 and a marker file no other image has) is built on the
local Debian base; the Pod generated for it must run as uid 1000 with the spec's environment
byte for byte and [job.secret_env] taken from a Secret, on a read-only root filesystem with
/tmp and the workdir writable, and exit 0.

Findings (podman 4.3.1): `kube play` accepts `localhost/name@sha256:<manifest digest>` for
an image that exists only in local storage (the digest is `podman image inspect
--format {{.Digest}}`), with `imagePullPolicy: IfNotPresent`; it honours emptyDir volumes,
readOnlyRootFilesystem, runAsUser and env, and ignores the NetworkPolicy document. It refuses
annotation values longer than 63 characters (containers/podman#21663, fixed in podman 5.0),
which the image and hash annotations are: render_manifest(for_podman=True) leaves those out.
The pod's infra container uses podman's own `localhost/podman-pause` image, built on first
use and left in place (podman's, not the test's).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import tomli_w

from imagesmith.model.spec_loading import load_spec
from imagesmith.outputs.kubernetes import render_manifest

pytestmark = [pytest.mark.integration, pytest.mark.podman]

GREETING = 'it\'s "quoted" $HOME, a,b=c; `no` $(expansion) and ünïcode  '
TOKEN = "s3cr3t-" + uuid.uuid4().hex


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def test_pod_runs_with_podman_kube_play(
    marked_podman_image: tuple[str, str], tmp_path: Path
) -> None:
    image, marker = marked_podman_image
    name = f"imagesmith-play-{uuid.uuid4().hex[:8]}"
    secret = f"{name}-token"
    script = (
        'id -u; id -g; printf \'%s|\\n\' "$GREETING" "$API_TOKEN"; cat /etc/imagesmith-marker; pwd; '
        "touch /tmp/t /work/w && echo writable; "
        "if touch /etc/nope 2>/dev/null; then echo root-rw; else echo root-ro; fi"
    )
    spec_path = tmp_path / "env.toml"
    spec_path.write_text(
        tomli_w.dumps(
            {
                "name": name,
                "version": "0.0.1",
                "base": {"image": "debian:bookworm"},
                "env": {"GREETING": GREETING, "OMP_NUM_THREADS": "1"},
                "image": {"workdir": "/work", "user": "lab"},
                "resources": {"cpu": "1", "memory": "256Mi"},
                "job": {
                    "kind": "pod",
                    "command": ["sh", "-c", script],
                    "time": "5",
                    "secret_env": {"API_TOKEN": {"secret": secret, "key": "token"}},
                },
            }
        )
    )
    spec = load_spec(spec_path)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(
        render_manifest(
            spec,
            image=image,
            uid=1000,
            gid=1000,
            lock_hash="sha256:" + "0" * 64,
            for_podman=True,  # podman < 5 refuses annotation values over 63 characters
        )
    )
    container = f"{name}-{name}"
    version = podman("version", "--format", "{{.Client.Version}}").stdout.strip()
    if int(version.split(".")[0]) < 5:
        # Why for_podman exists: the same manifest with its full annotations is refused.
        full = tmp_path / "pod-full.yaml"
        full.write_text(render_manifest(spec, image=image, uid=1000, gid=1000))
        refused = podman("kube", "play", str(full), check=False)
        assert refused.returncode != 0
        assert "value length exceeds" in refused.stderr, refused.stderr
        assert podman("pod", "exists", name, check=False).returncode != 0
    # [job.secret_env]: the token comes from a Secret. podman 4.3's kube play looks the
    # Secret up as a podman secret holding its data as JSON, key -> base64 value (found by
    # trying: a whole Secret object, in YAML or JSON, is refused).
    secret_json = tmp_path / "secret.json"
    secret_json.write_text(json.dumps({"token": base64.b64encode(TOKEN.encode()).decode()}))
    podman("secret", "create", secret, str(secret_json))
    started = time.monotonic()
    try:
        played = podman("kube", "play", str(manifest), check=False)
        assert played.returncode == 0, played.stderr
        waited = podman("wait", container, timeout=120)
        logs = subprocess.run(
            ["podman", "logs", container], capture_output=True, timeout=60, check=True
        )
        inspect = podman(
            "container", "inspect", "--format", "{{.Config.User}} {{.State.ExitCode}}", container
        ).stdout.split()
    finally:
        podman("kube", "down", str(manifest), check=False)
        podman("pod", "rm", "--force", "--ignore", name, check=False)
        podman("secret", "rm", secret, check=False)
    print(f"kube play -> exit: {time.monotonic() - started:.1f}s")
    assert waited.stdout.strip() == "0"
    assert inspect == ["1000:1000", "0"]
    expected = f"1000\n1000\n{GREETING}|\n{TOKEN}|\n{marker}\n/work\nwritable\nroot-ro\n"
    assert logs.stdout == expected.encode("utf-8")
    assert podman("pod", "exists", name, check=False).returncode != 0  # cleaned up


def test_indexed_job_pods_see_their_slurm_index(
    marked_podman_image: tuple[str, str], tmp_path: Path
) -> None:
    """The Indexed Job for [job] array = "1-7:2%2", played pod by pod: each pod gets the
    `batch.kubernetes.io/job-completion-index` annotation the Job controller gives it (0-3),
    and its command sees SLURM_ARRAY_TASK_ID 1, 3, 5, 7, on a read-only root filesystem, and
    writes it into a [job] mounts folder (a hostPath here) that appears on the host."""
    import yaml

    image, marker = marked_podman_image
    name = f"imagesmith-idx-{uuid.uuid4().hex[:8]}"
    report = (
        'echo "$SLURM_ARRAY_TASK_ID $SLURM_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN '
        '$SLURM_ARRAY_TASK_MAX $(cat /etc/imagesmith-marker)"; '
        'echo "$SLURM_ARRAY_TASK_ID" > "/shared/id-$SLURM_ARRAY_TASK_ID"'
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the pod runs as uid 1000
    spec_path = tmp_path / "env.toml"
    spec_path.write_text(
        tomli_w.dumps(
            {
                "name": name,
                "version": "0.0.1",
                "base": {"image": "debian:bookworm"},
                "image": {"workdir": "/work", "user": "lab"},
                "job": {
                    "command": ["sh", "-c", report],
                    "array": "1-7:2%2",
                    "mounts": [{"source": str(shared), "target": "/shared", "host_path": True}],
                },
            }
        )
    )
    text = render_manifest(load_spec(spec_path), image=image, uid=1000, gid=1000, for_podman=True)
    job = next(yaml.safe_load_all(text))
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (4, 2)
    template = job["spec"]["template"]
    seen = []
    for index in range(job["spec"]["completions"]):
        pod_name = f"{name}-{index}"
        annotations = dict(template["metadata"].get("annotations", {}))
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "labels": template["metadata"]["labels"],
                "annotations": annotations,
            },
            "spec": template["spec"],
        }
        manifest = tmp_path / f"pod-{index}.yaml"
        manifest.write_text(yaml.safe_dump(pod))
        container = f"{pod_name}-{template['spec']['containers'][0]['name']}"
        try:
            played = podman("kube", "play", str(manifest), check=False)
            assert played.returncode == 0, played.stderr
            assert podman("wait", container, timeout=120).stdout.strip() == "0"
            seen.append(podman("logs", container).stdout)
        finally:
            podman("kube", "down", str(manifest), check=False)
            podman("pod", "rm", "--force", "--ignore", pod_name, check=False)
    assert seen == [f"{i} 4 1 7 {marker}\n" for i in (1, 3, 5, 7)]
    written = {p.name: p.read_text() for p in sorted(shared.iterdir())}
    assert written == {f"id-{i}": f"{i}\n" for i in (1, 3, 5, 7)}
