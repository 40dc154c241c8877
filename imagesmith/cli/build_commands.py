"""The commands that build images: `build` (here, or `--on slurm` / `--on kubernetes`),
`build-from` (what each pod of a `build --on kubernetes` Job runs) and `base` (a Debian
base image from Debian's own packages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from imagesmith.cli.local_builds import build_many, build_one
from imagesmith.cli.options import EngineOpt, JsonOpt, NoInputsOpt, PlatformOpt, chosen_engine
from imagesmith.cli.output import Progress, err, reports_errors
from imagesmith.errors import InputError
from imagesmith.userpath import as_typed

commands = typer.Typer()


@dataclass(frozen=True)
class BuildRequest:
    """What `imagesmith build` was asked: the specs named and every option, as given."""

    arguments: list[Path]
    engine: str
    tags: list[str] | tuple[str, ...]
    no_cache: bool
    relock: bool
    as_json: bool
    platform: str
    then_push: bool
    substitute: bool
    no_inputs: bool
    jobs: int
    fail_fast: bool
    on: str | None
    output: Path | None
    builder: str | None
    registry_secret: str | None
    partition: str | None
    wait: bool

    def refuse_kubernetes_options(self) -> None:
        """The options that only `--on kubernetes` takes, refused elsewhere."""
        kubernetes_only = {
            "--output": self.output is not None,
            "--builder": self.builder is not None,
            "--registry-secret": self.registry_secret is not None,
        }
        if any(kubernetes_only.values()):
            names = " and ".join(name for name, given in kubernetes_only.items() if given)
            raise InputError(f"{names}: these go with --on kubernetes")


SpecsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="env.toml files, or folders: a folder stands for FOLDER/env.toml and "
        "FOLDER/*/env.toml (one level down, sorted). Default: env.toml.",
        show_default=False,
    ),
]
TagsOpt = Annotated[
    list[str] | None,
    typer.Option("--tag", "-t", metavar="REF", help="Another tag for the image (repeatable)."),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Rebuild every step.")]
RelockOpt = Annotated[
    bool, typer.Option("--relock", help="Re-lock first when env.toml changed since env.lock.")
]
PushOpt = Annotated[
    bool,
    typer.Option(
        "--push",
        help="Push to \\[registry] repository after the build. When the registry holds "
        "this lock's image already, nothing is built, loaded or sent: its version tag is "
        "moved to it (with --substitute, --tag or --no-cache it is loaded here as "
        "--substitute loads it). Else as --substitute, then push.",
    ),
]
SubstituteOpt = Annotated[
    bool,
    typer.Option(
        "--substitute",
        help="When \\[registry] repository holds this lock's image (tag lock-HASH), "
        "pull it by digest instead of building; else take its system stage from there "
        "when it holds that (tag system-KEY), or build the stage apart for push to store "
        "(docs/catalogue.md: what that trusts).",
    ),
]
JobsOpt = Annotated[
    int,
    typer.Option(
        "--jobs", "-j", min=1, metavar="N", help="Build N specs at once (many specs only)."
    ),
]
FailFastOpt = Annotated[
    bool,
    typer.Option("--fail-fast", help="Many specs: after a failure, start no further spec."),
]
OnOpt = Annotated[
    str | None,
    typer.Option(
        "--on",
        metavar="slurm|kubernetes",
        help="Build where the jobs run: `slurm` submits one sbatch job array, one task per "
        "spec, each building with podman on its node and pushing by digest; `kubernetes` "
        "stores each spec's build context in its registry and writes the Job that builds "
        "them (docs/catalogue.md).",
    ),
]
JobOutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="--on kubernetes: write the build Job here (default: stdout).",
    ),
]
BuilderOpt = Annotated[
    str | None,
    typer.Option(
        "--builder",
        metavar="REF|SPEC",
        help="--on kubernetes: the builder image the pods run (REPO@sha256:...), or the "
        "env.toml of a builder recipe to build and push first; default: imagesmith builds "
        "recipes/imagesmith-builder and pushes it beside the first spec's repository.",
    ),
]
RegistrySecretOpt = Annotated[
    str | None,
    typer.Option(
        "--registry-secret",
        metavar="NAME",
        help="--on kubernetes: the Secret (kubernetes.io/dockerconfigjson) holding the "
        "registry's credentials: the pods pull the builder and push with it.",
    ),
]
PartitionOpt = Annotated[
    str | None,
    typer.Option("--partition", "-p", metavar="P", help="--on slurm: the Slurm partition."),
]
WaitOpt = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="--on slurm: follow the tasks, print each spec's digest, exit non-zero when "
        "one failed.",
    ),
]


@commands.command()
@reports_errors
def build(
    spec_paths: SpecsArg = None,
    engine: EngineOpt = "auto",
    tag: TagsOpt = None,
    no_cache: NoCacheOpt = False,
    relock: RelockOpt = False,
    as_json: JsonOpt = False,
    platform: PlatformOpt = "linux/amd64",
    then_push: PushOpt = False,
    substitute: SubstituteOpt = False,
    no_inputs: NoInputsOpt = False,
    jobs: JobsOpt = 1,
    fail_fast: FailFastOpt = False,
    on: OnOpt = None,
    output: JobOutputOpt = None,
    builder: BuilderOpt = None,
    registry_secret: RegistrySecretOpt = None,
    partition: PartitionOpt = None,
    wait: WaitOpt = False,
) -> None:
    """Build the lab's image: lock (if there is no lock yet), render, build, make canonical, tag.

    Prints the image's tags and digest; the digest depends on env.lock alone. Given many
    specs (or a folder), builds each of them, with one line per spec, and exits 0 only when
    all succeeded. With `--on slurm`, the specs build as Slurm array tasks instead; with
    `--on kubernetes`, as the pods of a Job this writes (apply it with `kubectl apply -f`).
    """
    request = BuildRequest(
        arguments=spec_paths or [Path("env.toml")],
        engine=engine,
        tags=tag or (),
        no_cache=no_cache,
        relock=relock,
        as_json=as_json,
        platform=platform,
        then_push=then_push,
        substitute=substitute,
        no_inputs=no_inputs,
        jobs=jobs,
        fail_fast=fail_fast,
        on=on,
        output=output,
        builder=builder,
        registry_secret=registry_secret,
        partition=partition,
        wait=wait,
    )
    if on == "kubernetes":
        from imagesmith.cli.cluster_builds import build_on_kubernetes

        build_on_kubernetes(request)
        return
    request.refuse_kubernetes_options()
    if on is not None or partition is not None or wait:
        from imagesmith.cli.cluster_builds import build_on_slurm

        build_on_slurm(request)
        return
    _build_here(request)


def _build_here(request: BuildRequest) -> None:
    """Build on this machine: one spec, or many (`--jobs` at once) with a line each."""
    arguments = request.arguments
    options = {
        "extra_tags": request.tags,
        "no_cache": request.no_cache,
        "relock": request.relock,
        "platform": request.platform,
        "then_push": request.then_push,
        "substitute": request.substitute,
        "no_inputs": request.no_inputs,
    }
    if len(arguments) > 1 or arguments[0].is_dir():
        from imagesmith.pipeline.catalogue import spec_paths as named_specs

        specs = named_specs(arguments)
        build_many(
            specs,
            engine=chosen_engine(request.engine),
            jobs=request.jobs,
            fail_fast=request.fail_fast,
            as_json=request.as_json,
            **options,
        )
    else:
        build_one(
            arguments[0], engine=chosen_engine(request.engine), as_json=request.as_json, **options
        )


@commands.command("build-from")
@reports_errors
def build_from(
    contexts: Annotated[
        list[str],
        typer.Argument(
            metavar="CONTEXT...",
            help="Build contexts by digest (REPO@sha256:...), as `build --on kubernetes` "
            "stored them.",
        ),
    ],
    index: Annotated[
        int | None,
        typer.Option(
            "--index",
            metavar="N",
            help="Build the Nth context (from 0); default: JOB_COMPLETION_INDEX, which an "
            "Indexed Job sets, or the only one.",
        ),
    ] = None,
    engine: EngineOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Fetch a build context from the registry, build it and push it by digest: what each
    pod of a `build --on kubernetes` Job runs (for the platform its lock pins).

    The context (the spec, its lock and the files they name) goes into ./context-HASH/,
    checked against its digest; the build is `build --push` of that spec, so an image the
    registry holds already is taken from there, and the digest is the one a local build
    of the same lock prints.
    """
    from imagesmith.cluster import kube_build

    chosen = kube_build.pick_context(contexts, index)
    spec_path = kube_build.fetch_context(chosen, kube_build.context_folder(chosen))
    err(f"context: {chosen} -> {as_typed(spec_path)}")
    from imagesmith.model.lock import read_lock

    platform = read_lock(spec_path.with_suffix(".lock")).platform
    build_one(
        spec_path,
        engine=chosen_engine(engine),
        as_json=as_json,
        extra_tags=(),
        no_cache=False,
        relock=False,
        platform=platform,
        then_push=True,
        substitute=False,  # a pod only publishes the image
        no_inputs=False,
    )


@commands.command()
@reports_errors
def base(
    suite: Annotated[
        str, typer.Option("--suite", metavar="SUITE", help="Debian suite to bootstrap.")
    ] = "bookworm",
    engine: EngineOpt = "auto",
    tag: Annotated[
        str | None,
        typer.Option(
            "--tag",
            "-t",
            metavar="REF",
            help="Tag for the image (default imagesmith/debian:SUITE).",
        ),
    ] = None,
    mirror: Annotated[
        str | None, typer.Option("--mirror", help="Debian mirror URL (default deb.debian.org).")
    ] = None,
    epoch: Annotated[
        int | None,
        typer.Option(
            "--epoch",
            help="SOURCE_DATE_EPOCH of the root filesystem (default: the suite's release date).",
        ),
    ] = None,
) -> None:
    """Make a Debian base image from Debian's own packages, without any registry.

    Runs mmdebstrap (deterministic with SOURCE_DATE_EPOCH) and imports the root
    filesystem with Containerfile.base; specs can then use it as base.image.
    """
    from imagesmith.model.spec_checks import url_has_credentials
    from imagesmith.pipeline.debian_base import make_base

    if mirror is not None and url_has_credentials(mirror):
        raise InputError(
            "--mirror holds a user name or password, which would stay in the image's apt "
            "sources; serve the mirror without them (or on a network that needs none)"
        )
    the_engine = chosen_engine(engine)
    progress = Progress()
    try:
        made = make_base(
            the_engine, suite=suite, tag=tag, mirror=mirror, epoch=epoch, on_line=progress
        )
    finally:
        progress.stop()
    typer.echo(f"made {made.ref} with {the_engine.name}")
    typer.echo(f"  image: {made.image_id}")
    typer.echo(f'  use it in env.toml: [base] image = "{made.ref}"')
