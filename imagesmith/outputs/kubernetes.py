"""The Kubernetes Job or Pod that runs a built image, by digest, and its NetworkPolicy.

Pure functions: a Spec and an image reference in, text out; no engine, no network. The same
input always gives the same bytes (keys in a fixed order, one YAML document per object).
The pod inside the Job or Pod is `pod_spec`'s; the Slurm batch script is `sbatch`'s.

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

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from imagesmith.errors import InputError
from imagesmith.model.labels import KUBERNETES_PREFIX
from imagesmith.model.slurmtime import JobArray, format_slurm_time, parse_slurm_time
from imagesmith.model.spec import Spec
from imagesmith.outputs.names import LABEL_VALUE_MAX, digest_reference, dns_label, label_value
from imagesmith.outputs.pod_spec import ARRAY_RUNS, gpu_node_label, mount_note, pod_spec
from imagesmith.outputs.sbatch_parse import SlurmRequest, apply_overrides

LABEL_PREFIX = KUBERNETES_PREFIX
KINDS = ("job", "pod")
#: The node label GPU feature discovery sets to the GPU's product name.
DEFAULT_GPU_LABEL = "nvidia.com/gpu.product"
#: The label Kueue reads to queue a workload (a LocalQueue in the workload's namespace).
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
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
    `workdir` overrides [image] workdir; `lock_hash` (the lock the image was built from)
    becomes a label and an annotation. `gpu_label` is the node label a mapped GPU model
    selects on ([resources] gpu_model and gpu_map). `for_podman` leaves out annotations whose
    values are longer than 63 characters (the image, the hashes), which `podman kube play`
    before podman 5.0 refuses (containers/podman#21663; Debian 12 has 4.3); the header keeps
    their values.
    """
    image = digest_reference(image)
    _refuse_root(uid)
    warnings = manifest_warnings(spec, overrides=overrides, gpu_label=gpu_label, spec_gpu=spec_gpu)
    run = spec if overrides is None else apply_overrides(spec, overrides, spec_gpu=spec_gpu)
    kind_name = _kind_name(run, kind)
    name = dns_label((overrides.job_name if overrides is not None else None) or run.name)
    deadline = parse_slurm_time(run.job.time) if run.job.time is not None else None
    labels = _labels(run, name, lock_hash)
    annotations, left_out = _annotations(run, image, lock_hash, overrides, for_podman=for_podman)
    pod, notes = pod_spec(
        run,
        image=image,
        uid=uid,
        gid=gid,
        workdir=workdir if workdir is not None else run.image.workdir,
        deadline=deadline if kind_name == "pod" else None,
        gpu_label=gpu_label,
    )
    notes += _queue_notes(run.job.queue, kind_name, deadline)
    workload = _workload(run, kind_name, name, labels, annotations, pod, deadline, notes)
    header = [
        f"Generated by imagesmith from {run.path.name} ({run.name} {run.version}): "
        "do not edit by hand.",
        f"{workload['kind']} {name}: runs {image} as uid {uid}, gid {gid}.",
        *notes,
        *(f"warning: {w}" for w in warnings if overrides is None),
        "The NetworkPolicy admits no ingress to the job's pods.",
        *_left_out_lines(left_out),
    ]
    if overrides is not None:
        header += _override_lines(spec, run, name, overrides, gpu_label, warnings, spec_gpu)
    comments = "".join(f"# {_one_line(line)}\n" for line in header)
    return comments + _dump([workload, _network_policy(name, run.job.namespace, labels)])


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
    warnings: list[str] = [mount_note(m) for m in spec.job.mounts if m.host_path or m.claim is None]
    model = spec.resources.gpu_model
    if model is not None and spec.resources.gpu > 0 and gpu_node_label(spec) is None:
        where = ""
        if overrides is not None and "gpu_type" in overrides.origins:
            where = f"{overrides.origins['gpu_type']}: "
        warnings.append(
            f"{where}GPU model {model!r} has no {gpu_label} value to select nodes by; kept "
            f"as the annotation {LABEL_PREFIX}/gpu-type only, so any GPU node may run it "
            f"(map it with --gpu-map {model}=VALUE or [resources.gpu_map])"
        )
    return warnings


# -- the objects -----------------------------------------------------------------------


def _refuse_root(uid: int) -> None:
    if uid == 0:
        raise InputError(
            "the image's user is root (uid 0); the pod runs as non-root, so build the image "
            "with a non-root [image] user"
        )


def _kind_name(spec: Spec, kind: str | None) -> str:
    """ "job" or "pod": `kind` when given, else [job] kind."""
    kind_name = (kind or spec.job.kind).lower()
    if kind_name not in KINDS:
        raise InputError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind_name == "pod" and spec.job.array is not None:
        raise InputError(
            f"array {spec.job.array.text} needs kind job (an Indexed Job, one pod per index), "
            "not pod"
        )
    return kind_name


def _labels(spec: Spec, name: str, lock_hash: str | None) -> dict[str, str]:
    """The labels of every object, sorted."""
    labels: dict[str, str] = {
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "imagesmith",
        "app.kubernetes.io/name": label_value(spec.name) or name,
    }
    version = label_value(spec.version)
    if version:
        labels["app.kubernetes.io/version"] = version
    if lock_hash is not None:
        short = label_value(lock_hash.rpartition(":")[2])
        if short:
            labels[f"{LABEL_PREFIX}/lock-hash"] = short
    return dict(sorted(labels.items()))


def _annotations(
    spec: Spec,
    image: str,
    lock_hash: str | None,
    overrides: SlurmRequest | None,
    *,
    for_podman: bool,
) -> tuple[dict[str, str], dict[str, str]]:
    """The workload's and its pods' annotations, sorted: what a label value cannot hold;
    and those left out `for_podman`, which podman kube play before podman 5.0 refuses
    (values over 63 characters)."""
    annotations: dict[str, str] = {f"{LABEL_PREFIX}/image": image}
    if lock_hash is not None:
        annotations[f"{LABEL_PREFIX}/lock-hash"] = lock_hash
    annotations[f"{LABEL_PREFIX}/spec-hash"] = spec.spec_hash
    if label_value(spec.version) != spec.version:
        annotations[f"{LABEL_PREFIX}/version"] = spec.version
    if overrides is not None:
        annotations[f"{LABEL_PREFIX}/sbatch"] = overrides.source
        if overrides.partition is not None:
            annotations[f"{LABEL_PREFIX}/slurm-partition"] = overrides.partition
    if spec.resources.gpu_model is not None and spec.resources.gpu > 0:
        annotations[f"{LABEL_PREFIX}/gpu-type"] = spec.resources.gpu_model
    annotations = dict(sorted(annotations.items()))
    if not for_podman:
        return annotations, {}
    left_out = {k: v for k, v in annotations.items() if len(v) > LABEL_VALUE_MAX}
    return {k: v for k, v in annotations.items() if k not in left_out}, left_out


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


def _workload(
    spec: Spec,
    kind_name: str,
    name: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    pod: dict[str, Any],
    deadline: int | None,
    notes: list[str],
) -> dict[str, Any]:
    """The Pod, or the Job whose template is the pod; a Job's array note goes to `notes`."""
    workload_labels = dict(labels)
    if spec.job.queue is not None:
        workload_labels = dict(sorted({**labels, QUEUE_LABEL: spec.job.queue}.items()))
    metadata = _metadata(name, spec.job.namespace, workload_labels, annotations)
    if kind_name == "pod":
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod}
    job_spec = _job_spec(spec.job.array, spec.job.backoff_limit, notes=notes)
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
    job_spec["template"] = {"metadata": template_meta, "spec": pod}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


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


def _network_policy(name: str, namespace: str | None, labels: Mapping[str, str]) -> dict[str, Any]:
    """The NetworkPolicy that admits no ingress to the job's pods (a batch job serves none)."""
    return {
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


# -- the header ------------------------------------------------------------------------


def _queue_notes(queue: str | None, kind_name: str, deadline: int | None) -> list[str]:
    """What the header says of a Kueue queue: how the workload waits for it."""
    if queue is None:
        return []
    waits = "created suspended; Kueue starts it" if kind_name == "job" else "Kueue gates it"
    clock = (
        "; activeDeadlineSeconds counts from the start, not from creation"
        if deadline is not None and kind_name == "job"
        else ""
    )
    return [
        f"queue {queue}: label {QUEUE_LABEL} (a Kueue LocalQueue in the job's "
        f"namespace); {waits} when admitted{clock}"
    ]


def _left_out_lines(left_out: Mapping[str, str]) -> list[str]:
    if not left_out:
        return []
    return [
        "for podman kube play (before podman 5.0 it refuses annotation values over 63 "
        "characters), these annotations are left out:",
        *(f"{key}: {value}" for key, value in left_out.items()),
    ]


def _override_lines(
    original: Spec,
    spec: Spec,
    name: str,
    request: SlurmRequest,
    gpu_label: str,
    warnings: list[str],
    spec_gpu: bool,
) -> list[str]:
    """Where each value the script sets came from, what the spec still sets, and what the
    script asks for that the manifest does not carry over."""
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


def _gpu_shown(spec: Spec, gpu_label: str) -> str:
    value = gpu_node_label(spec)
    if value is not None:
        return f"{spec.resources.gpu_model} (nodeSelector {gpu_label}={value})"
    return f"{spec.resources.gpu_model} (annotation {LABEL_PREFIX}/gpu-type only)"


def _one_line(text: str) -> str:
    """Text safe inside a one-line comment: control characters escaped."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group(0)):02x}", text)


# -- YAML ------------------------------------------------------------------------------


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
