"""The pod inside the Job or Pod that runs a built image: its container (command, [env],
resources), its volumes and their mounts, and its security context.

Pure functions of the spec; `kubernetes.render_manifest` puts the pod in its Job or Pod.
The choices (the restricted Pod Security Standard, a read-only root filesystem with /tmp
and the working directory as emptyDirs, /dev/shm for GPUs, the array lookup) are listed in
`imagesmith.outputs.kubernetes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from imagesmith.errors import InputError
from imagesmith.model.slurmtime import JobArray
from imagesmith.model.spec import Mount, Spec
from imagesmith.outputs.names import dns_label
from imagesmith.outputs.shared_memory import needs_shm, shm_size

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


def requests_equal_limits(amounts: Mapping[str, Any]) -> dict[str, Any]:
    """A container's resources with requests equal to limits (Guaranteed QoS)."""
    return {"requests": dict(amounts), "limits": dict(amounts)}


def gpu_node_label(spec: Spec) -> str | None:
    """The node label value the spec's GPU model maps to, if it names one that does."""
    model = spec.resources.gpu_model
    if model is None or spec.resources.gpu == 0:
        return None
    return spec.resources.gpu_map.get(model)


def mount_note(mount: Mount) -> str:
    """What a [job] mount becomes in the pod, for the manifest's header."""
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


def pod_spec(
    spec: Spec,
    *,
    image: str,
    uid: int,
    gid: int,
    workdir: str | None,
    deadline: int | None,
    gpu_label: str,
) -> tuple[dict[str, Any], list[str]]:
    """The pod that runs `image` as `uid`/`gid`, and what the manifest's header should say
    of it (what is writable, the claims it mounts)."""
    notes: list[str] = []
    mounts, volumes, writable = _volumes(spec, workdir, notes)
    notes.insert(0, f"read-only root filesystem; writable: {', '.join(writable)}")
    pod: dict[str, Any] = {"restartPolicy": "Never"}
    if deadline is not None:
        pod["activeDeadlineSeconds"] = deadline
    pod["automountServiceAccountToken"] = False
    gpu_node = gpu_node_label(spec)
    if gpu_node is not None:
        pod["nodeSelector"] = {gpu_label: gpu_node}
    pod["securityContext"] = {
        "fsGroup": gid,
        "runAsGroup": gid,
        "runAsNonRoot": True,
        "runAsUser": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["containers"] = [_container(spec, image=image, workdir=workdir, mounts=mounts)]
    pod["volumes"] = volumes
    return pod, notes


# -- the container -------------------------------------------------------------------------


def _container(
    spec: Spec, *, image: str, workdir: str | None, mounts: list[dict[str, Any]]
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": dns_label(spec.name),
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **_command(spec),
    }
    env = _env(spec)
    if env:
        container["env"] = env
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


def _command(spec: Spec) -> dict[str, list[str]]:
    """The container's `command` or `args`, when the spec or an array sets them."""
    if spec.job.array is not None:
        # The lookup runs first and execs the whole command line (entrypoint included).
        return {"command": ["/bin/sh", "-c", ARRAY_LOOKUP, "imagesmith-array", *_argv(spec)]}
    if spec.job.command is not None:
        # With an ENTRYPOINT (e.g. tini), the command goes after it, as `podman run IMAGE CMD`
        # does; without one, it is the whole command line.
        key = "args" if spec.image.entrypoint else "command"
        return {key: list(spec.job.command)}
    return {}


def _argv(spec: Spec) -> list[str]:
    """The whole command line the container runs: entrypoint, then command or cmd."""
    command = spec.job.command if spec.job.command is not None else spec.image.cmd
    if command is None and not spec.image.entrypoint:
        raise InputError(
            "an array job needs its command spelled out: set [job] command (or [image] cmd), "
            "which the pod runs after looking up SLURM_ARRAY_TASK_ID"
        )
    return [*(spec.image.entrypoint or ()), *(command or ())]


def _env(spec: Spec) -> list[dict[str, Any]]:
    """[env], the [job] secret_env Secrets and an array's variables, sorted by name."""
    env: dict[str, dict[str, Any]] = {k: {"name": k, "value": v} for k, v in spec.env.items()}
    for k, ref in spec.job.secret_env.items():
        env[k] = {"name": k, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
    if spec.job.array is not None:
        env |= _array_env(spec.job.array)
    return [env[k] for k in sorted(env)]


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
    return requests_equal_limits(amounts)


# -- volumes and mounts --------------------------------------------------------------------


def _volumes(
    spec: Spec, workdir: str | None, notes: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(the container's volume mounts, the pod's volumes, the folders written to)."""
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    writable = ["/tmp"]
    if workdir is not None and _workdir_needs_volume(spec, workdir, notes):
        mounts.append({"name": "workdir", "mountPath": workdir})
        volumes.append({"name": "workdir", "emptyDir": {}})
        writable.append(workdir)
    if needs_shm(spec):
        size = shm_size(spec)
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
            notes.append(mount_note(mount))
    return mounts, volumes, writable


def _workdir_needs_volume(spec: Spec, workdir: str, notes: list[str]) -> bool:
    """Whether the working directory gets an emptyDir of its own (a note when it cannot)."""
    why_not = _writable_workdir(spec, workdir)
    if why_not is not None:
        notes.append(f"{workdir} is read-only: {why_not}; write to /tmp")
        return False
    if workdir in {m.target for m in spec.job.mounts}:
        return False  # a [job] mount is the working directory
    return not _inside(workdir, "/tmp")


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


def _inside(path: str, parent: str) -> bool:
    p, q = PurePosixPath(path), PurePosixPath(parent)
    return p == q or q in p.parents


def _volume(mount: Mount) -> dict[str, Any]:
    if mount.claim is not None:
        claim: dict[str, Any] = {"claimName": mount.claim}
        if mount.read_only:
            claim["readOnly"] = True
        return {"persistentVolumeClaim": claim}
    if mount.host_path:
        return {"hostPath": {"path": mount.source, "type": "Directory"}}
    return {"emptyDir": {}}
