"""The Slurm batch script that runs a built image, by digest.

`render_sbatch` asks Slurm for the spec's [resources] and [job] time (#SBATCH directives)
and runs the image with podman, apptainer (or singularity) or pyxis: [env] reaches the
container byte for byte, every word is shell-quoted, and the [job] mounts are binds. Pure
functions: a Spec and an image reference in, text out. Scripts are read back (`manifest
--from-sbatch`) by `imagesmith.outputs.sbatch_parse`.
"""

from __future__ import annotations

import math
import re
import shlex
from decimal import Decimal

from imagesmith.errors import InputError
from imagesmith.model.quantity import quantity_value
from imagesmith.model.reference import parse_reference
from imagesmith.model.slurmtime import format_slurm_time, parse_slurm_time
from imagesmith.model.spec import Mount, Spec
from imagesmith.outputs.names import digest_reference
from imagesmith.outputs.shared_memory import needs_shm, shm_bytes

RUNTIMES = ("podman", "apptainer", "singularity", "pyxis")
#: The variables Slurm sets to the GPUs it allocated; the container must see them.
_GPU_VISIBILITY = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL")


def memory_megabytes(quantity: str) -> int:
    """A memory quantity in whole MiB, rounded up: what `--mem=NM` must ask for."""
    value = quantity_value(quantity)
    mebibytes = value / Decimal(2**20)
    whole = int(mebibytes)
    return whole if whole == mebibytes else whole + 1


def _cpus(quantity: str) -> int:
    return math.ceil(quantity_value(quantity))


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


#: What an array's tasks see, from Slurm (and the Indexed Job's pods, from imagesmith).
ARRAY_VARIABLES = (
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_MIN",
)


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
    if needs_shm(spec):
        words += [f"--shm-size={shm_bytes(spec)}"]
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
