"""The commands that write what runs the image by digest: `manifest` (the Kubernetes Job or
Pod, sized as the spec or a Slurm script says) and `sbatch` (the Slurm batch script)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imagesmith.cli.options import JsonOpt, OutputOpt, SpecArg
from imagesmith.cli.output import emit, reports_errors, warn
from imagesmith.errors import InputError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.model.lock import Lock
    from imagesmith.model.spec import Spec
    from imagesmith.outputs.sbatch_parse import SlurmRequest

commands = typer.Typer()

KindOpt = Annotated[
    str | None, typer.Option("--kind", help="pod or job (default: \\[job] kind, else job).")
]
FromSbatchOpt = Annotated[
    Path | None,
    typer.Option(
        "--from-sbatch",
        help="Take resources, time and command from this Slurm script's #SBATCH lines.",
    ),
]
ForPodmanOpt = Annotated[
    bool,
    typer.Option("--for-podman", help="Leave out long annotations podman kube play < 5 refuses."),
]
QueueMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue-map",
        metavar="PARTITION=QUEUE",
        help="With --from-sbatch: the Kueue LocalQueue for a Slurm partition (-p); "
        "repeat for more; adds to [job.queue_map].",
    ),
]
GpuMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--gpu-map",
        metavar="MODEL=VALUE",
        help="The GPU node label value for a Slurm GPU model (a100=NVIDIA-A100-SXM4-80GB); "
        "repeat for more; adds to [resources.gpu_map].",
    ),
]
GpuLabelOpt = Annotated[
    str,
    typer.Option("--gpu-label", help="The node label a mapped GPU model selects nodes by."),
]
SpecGpuOpt = Annotated[
    bool,
    typer.Option(
        "--spec-gpu",
        help="With --from-sbatch: keep the spec's GPUs for a script that asks for none.",
    ),
]


@commands.command()
@reports_errors
def manifest(
    spec_path: SpecArg = Path("env.toml"),
    kind: KindOpt = None,
    output: OutputOpt = None,
    from_sbatch: FromSbatchOpt = None,
    for_podman: ForPodmanOpt = False,
    as_json: JsonOpt = False,
    queue_map: QueueMapOpt = None,
    gpu_map: GpuMapOpt = None,
    gpu_label: GpuLabelOpt = "nvidia.com/gpu.product",
    spec_gpu: SpecGpuOpt = False,
) -> None:
    """Write the Kubernetes Job (or Pod) that runs the image by digest, sized as the spec says.

    Requests equal limits (Guaranteed QoS), and the Pod passes the "restricted" Pod
    Security Standard. The digest comes from `imagesmith push` (or a local build).
    """
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec
    from imagesmith.outputs.kubernetes import manifest_warnings, render_manifest

    if kind is not None and kind not in {"pod", "job"}:
        raise InputError(f"--kind must be pod or job, not {kind!r}")
    queues, gpus = _checked_maps(queue_map, gpu_map, gpu_label)
    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    spec = _with_gpu_map(spec, gpus)
    overrides = _sbatch_overrides(from_sbatch, spec, queues)
    for warning in manifest_warnings(
        spec, overrides=overrides, gpu_label=gpu_label, spec_gpu=spec_gpu
    ):
        warn(warning)
    image, uid, gid = _image_for(spec, the_lock)
    text = render_manifest(
        spec,
        image=image,
        uid=uid,
        gid=gid,
        kind=kind,
        overrides=overrides,
        lock_hash=the_lock.lock_hash,
        for_podman=for_podman,
        gpu_label=gpu_label,
        spec_gpu=spec_gpu,
    )
    report = None
    if as_json:
        from imagesmith.reports import manifest_report

        report = manifest_report(
            the_lock,
            kind=(kind or spec.job.kind).lower(),
            image=image,
            output=output,
            text=text,
            warnings=overrides.warnings if overrides is not None else (),
        )
    emit(text, output, report=report, reads=(spec.path, spec.lock_path))


def _checked_maps(
    queue_map: list[str] | None, gpu_map: list[str] | None, gpu_label: str
) -> tuple[dict[str, str], dict[str, str]]:
    """--queue-map and --gpu-map as mappings, once they and --gpu-label are well formed."""
    from imagesmith.outputs.names import label_key_problem

    problems: list[str] = []
    queues = _mapping(queue_map, "--queue-map", "queue", problems)
    gpus = _mapping(gpu_map, "--gpu-map", "value", problems)
    label_problem = label_key_problem(gpu_label)
    if label_problem:
        problems.append(f"--gpu-label {gpu_label!r}: {label_problem}")
    if problems:
        raise InputError("\n".join(problems))
    return queues, gpus


def _with_gpu_map(spec: Spec, gpus: dict[str, str]) -> Spec:
    """`spec` with --gpu-map added to its [resources.gpu_map] (the option wins)."""
    if not gpus:
        return spec
    import dataclasses

    resources = dataclasses.replace(
        spec.resources, gpu_map=dict(sorted({**spec.resources.gpu_map, **gpus}.items()))
    )
    return dataclasses.replace(spec, resources=resources)


def _sbatch_overrides(
    from_sbatch: Path | None, spec: Spec, queues: dict[str, str]
) -> SlurmRequest | None:
    """What --from-sbatch's script says (its warnings said); None without the option."""
    if from_sbatch is None:
        if queues:
            raise InputError(
                "--queue-map maps the partitions of a script: use it with --from-sbatch"
            )
        return None
    from imagesmith.model.input_files import read_input_text
    from imagesmith.outputs.sbatch_parse import parse_sbatch

    try:
        script = read_input_text(from_sbatch)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{from_sbatch}: cannot read it ({exc})") from None
    overrides = parse_sbatch(
        script, source=from_sbatch.name, queue_map={**spec.job.queue_map, **queues}
    )
    for warning in overrides.warnings:
        warn(warning)
    return overrides


def _mapping(
    pairs: list[str] | None, option: str, what: str, problems: list[str]
) -> dict[str, str]:
    """NAME=VALUE options as a mapping (a later NAME wins); each malformed one, a problem."""
    import re

    name_ok = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")
    value_ok = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
    found: dict[str, str] = {}
    for pair in pairs or []:
        name, equals, value = pair.partition("=")
        if not equals or not name_ok.match(name) or not value_ok.match(value):
            problems.append(
                f"{option} {pair!r}: expected NAME={what.upper()} (letters, digits, '-', '_' "
                f"and '.'; the {what} at most 63 characters)"
            )
            continue
        found[name] = value
    return found


@commands.command()
@reports_errors
def sbatch(
    spec_path: SpecArg = Path("env.toml"),
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="How the cluster runs containers: podman, apptainer (singularity: its older "
            "name) or pyxis (srun --container-image).",
        ),
    ] = "podman",
    sif_dir: Annotated[
        str | None,
        typer.Option(
            "--sif-dir",
            metavar="DIR",
            help="apptainer/singularity: the shared folder the image is pulled into once per "
            "digest (default $HOME/.cache/imagesmith/sif, expanded on the node).",
        ),
    ] = None,
    output: OutputOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a Slurm batch script with the spec's resources that runs the image by digest."""
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec
    from imagesmith.outputs.sbatch import render_sbatch
    from imagesmith.reports import sbatch_report

    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    image, _, _ = _image_for(spec, the_lock)
    text = render_sbatch(spec, image=image, runtime=runtime, sif_dir=sif_dir)
    report = None
    if as_json:
        report = sbatch_report(the_lock, runtime=runtime, image=image, output=output, text=text)
    emit(text, output, report=report, reads=(spec.path, spec.lock_path))


def _image_for(spec: Spec, the_lock: Lock) -> tuple[str, int, int]:
    """(repository@digest, uid, gid) of the lock's image: pushed if it was, else built here."""
    from imagesmith.model.records import read_build_record, read_push_record

    pushed = read_push_record(spec.path, the_lock.lock_hash)
    if pushed is not None:
        return pushed.pinned, pushed.uid, pushed.gid
    built = read_build_record(spec.path, the_lock.lock_hash)
    if built is not None:
        repository = spec.registry_repository or spec.name
        warn(
            f"{spec.path.name}'s image was built here but not pushed; a cluster cannot "
            f"pull it until `imagesmith push {as_typed(spec.path)}` has run"
        )
        return f"{repository}@{built.digest}", built.uid, built.gid
    raise InputError(
        f"no image digest for this lock yet: run `imagesmith build {as_typed(spec.path)}` "
        f"and `imagesmith push {as_typed(spec.path)}` first"
    )
