"""Builds where the jobs run: `build --on slurm` (one sbatch job array, a task per spec) and
`build --on kubernetes` (each spec's build context in its registry, and the Job that builds
them with the builder image)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from imagesmith import __version__
from imagesmith.cli.local_builds import build_and_push, print_problems
from imagesmith.cli.options import chosen_engine, engine_typed_on_command_line
from imagesmith.cli.output import emit, err, print_json, redacted
from imagesmith.errors import ImagesmithError, InputError, OperationError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.cli.build_commands import BuildRequest
    from imagesmith.cluster.kube_build import BuildTarget
    from imagesmith.cluster.slurm_build import Submitted
    from imagesmith.engine.base import Engine
    from imagesmith.model.spec import Spec
    from imagesmith.pipeline.catalogue import Outcome
    from imagesmith.reports import Report


def load_specs(paths: Sequence[Path]) -> tuple[list[Spec], list[str]]:
    """The specs that load, and one line per problem of those that do not, each line
    starting with the spec's path as the user typed it."""
    from imagesmith.model.spec_loading import load_spec

    specs, problems = [], []
    for path in paths:
        try:
            specs.append(load_spec(path))
        except ImagesmithError as exc:
            label = as_typed(path)
            for line in exc.lines():
                for said in (f"{path.name}: ", f"{path}: "):
                    line = line.removeprefix(said)
                problems.append(f"{label}: {line}")
    return specs, problems


# -- build --on slurm -------------------------------------------------------------------------


def build_on_slurm(request: BuildRequest) -> None:
    """`build --on slurm`: refuse what cannot work (one line each), then submit one array;
    with `wait`, follow it and exit as a many-spec build does."""
    from imagesmith.cluster import slurm_build
    from imagesmith.pipeline.catalogue import spec_paths as named_specs

    usage = _slurm_usage_problems(request)
    if usage:
        raise InputError("\n".join(usage))
    # --substitute goes unsaid: every task pushes, so every task substitutes.
    sbatch_path = slurm_build.sbatch_program()
    paths = named_specs(request.arguments)
    specs, problems = load_specs(paths)
    problems += slurm_build.refusals(specs)
    if problems:
        raise InputError("\n".join(problems))
    resources = slurm_build.TaskResources.for_specs(specs)
    run_folder = Path.cwd() / slurm_build.RUN_FOLDER
    script = slurm_build.render_array(
        [spec.path for spec in specs],
        resources=resources,
        run_folder=run_folder,
        partition=request.partition,
        imagesmith=slurm_build.imagesmith_command(),
        build_options=_task_build_options(request),
    )
    submitted = slurm_build.submit(script, run_folder=run_folder, sbatch=sbatch_path, on_line=err)
    err(f"{len(specs)} specs as tasks 0-{len(specs) - 1}; {resources.describe()}")
    if request.wait:
        _follow_slurm_job(submitted, paths, as_json=request.as_json)
    else:
        _print_submitted(submitted, paths, run_folder)


def _slurm_usage_problems(request: BuildRequest) -> list[str]:
    """One line for each option given that `--on slurm` cannot honour."""
    on, engine, wait = request.on, request.engine, request.wait
    usage = []
    if on != "slurm":
        usage.append(
            f"--on {on}: not a place imagesmith builds; give --on slurm or --on kubernetes"
            if on is not None
            else "--partition and --wait go with --on slurm"
        )
    typed = engine_typed_on_command_line()
    if engine not in ("auto", "podman") and typed:  # IMAGESMITH_ENGINE is for local builds
        usage.append(f"--engine {engine}: --on slurm builds with podman on the nodes")
    if request.jobs != 1 or request.fail_fast:
        usage.append("--jobs and --fail-fast: with --on slurm, Slurm decides what runs at once")
    if request.as_json and not wait:
        usage.append("--json with --on slurm needs --wait (the results come as the tasks end)")
    return usage


def _task_build_options(request: BuildRequest) -> list[str]:
    """The options of `build` that each task passes on to its own build."""
    return [
        *(f"--tag={t}" for t in request.tags),
        *(["--no-cache"] if request.no_cache else []),
        *(["--relock"] if request.relock else []),
        f"--platform={request.platform}",
        *(["--no-inputs"] if request.no_inputs else []),
    ]


def _print_submitted(submitted: Submitted, paths: Sequence[Path], run_folder: Path) -> None:
    """The submitted job: its tasks, its script and where the logs and results go."""
    job = submitted.job_id
    typer.echo(f"submitted Slurm job {job}: {len(paths)} specs, one array task each")
    for task, path in enumerate(paths):
        typer.echo(f"  task {task}: {as_typed(path)}")
    typer.echo(f"  script:  {as_typed(submitted.script)}")
    typer.echo(
        f"  logs:    {as_typed(run_folder)}/{job}_TASK.log, "
        f"results: {as_typed(run_folder)}/{job}_TASK.json"
    )
    typer.echo(f"  follow:  squeue --jobs {job}   (or submit with --wait)")


def _follow_slurm_job(submitted: Submitted, paths: Sequence[Path], *, as_json: bool) -> None:
    """`--wait`: one line per task as it ends; exit 0 only when every task built its spec."""
    from imagesmith.cluster import slurm_build
    from imagesmith.pipeline.catalogue import exit_code

    job = submitted.job_id

    def done(task: int, outcome: Outcome[dict[str, Any]]) -> None:
        if not as_json:
            typer.echo(slurm_build.outcome_line(task, outcome))
        if not outcome.ok:
            print_problems(outcome)

    try:
        outcomes = slurm_build.follow(submitted, paths, on_done=done)
    except KeyboardInterrupt:
        err(f"stopped following; job {job} goes on (squeue --jobs {job}, scancel {job})")
        raise typer.Exit(130) from None
    code = exit_code(outcomes)
    built = sum(o.ok for o in outcomes)
    err(f"{len(outcomes)} specs: {built} built, {len(outcomes) - built} failed (job {job})")
    if as_json:
        print_json(_slurm_report(outcomes, code))
    if code:
        raise typer.Exit(code)


def _slurm_report(outcomes: Sequence[Outcome[dict[str, Any]]], code: int) -> Report:
    """`build --on slurm --wait --json`: each task's own report, with its spec."""
    from imagesmith.reports import envelope, failure

    reports = [
        {
            **(o.value if o.value is not None else failure("build", o.exit_code, o.problems)),
            "spec": as_typed(o.spec),
        }
        for o in outcomes
    ]
    failed = [f"{r['spec']}: failed" for r in reports if not r["ok"]]
    return {**envelope("build", exit_code=code, problems=failed), "specs": reports}


# -- build --on kubernetes --------------------------------------------------------------------

#: Why each option that `build` takes is refused with `--on kubernetes`.
_NOT_ON_KUBERNETES = {
    "--partition": "--partition: not with --on kubernetes (a Slurm option)",
    "--wait": "--wait: not with --on kubernetes (apply the Job, then `kubectl wait`)",
    "--jobs": "--jobs: not with --on kubernetes (the Job runs one pod per spec, all at once)",
    "--fail-fast": "--fail-fast: not with --on kubernetes (each pod builds its spec alone)",
    "--tag": "--tag: not with --on kubernetes (each pod pushes by digest, tags lock-HASH)",
    "--no-cache": "--no-cache: not with --on kubernetes (each pod starts with empty storage)",
    "--json": "--json with --on kubernetes needs -o FILE (the JSON goes to standard output)",
}


def build_on_kubernetes(request: BuildRequest) -> None:
    """`build --on kubernetes`: lock each spec here, store its build context (and the
    inputs and local base a pod needs) in its registry, make sure of the builder image,
    then write the Job. Nothing is built here but the builder, when it must be."""
    from imagesmith.cluster import kube_build

    usage = [_NOT_ON_KUBERNETES[name] for name, given in _refused_on_kubernetes(request) if given]
    if usage:
        raise InputError("\n".join(usage))
    output, platform = request.output, request.platform
    specs = _kubernetes_specs(request.arguments, request.registry_secret)
    the_engine = chosen_engine(request.engine)
    image = _builder_image(request.builder, specs[0], the_engine, platform=platform)
    targets = [
        _stored_context(
            spec, the_engine, relock=request.relock, platform=platform, no_inputs=request.no_inputs
        )
        for spec in specs
    ]
    job = kube_build.render_job(targets, builder=image, registry_secret=request.registry_secret)
    report = _kubernetes_report(job, targets, image, output) if request.as_json else None
    emit(kube_build.job_yaml(job, targets), output, report=report)
    where = as_typed(output) if output is not None else "FILE"
    kind = "Indexed Job" if len(targets) > 1 else "Job"
    err(f"{kind} {job['metadata']['name']}: {len(targets)} spec(s), builder {image}")
    err(f"  apply it: kubectl apply -f {where}")


def _refused_on_kubernetes(request: BuildRequest) -> list[tuple[str, bool]]:
    """Each option `--on kubernetes` refuses, and whether it was given."""
    return [
        ("--partition", request.partition is not None),
        ("--wait", request.wait),
        ("--jobs", request.jobs != 1),
        ("--fail-fast", request.fail_fast),
        ("--tag", bool(request.tags)),
        ("--no-cache", request.no_cache),
        ("--json", request.as_json and request.output is None),
    ]


def _kubernetes_specs(arguments: list[Path], registry_secret: str | None) -> list[Spec]:
    """The specs named, once each can build in a pod and its registry answers."""
    from imagesmith.cluster import kube_build
    from imagesmith.pipeline.catalogue import spec_paths as named_specs

    paths = named_specs(arguments)
    specs, problems = load_specs(paths)
    problems += kube_build.refusals(specs)
    if registry_secret is not None:
        problems += kube_build.secret_problems(registry_secret)
    if problems:
        raise InputError("\n".join(problems))
    problems = kube_build.unreachable(specs)
    if problems:
        raise OperationError("\n".join(problems))
    return specs


def _stored_context(
    spec: Spec, the_engine: Engine, *, relock: bool, platform: str, no_inputs: bool
) -> BuildTarget:
    """Lock `spec` here and store in its registry what a pod builds it from: a base that
    exists only here, the input archive (unless `no_inputs`) and the build context."""
    from imagesmith.cluster import kube_build
    from imagesmith.inputs.archive import collect_inputs, inputs_tag, push_inputs, push_local_base
    from imagesmith.pipeline.build import ensure_lock
    from imagesmith.registry.client import RegistryClient

    label = as_typed(spec.path)

    def on_line(line: str) -> None:
        err(f"[{label}] {redacted(line)}")

    lock, _ = ensure_lock(spec, the_engine, relock=relock, platform=platform, on_line=on_line)
    repository = kube_build.repository_of(spec)
    push_local_base(the_engine, lock, repository, on_line=on_line)
    client = RegistryClient(repository.registry)
    if not no_inputs and not client.has_manifest(repository.path, inputs_tag(lock)):
        files = collect_inputs(lock, on_line=on_line)
        push_inputs(
            files, repository, lock=lock, subject_digest=None, subject_size=0, on_line=on_line
        )
    context = kube_build.push_context(spec, lock, on_line=on_line)
    on_line(f"context: {context}")
    return kube_build.BuildTarget(spec, context)


def _kubernetes_report(
    job: dict[str, Any], targets: Sequence[BuildTarget], image: str, output: Path | None
) -> Report:
    """`build --on kubernetes --json -o FILE`: the Job, its builder and each spec's context."""
    from imagesmith.reports import envelope

    return {
        **envelope("build"),
        "job": job["metadata"]["name"],
        "indexed": len(targets) > 1,
        "builder": image,
        "output": as_typed(output) if output is not None else "",
        "specs": [
            {"spec": as_typed(t.spec.path), "context": t.context, "index": index}
            for index, t in enumerate(targets)
        ],
    }


def _builder_image(given: str | None, first: Spec, engine: Engine, *, platform: str) -> str:
    """The builder image the pods run, pinned by digest: `given` as a reference, or built
    and pushed from `given` as a builder spec, or from the packaged recipe."""
    from imagesmith.cluster import kube_build
    from imagesmith.inputs.context import cache_dir

    if given is not None and not (given.endswith(".toml") or Path(given).is_dir()):
        return kube_build.pinned_builder(given)
    if given is None:
        folder = cache_dir() / "builder" / __version__
        with kube_build.builder_lock(folder):
            spec_path = kube_build.prepare_builder(
                folder, repository=kube_build.builder_repository(first)
            )
            return _built_builder(spec_path, engine, platform=platform)
    else:
        spec_path = Path(given) / "env.toml" if Path(given).is_dir() else Path(given)
        if not spec_path.is_file():
            raise InputError(f"--builder {given}: no such builder spec")
        from imagesmith.model.spec_loading import load_spec

        if load_spec(spec_path).registry_repository is None:
            raise InputError(
                f"--builder {given}: set [registry] repository in it (the pods pull the "
                "builder from there)"
            )
        kube_build.write_wheel(spec_path.parent)
    return _built_builder(spec_path, engine, platform=platform)


def _built_builder(spec_path: Path, engine: Engine, *, platform: str) -> str:
    """Build (or take from the registry) and push the builder spec; its pinned reference."""
    err(f"builder: {as_typed(spec_path)}")

    def on_line(line: str) -> None:
        err(f"[builder] {redacted(line)}")

    _, pushed = build_and_push(
        spec_path,
        engine,
        extra_tags=(),
        no_cache=False,
        relock=True,  # the wheel in it is this imagesmith's: its lock follows
        platform=platform,
        then_push=True,
        substitute=False,  # pods pull it: not needed here
        no_inputs=False,
        on_line=on_line,
    )
    assert pushed is not None, "then_push gives the pinned reference"
    return pushed
