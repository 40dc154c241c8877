"""The Kubernetes Job/Pod and the Slurm batch script that run a built image, by digest.

Pure functions: a Spec and an image reference in, text out; no engine, no network. The same
input always gives the same bytes (keys in a fixed order, one YAML document per object).

Choices, each made for a batch job on a cluster that enforces the *restricted* Pod Security
Standard (and checked with kubernetes-validate and checkov in the tests):

- The image is always `repository@sha256:...`: a tag can move, a digest cannot. With a digest,
  `imagePullPolicy: IfNotPresent` is safe (the cached image is the one named).
- requests equal limits for cpu, memory and the GPU resource (Guaranteed QoS); what the spec
  leaves out is left out.
- The pod runs as the image's non-root uid/gid with RuntimeDefault seccomp, no privilege
  escalation, every capability dropped, no service-account token, and a **read-only root
  filesystem**. Programs still need somewhere to write, so /tmp is an emptyDir, and so is the
  working directory, unless the image copies files into it (an emptyDir would hide them;
  the header then says so and /tmp is the place to write). Nothing else is writable: a tool
  that insists on writing under $HOME needs [env] pointing it at /tmp (e.g. XDG_CACHE_HOME).
- With a GPU (or an explicit [resources] shm), /dev/shm is a memory-backed emptyDir
  (default 1Gi): PyTorch data loaders and NCCL need more than the runtime's 64 MiB. It
  counts against the memory limit.
- A NetworkPolicy that admits no ingress to the job's pods comes with it (a batch job serves
  nothing). Egress is left open: jobs fetch data. `podman kube play` ignores it.
- No probes: a batch job that runs to completion has no readiness, and a liveness probe
  would kill long computations that print nothing.
- [job] array: an Indexed Job. The pod's command is wrapped in a short POSIX sh lookup
  (ARRAY_LOOKUP) that turns JOB_COMPLETION_INDEX (0, 1, ...) into the Slurm index
  (SLURM_ARRAY_TASK_ID), then execs the command: nothing written, no tool on the node.
- [job] queue: the Kueue queue label, and a Job created suspended for Kueue to admit.
- [resources] gpu_model: a nodeSelector only through gpu_map (a Slurm model name is not a
  node label value); otherwise an annotation and a warning.
- [job] mounts: PersistentVolumeClaim, hostPath (with a warning: Pod Security) or emptyDir
  volumes; on Slurm, the same folders as binds for every runtime.

With `overrides` (a parsed #SBATCH script), its values replace [resources] and [job], and the
header says which value came from which directive, and lists every directive that was not
carried over.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import yaml

from imagesmith.errors import InputError
from imagesmith.model.labels import KUBERNETES_PREFIX
from imagesmith.model.quantity import quantity_value
from imagesmith.model.reference import parse_reference
from imagesmith.model.slurmtime import JobArray, format_slurm_time, parse_slurm_time
from imagesmith.model.spec import Mount, Spec
from imagesmith.outputs.sbatch import (
    ARRAY_VARIABLES,
    SlurmRequest,
    apply_overrides,
    memory_megabytes,
)

DEFAULT_SHM = "1Gi"
LABEL_PREFIX = KUBERNETES_PREFIX
KINDS = ("job", "pod")
RUNTIMES = ("podman", "apptainer", "singularity", "pyxis")

_LABEL_VALUE_MAX = 63
_DNS_LABEL_MAX = 63
#: The variables Slurm sets to the GPUs it allocated; the container must see them.
_GPU_VISIBILITY = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")
#: The node label GPU feature discovery sets to the GPU's product name.
DEFAULT_GPU_LABEL = "nvidia.com/gpu.product"
#: The label Kueue reads to queue a workload (a LocalQueue in the workload's namespace).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
#: The annotation the Job controller puts on each pod of an Indexed Job.
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
#: The runs of an array's indices, FIRST:STEP:COUNT words (JobArray.runs_text).
ARRAY_RUNS = "IMAGESMITH_ARRAY_RUNS"
#: An env value over 128 KiB cannot pass execve (MAX_ARG_STRLEN); stay well below it.
_ARRAY_RUNS_MAX = 100_000
#: The Slurm index of this pod, from its completion index: the k-th index of the array.
#: POSIX sh (dash, busybox), no writes, no tools, then exec: the command keeps PID 1.
ARRAY_LOOKUP = """\
i=${JOB_COMPLETION_INDEX:?is not set: run this pod as part of its Indexed Job}
for run in $IMAGESMITH_ARRAY_RUNS; do
  first=${run%%:*}; rest=${run#*:}; step=${rest%%:*}; count=${rest#*:}
  if [ "$i" -lt "$count" ]; then
    SLURM_ARRAY_TASK_ID=$((first + step * i))
    export SLURM_ARRAY_TASK_ID
    exec "$@"
  fi
  i=$((i - count))
done
echo "completion index $JOB_COMPLETION_INDEX is outside the array ($IMAGESMITH_ARRAY_RUNS)" >&2
exit 2
"""
#: Settings an #SBATCH script can override, in the order the header lists them.
_ORIGIN_ORDER = (
    "name",
    "resources.cpu",
    "resources.memory",
    "resources.gpu",
    "job.time",
    "job.command",
    "job.array",
    "job.queue",
    "partition",
    "gpu_type",
)


# -- names and values Kubernetes accepts ---------------------------------------------------


def dns_label(text: str, *, fallback: str = "job") -> str:
    """`text` as a DNS-1123 label (lowercase alphanumerics and '-', at most 63)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")[:_DNS_LABEL_MAX].strip("-")
    return name or fallback


def label_value(text: str) -> str:
    """`text` as a label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:_LABEL_VALUE_MAX]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def label_key_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes label key ([prefix/]name), or None when it is one."""
    prefix, slash, name = key.rpartition("/")
    if slash and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", prefix):
        return "the prefix is not a DNS subdomain (e.g. nvidia.com)"
    if not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", name):
        return "not a label key ([prefix/]name; name: letters, digits, '-', '_', '.', at most 63)"
    return None


def digest_reference(image: str) -> str:
    """`image` when it is `repository@sha256:<64 hex>`; InputError otherwise."""
    hint = (
        "pass the image by digest, repository@sha256:<64 hex digits> "
        "(imagesmith build/push record it in env.build.json / env.pushed.json)"
    )
    try:
        ref = parse_reference(image)
    except ValueError:
        raise InputError(f"{image!r} is not an image reference; {hint}") from None
    if ref.digest is None:
        raise InputError(f"{image!r} names a tag, which can move; {hint}")
    if ref.tag is not None:
        raise InputError(f"{image!r} carries a tag beside its digest; {hint}")
    return image


def _one_line(text: str) -> str:
    """Text safe inside a one-line comment: control characters escaped."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group(0)):02x}", text)


def _inside(path: str, parent: str) -> bool:
    p, q = PurePosixPath(path), PurePosixPath(parent)
    return p == q or q in p.parents


def _writable_workdir(spec: Spec, workdir: str) -> str | None:
    """Why the working directory cannot be an emptyDir, or None when it can."""
    if not workdir.startswith("/"):
        return f"workdir {workdir} is not an absolute path"
    if workdir == "/":
        return "workdir / would hide the whole image"
    if _inside(workdir, "/tmp"):
        return None
    for item in spec.image.copy:
        dest = item.dest
        if not dest.startswith("/"):
            dest = str(PurePosixPath(spec.image.workdir or "/") / dest)
        if _inside(dest, workdir) or _inside(workdir, dest):
            return f"the image copies {item.src} to {item.dest}, which an emptyDir would hide"
    return None


# -- the manifest --------------------------------------------------------------------------


def _resources(spec: Spec) -> dict[str, Any] | None:
    amounts: dict[str, Any] = {}
    if spec.resources.cpu is not None:
        amounts["cpu"] = spec.resources.cpu
    if spec.resources.memory is not None:
        amounts["memory"] = spec.resources.memory
    if spec.resources.gpu > 0:
        amounts[spec.resources.gpu_resource] = spec.resources.gpu
    if not amounts:
        return None
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _needs_shm(spec: Spec) -> bool:
    return spec.resources.gpu > 0 or spec.resources.shm is not None


def _container(
    spec: Spec, *, name: str, image: str, workdir: str | None, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
    }
    array = spec.job.array
    if array is not None:
        # The lookup runs first and execs the whole command line (entrypoint included).
        container["command"] = ["/bin/sh", "-c", ARRAY_LOOKUP, "imagesmith-array", *_argv(spec)]
    elif spec.job.command is not None:
        # With an ENTRYPOINT (e.g. tini), the command goes after it, as `podman run IMAGE CMD`
        # does; without one, it is the whole command line.
        key = "args" if spec.image.entrypoint else "command"
        container[key] = list(spec.job.command)
    env: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in spec.env.items()}
    for k, ref in spec.job.secret_env.items():
        env[k] = {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
    if array is not None:
        env |= _array_env(array)
    if env:
        container["env"] = [env[k] for k in sorted(env)]
    if workdir is not None:
        container["workingDir"] = workdir
    if spec.image.ports:
        container["ports"] = [
            {"containerPort": port, "protocol": "TCP"} for port in sorted(spec.image.ports)
        ]
    resources = _resources(spec)
    if resources is not None:
        container["resources"] = resources
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    container["volumeMounts"] = mounts
    return container


def _argv(spec: Spec) -> list[str]:
    """The whole command line the container runs: entrypoint, then command or cmd."""
    command = spec.job.command if spec.job.command is not None else spec.image.cmd
    if command is None and not spec.image.entrypoint:
        raise InputError(
            "an array job needs its command spelled out: set [job] command (or [image] cmd), "
            "which the pod runs after looking up SLURM_ARRAY_TASK_ID"
        )
    return [*(spec.image.entrypoint or ()), *(command or ())]


def _array_env(array: JobArray) -> dict[str, dict[str, Any]]:
    runs = array.runs_text
    if len(runs) > _ARRAY_RUNS_MAX:
        raise InputError(
            f"array {array.text}: its indices take {len(runs):,} characters to list, over "
            f"{_ARRAY_RUNS_MAX:,}; use ranges (1-99:2) or several arrays"
        )
    values = {
        ARRAY_RUNS: runs,
        "SLURM_ARRAY_TASK_COUNT": str(array.count),
        "SLURM_ARRAY_TASK_MAX": str(array.last),
        "SLURM_ARRAY_TASK_MIN": str(array.first),
    }
    env: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in values.items()}
    # Kubernetes sets JOB_COMPLETION_INDEX itself since 1.22; from the annotation, the pod
    # says where it comes from (and older clusters and `podman kube play` get it too).
    env["JOB_COMPLETION_INDEX"] = {
        "name": "JOB_COMPLETION_INDEX",
        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
    }
    return env


def _volume(mount: Mount) -> dict[str, Any]:
    if mount.claim is not None:
        claim: dict[str, Any] = {"claimName": mount.claim}
        if mount.read_only:
            claim["readOnly"] = True
        return {"persistentVolumeClaim": claim}
    if mount.host_path:
        return {"hostPath": {"path": mount.source, "type": "Directory"}}
    return {"emptyDir": {}}


def _mount_note(mount: Mount) -> str:
    mode = "read-only" if mount.read_only else "read-write"
    where = f"mount {mount.target} ({mode}): "
    if mount.claim is not None:
        return where + f"PersistentVolumeClaim {mount.claim} (on Slurm: {mount.source})"
    if mount.host_path:
        return where + (
            f"hostPath {mount.source}, which the restricted and baseline Pod Security "
            "Standards refuse: the namespace must allow privileged pods"
        )
    what = "the submit folder" if mount.in_submit_folder else mount.source
    return where + (
        f"an empty emptyDir stands in for {what}, which has no counterpart here "
        "(set claim = NAME for a PersistentVolumeClaim)"
    )


def _pod_spec(
    spec: Spec,
    *,
    name: str,
    image: str,
    uid: int,
    gid: int,
    workdir: str | None,
    deadline: int | None,
    notes: list[str],
    gpu_label: str,
) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    writable = ["/tmp"]
    if workdir is not None:
        why_not = _writable_workdir(spec, workdir)
        if why_not is not None:
            notes.append(f"{workdir} is read-only: {why_not}; write to /tmp")
        elif workdir in {m.target for m in spec.job.mounts}:
            pass  # a [job] mount is the working directory
        elif not _inside(workdir, "/tmp"):
            mounts.append({"name": "workdir", "mountPath": workdir})
            volumes.append({"name": "workdir", "emptyDir": {}})
            writable.append(workdir)
    if _needs_shm(spec):
        size = spec.resources.shm or DEFAULT_SHM
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}})
        writable.append(f"/dev/shm ({size}, counted as memory)")
    for index, mount in enumerate(spec.job.mounts):
        volume_name = f"mount-{index}"
        volume_mount: dict[str, Any] = {"name": volume_name, "mountPath": mount.target}
        if mount.read_only:
            volume_mount["readOnly"] = True
        else:
            writable.append(mount.target)
        mounts.append(volume_mount)
        volumes.append({"name": volume_name, **_volume(mount)})
        if mount.claim is not None:  # the others are warnings (manifest_warnings)
            notes.append(_mount_note(mount))
    notes.insert(0, f"read-only root filesystem; writable: {', '.join(writable)}")
    pod: dict[str, Any] = {"restartPolicy": "Never"}
    if deadline is not None:
        pod["activeDeadlineSeconds"] = deadline
    pod["automountServiceAccountToken"] = False
    gpu_node = _gpu_node_label(spec)
    if gpu_node is not None:
        pod["nodeSelector"] = {gpu_label: gpu_node}
    pod["securityContext"] = {
        "fsGroup": gid,
        "runAsGroup": gid,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["containers"] = [_container(spec, name=name, image=image, workdir=workdir, mounts=mounts)]
    pod["volumes"] = volumes
    return pod


def _metadata(
    name: str, namespace: str | None, labels: Mapping[str, str], annotations: Mapping[str, str]
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def _gpu_node_label(spec: Spec) -> str | None:
    """The node label value the spec's GPU model maps to, if it names one that does."""
    model = spec.resources.gpu_model
    if model is None or spec.resources.gpu == 0:
        return None
    return spec.resources.gpu_map.get(model)


def _gpu_shown(spec: Spec, gpu_label: str) -> str:
    value = _gpu_node_label(spec)
    if value is not None:
        return f"{spec.resources.gpu_model} (nodeSelector {gpu_label}={value})"
    return f"{spec.resources.gpu_model} (annotation {LABEL_PREFIX}/gpu-type only)"


def manifest_warnings(
    spec: Spec,
    *,
    overrides: SlurmRequest | None = None,
    gpu_label: str = DEFAULT_GPU_LABEL,
    spec_gpu: bool = False,
) -> list[str]:
    """What the manifest for `spec` (with `overrides`) cannot carry out as asked, one line
    each; render_manifest writes them into its header too."""
    if overrides is not None:
        spec = apply_overrides(spec, overrides, spec_gpu=spec_gpu)
    warnings: list[str] = [
        _mount_note(m) for m in spec.job.mounts if m.host_path or m.claim is None
    ]
    model = spec.resources.gpu_model
    if model is not None and spec.resources.gpu > 0 and _gpu_node_label(spec) is None:
        where = ""
        if overrides is not None and "gpu_type" in overrides.origins:
            where = f"{overrides.origins['gpu_type']}: "
        warnings.append(
            f"{where}GPU model {model!r} has no {gpu_label} value to select nodes by; kept "
            f"as the annotation {LABEL_PREFIX}/gpu-type only, so any GPU node may run it "
            f"(map it with --gpu-map {model}=VALUE or [resources.gpu_map])"
        )
    return warnings


def _spec_lines(original: Spec, spec: Spec, request: SlurmRequest, spec_gpu: bool) -> list[str]:
    """The values the script does not set, each with where it comes from instead."""
    kept: list[str] = []
    res, job = spec.resources, spec.job
    if "resources.cpu" not in request.origins and res.cpu is not None:
        kept.append(f"resources.cpu: {res.cpu}")
    if "resources.memory" not in request.origins and res.memory is not None:
        kept.append(f"resources.memory: {res.memory}")
    if "resources.gpu" not in request.origins and original.resources.gpu > 0:
        if spec_gpu:
            kept.append(f"resources.gpu: {res.gpu} ({res.gpu_resource})")
        else:
            kept.append(
                f"resources.gpu: 0: the script asks for none, so the spec's "
                f"{original.resources.gpu} is not inherited (--spec-gpu keeps it)"
            )
    if res.shm is not None:
        kept.append(f"resources.shm: {res.shm}")
    if "job.time" not in request.origins and job.time is not None:
        kept.append(f"job.time: {job.time}")
    if "job.command" not in request.origins and job.command is not None:
        kept.append(f"job.command: {shlex.join(job.command)}")
    if "job.array" not in request.origins and job.array is not None:
        kept.append(f"job.array: {job.array.text}")
    if "job.queue" not in request.origins and job.queue is not None:
        kept.append(f"job.queue: {job.queue}")
    if not kept:
        return []
    return [f"values from {original.path.name} (the script does not set them):", *kept]


def _override_lines(
    original: Spec,
    spec: Spec,
    name: str,
    request: SlurmRequest,
    *,
    gpu_label: str,
    warnings: list[str],
    spec_gpu: bool,
) -> list[str]:
    shown: dict[str, str] = {
        "name": name,
        "resources.cpu": str(spec.resources.cpu),
        "resources.memory": str(spec.resources.memory),
        "resources.gpu": f"{spec.resources.gpu} ({spec.resources.gpu_resource})",
        "partition": f"{request.partition} (annotation {LABEL_PREFIX}/slurm-partition only)",
        "job.queue": f"{request.queue} (label {QUEUE_LABEL}, from partition {request.partition})",
        "gpu_type": _gpu_shown(spec, gpu_label),
    }
    if request.time_seconds is not None:
        shown["job.time"] = (
            f"{format_slurm_time(request.time_seconds)} "
            f"(activeDeadlineSeconds {request.time_seconds})"
        )
    if request.array is not None:
        shown["job.array"] = f"{request.array.text} (an Indexed Job of {request.array.count} pods)"
    if request.command is not None:
        shown["job.command"] = shlex.join(
            [*request.command[:-1], f"<script body, {len(request.body.splitlines())} lines>"]
        )
    lines = [f"values from {request.source} (#SBATCH directives) replace the spec's:"]
    for key in _ORIGIN_ORDER:
        if key == "partition" and request.queue is not None:
            continue
        if key in request.origins and key in shown:
            lines.append(f"{key}: {shown[key]} (from {request.origins[key]})")
    lines += _spec_lines(original, spec, request, spec_gpu)
    if request.warnings or warnings:
        lines.append(f"not carried over from {request.source}:")
        lines.extend(f"warning: {w}" for w in [*request.warnings, *warnings])
    return lines


def _job_spec(array: JobArray | None, backoff_limit: int, *, notes: list[str]) -> dict[str, Any]:
    """The Job's completion settings: one pod, or an Indexed Job with one pod per index."""
    if array is None:
        return {"backoffLimit": backoff_limit}
    parallelism = min(array.limit or array.count, array.count)
    notes.append(
        f"array {array.text}: an Indexed Job of {array.count} pods, {parallelism} at a time, "
        f"{backoff_limit} retries each; each pod's SLURM_ARRAY_TASK_ID is its Slurm index "
        f"(looked up by /bin/sh in the image from JOB_COMPLETION_INDEX and {ARRAY_RUNS}), "
        f"with SLURM_ARRAY_TASK_COUNT {array.count}, _MIN {array.first}, _MAX {array.last}"
    )
    # Retries count per index (an index that fails does not stop the others, as on Slurm);
    # with backoffLimitPerIndex, backoffLimit is left to its default.
    return {
        "backoffLimitPerIndex": backoff_limit,
        "completionMode": "Indexed",
        "completions": array.count,
        "parallelism": parallelism,
    }


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (a script body) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(documents: Sequence[Mapping[str, Any]]) -> str:
    return yaml.dump_all(
        documents,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        explicit_start=True,
        width=100_000,
    )


def render_manifest(
    spec: Spec,
    *,
    image: str,
    uid: int,
    gid: int,
    kind: str | None = None,
    overrides: SlurmRequest | None = None,
    workdir: str | None = None,
    lock_hash: str | None = None,
    for_podman: bool = False,
    gpu_label: str = DEFAULT_GPU_LABEL,
    spec_gpu: bool = False,
) -> str:
    """The Job (or Pod) that runs `image` (by digest) as the spec says, and its NetworkPolicy.

    `uid`/`gid` are the image's user (from the build record); `kind` overrides [job] kind;
    `overrides` (from parse_sbatch) replace [resources] and [job] values (a script that asks
    for no GPU gets none unless `spec_gpu`), and the header says where each value came from;
    `workdir` overrides
    [image] workdir; `lock_hash` (the lock the image was built from) becomes a label and an
    annotation. `gpu_label` is the node label a mapped GPU model selects on ([resources]
    gpu_model and gpu_map). `for_podman` leaves out annotations whose values are longer than
    63 characters (the image, the hashes), which `podman kube play` before podman 5.0
    refuses (containers/podman#21663; Debian 12 has 4.3); the header keeps their values.
    """
    image = digest_reference(image)
    if uid == 0:
        raise InputError(
            "the image's user is root (uid 0); the pod runs as non-root, so build the image "
            "with a non-root [image] user"
        )
    warnings = manifest_warnings(spec, overrides=overrides, gpu_label=gpu_label, spec_gpu=spec_gpu)
    original = spec
    if overrides is not None:
        spec = apply_overrides(spec, overrides, spec_gpu=spec_gpu)
    kind_name = (kind or spec.job.kind).lower()
    if kind_name not in KINDS:
        raise InputError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind_name == "pod" and spec.job.array is not None:
        raise InputError(
            f"array {spec.job.array.text} needs kind job (an Indexed Job, one pod per index), "
            "not pod"
        )
    job_name = overrides.job_name if overrides is not None else None
    name = dns_label(job_name or spec.name)
    namespace = spec.job.namespace
    deadline = parse_slurm_time(spec.job.time) if spec.job.time is not None else None
    workdir = workdir if workdir is not None else spec.image.workdir

    labels: dict[str, str] = {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "imagesmith",
        "app.kubernetes.io/name": label_value(spec.name) or name,
    }
    version = label_value(spec.version)
    if version:
        labels["app.kubernetes.io/version"] = version
    annotations: dict[str, str] = {f"{LABEL_PREFIX}/image": image}
    if lock_hash is not None:
        short = label_value(lock_hash.rpartition(":")[2])
        if short:
            labels[f"{LABEL_PREFIX}/lock-hash"] = short
        annotations[f"{LABEL_PREFIX}/lock-hash"] = lock_hash
    annotations[f"{LABEL_PREFIX}/spec-hash"] = spec.spec_hash
    if version != spec.version:
        annotations[f"{LABEL_PREFIX}/version"] = spec.version
    if overrides is not None:
        annotations[f"{LABEL_PREFIX}/sbatch"] = overrides.source
        if overrides.partition is not None:
            annotations[f"{LABEL_PREFIX}/slurm-partition"] = overrides.partition
    if spec.resources.gpu_model is not None and spec.resources.gpu > 0:
        annotations[f"{LABEL_PREFIX}/gpu-type"] = spec.resources.gpu_model
    labels = dict(sorted(labels.items()))
    annotations = dict(sorted(annotations.items()))
    left_out: dict[str, str] = {}
    if for_podman:
        left_out = {k: v for k, v in annotations.items() if len(v) > _LABEL_VALUE_MAX}
        annotations = {k: v for k, v in annotations.items() if k not in left_out}

    workload_labels = dict(labels)
    if spec.job.queue is not None:
        workload_labels = dict(sorted({**labels, QUEUE_LABEL: spec.job.queue}.items()))
    notes: list[str] = []
    pod_spec = _pod_spec(
        spec,
        name=dns_label(spec.name),
        image=image,
        uid=uid,
        gid=gid,
        workdir=workdir,
        deadline=deadline if kind_name == "pod" else None,
        notes=notes,
        gpu_label=gpu_label,
    )
    header_notes: list[str] = []
    if spec.job.queue is not None:
        waits = "created suspended; Kueue starts it" if kind_name == "job" else "Kueue gates it"
        clock = (
            "; activeDeadlineSeconds counts from the start, not from creation"
            if deadline is not None and kind_name == "job"
            else ""
        )
        header_notes.append(
            f"queue {spec.job.queue}: label {QUEUE_LABEL} (a Kueue LocalQueue in the job's "
            f"namespace); {waits} when admitted{clock}"
        )
    workload: dict[str, Any]
    if kind_name == "pod":
        workload = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": _metadata(name, namespace, workload_labels, annotations),
            "spec": pod_spec,
        }
    else:
        job_spec = _job_spec(spec.job.array, spec.job.backoff_limit, notes=header_notes)
        if deadline is not None:
            job_spec["activeDeadlineSeconds"] = deadline
        if spec.job.queue is not None:
            # Kueue admits a suspended Job and unsuspends it; created running, it would start
            # before Kueue saw it.
            job_spec["suspend"] = True
        job_spec["ttlSecondsAfterFinished"] = spec.job.ttl_seconds_after_finished
        template_meta: dict[str, Any] = {"labels": dict(labels)}
        if annotations:
            template_meta["annotations"] = dict(annotations)
        job_spec["template"] = {"metadata": template_meta, "spec": pod_spec}
        workload = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": _metadata(name, namespace, workload_labels, annotations),
            "spec": job_spec,
        }
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, namespace, labels, {}),
        "spec": {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/instance": name,
                    "app.kubernetes.io/managed-by": "imagesmith",
                }
            },
            "policyTypes": ["Ingress"],
        },
    }

    header = [
        f"Generated by imagesmith from {spec.path.name} ({spec.name} {spec.version}): "
        "do not edit by hand.",
        f"{workload['kind']} {name}: runs {image} as uid {uid}, gid {gid}.",
        *notes,
        *header_notes,
        *(f"warning: {w}" for w in warnings if overrides is None),
        "The NetworkPolicy admits no ingress to the job's pods.",
    ]
    if left_out:
        header.append(
            "for podman kube play (before podman 5.0 it refuses annotation values over 63 "
            "characters), these annotations are left out:"
        )
        header.extend(f"{key}: {value}" for key, value in left_out.items())
    if overrides is not None:
        header.extend(
            _override_lines(
                original,
                spec,
                name,
                overrides,
                gpu_label=gpu_label,
                warnings=warnings,
                spec_gpu=spec_gpu,
            )
        )
    comments = "".join(f"# {_one_line(line)}\n" for line in header)
    return comments + _dump([workload, policy])


# -- the Slurm batch script -------------------------------------------------------------------


def _cpus(quantity: str) -> int:
    return math.ceil(quantity_value(quantity))


def _shm_bytes(spec: Spec) -> int:
    return math.ceil(quantity_value(spec.resources.shm or DEFAULT_SHM))


def sbatch_directives(spec: Spec) -> list[str]:
    """The #SBATCH lines for the spec's resources and time limit."""
    lines = [f"--job-name={spec.name}", "--nodes=1", "--ntasks=1"]
    if spec.resources.cpu is not None and _cpus(spec.resources.cpu) > 0:
        lines.append(f"--cpus-per-task={_cpus(spec.resources.cpu)}")
    if spec.resources.memory is not None and memory_megabytes(spec.resources.memory) > 0:
        # Never --mem=0: Slurm reads it as "all of the node's memory".
        lines.append(f"--mem={memory_megabytes(spec.resources.memory)}M")
    if spec.resources.gpu > 0:
        model = spec.resources.gpu_model
        lines.append(
            f"--gpus={model}:{spec.resources.gpu}" if model else f"--gpus={spec.resources.gpu}"
        )
    if spec.job.time is not None:
        lines.append(f"--time={format_slurm_time(parse_slurm_time(spec.job.time))}")
    if spec.job.array is not None:
        lines.append(f"--array={spec.job.array.text}")
    if spec.job.queue is not None:
        lines.append(f"--partition={spec.job.queue}")
    if spec.job.account is not None:
        lines.append(f"--account={spec.job.account}")
    if spec.job.qos is not None:
        lines.append(f"--qos={spec.job.qos}")
    return [f"#SBATCH {shlex.quote(line)}" for line in lines]


def _slurm_passed(spec: Spec) -> tuple[str, ...]:
    """Variables Slurm sets for the job that the container must see as they are."""
    return ARRAY_VARIABLES if spec.job.array is not None else ()


_BIND_SOURCE = re.compile(
    r"^(?:\.|\./|/|\$HOME/?|\$\{HOME\}/?)(?:(?:[A-Za-z0-9._-]+|\$USER|\$\{USER\})/?)*$"
)
_BIND_TARGET = re.compile(r"^/[A-Za-z0-9._/-]+$")


def _bind(mount: Mount, suffix: str = ":ro") -> str:
    """`SOURCE:TARGET[:ro]` as text for inside double quotes: the submit folder is
    $SLURM_SUBMIT_DIR, and $USER/$HOME expand on the node. Re-checked here: nothing else in
    it may reach the shell."""
    if not _BIND_SOURCE.match(mount.source) or not _BIND_TARGET.match(mount.target):
        raise InputError(f"mount {mount.source} -> {mount.target}: not a path imagesmith binds")
    return f"{_host_path(mount)}:{mount.target}{suffix if mount.read_only else ''}"


def _host_path(mount: Mount) -> str:
    if mount.in_submit_folder:
        return "$SLURM_SUBMIT_DIR" + mount.source[1:]
    return mount.source


def _mkdir_lines(spec: Spec) -> list[str]:
    """Shell: create the folders a job writes to (a bind of a missing folder fails)."""
    folders = [_host_path(m) for m in spec.job.mounts if not m.read_only]
    return [f'mkdir -p "{folder}"' for folder in folders]


def _podman_lines(spec: Spec, image: str) -> list[str]:
    words = ["podman", "run", "--rm"]
    for key in sorted(spec.env):
        words += ["--env", f"{key}={spec.env[key]}"]
    for key in sorted(spec.job.secret_env):
        words += ["--env", key]  # podman passes the submitting environment's value, if set
    if spec.resources.gpu > 0:
        # CDI names the device (nvidia-ctk cdi generate); Slurm's choice of GPUs is passed on.
        words += ["--device", f"{spec.resources.gpu_resource}=all"]
        for name in _GPU_VISIBILITY:
            words += ["--env", name]
    for name in _slurm_passed(spec):
        words += ["--env", name]
    if _needs_shm(spec):
        words += [f"--shm-size={_shm_bytes(spec)}"]
    binds = [f'--volume "{_bind(m)}"' for m in spec.job.mounts]
    tail = shlex.join([image, *(spec.job.command or ())])
    return [*_mkdir_lines(spec), "exec " + " ".join([shlex.join(words), *binds, tail])]


def _export(name: str, value: str) -> list[str]:
    """Shell: export `name` with `value`, literally."""
    line = "export " + shlex.quote(f"{name}={value}")
    if "$" in value or "`" in value:
        # The value is meant literally; shellcheck would suspect a forgotten expansion.
        return ["# shellcheck disable=SC2016", line]
    return [line]


def _pass_through(target: str, name: str) -> str:
    """Shell: export `target` with the value of `name`, when `name` is set."""
    return f'if [ -n "${{{name}+set}}" ]; then export {target}="${name}"; fi'


#: Where apptainer keeps the SIF files without --sif-dir (expanded by the job's shell).
DEFAULT_SIF_DIR = "$HOME/.cache/imagesmith/sif"


def _sif_lines(tool: str, image: str, sif_dir: str | None) -> list[str]:
    """Shell: pull `image` into a SIF named by its digest, once, whatever runs at once.

    An array's tasks start together; `flock` lets one pull while the others wait, and the
    pull lands under a temporary name first, so a task never runs a half-written file.
    """
    digest = image.rpartition("@sha256:")[2]
    folder = shlex.quote(sif_dir) if sif_dir is not None else f'"{DEFAULT_SIF_DIR}"'
    pull = f'{tool} pull --disable-cache "$sif.part.$$" {shlex.quote(f"docker://{image}")}'
    return [
        f"sif_dir={folder}",
        f'sif="$sif_dir/sha256-{digest}.sif"',
        'mkdir -p "$sif_dir"',
        'if [ ! -s "$sif" ]; then',
        "  (",
        "    flock 9",
        '    if [ ! -s "$sif" ]; then',
        f'      {pull} || {{ rm -f "$sif.part.$$"; exit 1; }}',
        '      mv -f "$sif.part.$$" "$sif"',
        "    fi",
        '  ) 9>"$sif.lock"',
        "fi",
    ]


def _apptainer_lines(spec: Spec, image: str, *, tool: str, sif_dir: str | None) -> list[str]:
    # --env splits its value at commas, so values go through APPTAINERENV_* (SINGULARITYENV_*
    # for singularity), which pass into the container as they are; --cleanenv keeps the
    # host's environment out and --containall its files ($HOME, /tmp, the submit folder).
    prefix = "SINGULARITYENV_" if tool == "singularity" else "APPTAINERENV_"
    lines = [line for key in sorted(spec.env) for line in _export(f"{prefix}{key}", spec.env[key])]
    lines += [_pass_through(f"{prefix}{key}", key) for key in sorted(spec.job.secret_env)]
    words = [tool]
    # `exec` runs the command as given; `run` runs the image's ENTRYPOINT (+ CMD, or the
    # command as its arguments), which is what `podman run IMAGE CMD` does.
    runs = spec.job.command is None or bool(spec.image.entrypoint)
    words += ["run" if runs else "exec", "--cleanenv", "--containall"]
    if spec.resources.gpu > 0:
        if spec.resources.gpu_resource.startswith("amd.com/"):
            words.append("--rocm")
        else:
            words.append("--nv")
        lines += [_pass_through(f"{prefix}{name}", name) for name in _GPU_VISIBILITY]
    lines += [_pass_through(f"{prefix}{name}", name) for name in _slurm_passed(spec)]
    if spec.image.workdir is not None:
        words += ["--pwd", spec.image.workdir]
    binds = [f'--bind "{_bind(m)}"' for m in spec.job.mounts]
    command = map(shlex.quote, spec.job.command or ())
    run = " ".join([shlex.join(words), *binds, '"$sif"', *command])
    return [*_sif_lines(tool, image, sif_dir), *_mkdir_lines(spec), *lines, "exec " + run]


def enroot_image(image: str) -> str:
    """`image` as enroot and pyxis name it: REGISTRY#PATH@DIGEST (no registry: Docker Hub)."""
    ref = parse_reference(image)
    if ref.registry == "docker.io":
        return f"{ref.path}@{ref.digest}"
    return f"{ref.registry}#{ref.path}@{ref.digest}"


def _pyxis_lines(spec: Spec, image: str) -> list[str]:
    # srun passes the job's environment into the container; --container-env makes these
    # values win over the image's own ENV for the same names.
    lines = [line for key in sorted(spec.env) for line in _export(key, spec.env[key])]
    names = sorted({*spec.env, *spec.job.secret_env, *_slurm_passed(spec)})
    if spec.resources.gpu > 0:
        names = sorted({*names, *_GPU_VISIBILITY})
    words = ["srun", f"--container-image={enroot_image(image)}"]
    if names:
        words.append(f"--container-env={','.join(names)}")
    if spec.image.workdir is not None:
        words.append(f"--container-workdir={spec.image.workdir}")
    # Without a command, pyxis runs none: the image's ENTRYPOINT and CMD have to be named.
    command = spec.job.command if spec.job.command is not None else spec.image.cmd
    argv = [*(spec.image.entrypoint or ()), *(command or ())]
    if not argv:
        raise InputError(
            "runtime pyxis runs the command it is given: set [job] command (or [image] cmd)"
        )
    run = shlex.join(words)
    if spec.job.mounts:
        run += ' --container-mounts="' + ",".join(_bind(m) for m in spec.job.mounts) + '"'
    return [*_mkdir_lines(spec), *lines, f"exec {run} {shlex.join(argv)}"]


def render_sbatch(
    spec: Spec, *, image: str, runtime: str = "podman", sif_dir: str | None = None
) -> str:
    """A batch script that asks Slurm for the spec's resources and runs `image` by digest.

    `runtime` is "podman" (`podman run --rm ... IMAGE CMD`), "apptainer" or its older name
    "singularity" (pulled once per digest into `sif_dir`, then `apptainer run --cleanenv
    --containall SIF CMD`), or "pyxis" (`srun --container-image=REGISTRY#PATH@DIGEST CMD`).
    [env] reaches the container byte for byte; every word is shell-quoted.
    """
    image = digest_reference(image)
    if runtime not in RUNTIMES:
        raise InputError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    if sif_dir is not None and runtime not in ("apptainer", "singularity"):
        raise InputError(f"--sif-dir is for apptainer or singularity, not {runtime}")
    if runtime == "podman":
        run = _podman_lines(spec, image)
    elif runtime == "pyxis":
        run = _pyxis_lines(spec, image)
    else:
        run = _apptainer_lines(spec, image, tool=runtime, sif_dir=sif_dir)
    header = [
        "#!/bin/bash",
        f"# Generated by imagesmith from {spec.path.name} ({spec.name} {spec.version}): "
        "do not edit by hand.",
        f"# Runs {image} with {runtime}; resources from [resources], time from [job].",
    ]
    if spec.job.secret_env:
        names = ", ".join(sorted(spec.job.secret_env))
        header.append(
            f"# {names}: from Kubernetes Secrets on a cluster ([job] secret_env); here from "
            "the environment sbatch is run with (sbatch passes it on by default)."
        )
    return "\n".join([*header, *sbatch_directives(spec), "set -euo pipefail", *run]) + "\n"
