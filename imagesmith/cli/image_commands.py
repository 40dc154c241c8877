"""The commands on a built image: `inspect` (the spec and lock it carries), `unpack` (what
rebuilds it, taken out of it) and `verify` (rebuilt from its lock, compared)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imagesmith.cli.options import EngineOpt, JsonOpt, chosen_engine
from imagesmith.cli.output import Progress, err, print_json, reports_errors
from imagesmith.errors import InputError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.engine.base import Engine, ImageInfo
    from imagesmith.model.lock import Lock

commands = typer.Typer()

ImageArg = Annotated[str, typer.Argument(help="An image imagesmith built (name:tag or ID).")]


@commands.command()
@reports_errors
def inspect(
    image: ImageArg,
    engine: EngineOpt = "auto",
    show: Annotated[
        str, typer.Option("--show", help="What to print: spec, lock, or summary.")
    ] = "summary",
    as_json: JsonOpt = False,
) -> None:
    """Summarise the spec and lock an image was built from (they travel inside it).

    --show spec / --show lock print them in full; --json gives the summary and the spec.
    Also shows, as information only, the run-time settings ([resources], [job],
    [registry]) the image was first pushed with: kept on the machine that pushed it and
    beside the image in its registry (tag lock-HASH.run), never in the image or its digest.
    """
    import tomli_w

    from imagesmith.reports import inspect_report

    if show not in {"spec", "lock", "summary"}:
        raise InputError(f"--show must be spec, lock or summary, not {show!r}")
    from imagesmith.attest.target import is_spec_target

    if is_spec_target(image):
        raise InputError(
            f"{image} is a file: inspect reads an image (NAME:TAG or a digest); the image "
            "`imagesmith build` made from a spec is the NAME:VERSION it printed"
        )
    info, the_lock, lock_text = read_image(chosen_engine(engine), image)
    if show == "lock" and not as_json:
        sys.stdout.write(lock_text)
        return
    if show == "spec" and not as_json:
        sys.stdout.write(tomli_w.dumps(dict(the_lock.spec_data)))
        return
    from imagesmith.pipeline.run_settings import describe, find

    first, source = find(the_lock.lock_hash, info.repo_digests)
    if as_json:
        print_json(inspect_report(image, info, the_lock, run_settings=(first, source)))
        return
    print_summary(image, info, the_lock)
    for line in describe(first, source):
        typer.echo(line)


@commands.command()
@reports_errors
def unpack(
    image: ImageArg,
    directory: Annotated[
        Path, typer.Argument(help="Write the spec and its files here (made if missing).")
    ] = Path("."),
    engine: EngineOpt = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Replace files that are already there.")
    ] = False,
) -> None:
    """Take out of an image everything that rebuilds it: env.toml, env.lock, the requirements
    file and the files [image] copy put in it (checked against the lock's tree hashes).

    `imagesmith build DIR/env.toml` then gives the image's digest again. Add back the
    run-time tables ([resources], [job], [registry]) before manifest, sbatch or push: they
    are not part of the image. Nothing is written unless everything could be restored.
    """
    from imagesmith.pipeline.unpack import unpack as run_unpack

    written = run_unpack(chosen_engine(engine), image, directory, force=force, on_line=err)
    for path in written:
        typer.echo(f"wrote {as_typed(path.resolve())}")
    typer.echo(f"  next: imagesmith build {as_typed((directory / 'env.toml').resolve())}")


@commands.command()
@reports_errors
def verify(
    target: Annotated[
        str, typer.Argument(help="env.toml, or an image imagesmith built (name:tag or ID).")
    ] = "env.toml",
    engine: EngineOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the image from its lock with no cache and check nothing changed.

    With env.toml: compares with the last `imagesmith build` (manifest digest). With an
    image: rebuilds from the lock the image carries and compares image IDs. Exit 0 when
    identical; exit 1 with what differs (config fields, layers, files) when not.
    """
    from imagesmith.inputs.beside_spec import restore_beside_spec
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec
    from imagesmith.pipeline.verify import verify as run_verify
    from imagesmith.pipeline.verify import verify_image
    from imagesmith.reports import verify_report

    the_engine = chosen_engine(engine)
    progress = Progress()
    try:
        if target.endswith(".toml") or Path(target).is_file():
            restore_beside_spec(Path(target), on_line=progress)
            spec = load_spec(Path(target))
            verdict = run_verify(spec, fresh_lock(spec), the_engine, on_line=progress)
        else:
            verdict = verify_image(target, the_engine, on_line=progress)
    finally:
        progress.stop()
    if as_json:
        print_json(verify_report(verdict))
    elif verdict.identical:
        typer.echo(f"reproducible: the rebuild is identical ({verdict.reference})")
    if verdict.identical:
        return
    err(
        f"NOT reproducible: expected {verdict.reference}, the rebuild gave {verdict.rebuilt}",
        colour="red",
    )
    for line in verdict.differences:
        err(f"  {line}")
    raise typer.Exit(1)


def read_image(engine: Engine, image: str) -> tuple[ImageInfo, Lock, str]:
    """The engine's facts about `image`, the lock it carries, and that lock's text."""
    from imagesmith.render.containerfile import lock_in_image

    info = engine.inspect_image(image)
    lock_text, the_lock = lock_in_image(image, info.labels, path=Path("env.lock"))
    return info, the_lock, lock_text


def print_summary(image: str, info: ImageInfo, the_lock: Lock) -> None:
    """What `inspect` and `pull` say of an image: its spec, lock, base, pins and SBOM."""
    spec = the_lock.spec
    typer.echo(f"{image}: {spec.name}:{spec.version}, image {info.id}")
    typer.echo(f"  lock:  {the_lock.lock_hash}")
    typer.echo(f"  base:  {the_lock.base.reference} ({the_lock.base.digest})")
    python = len(the_lock.python.packages) if the_lock.python else 0
    typer.echo(f"  pins:  {len(the_lock.apt.packages)} apt packages, {python} Python distributions")
    from imagesmith.attest.inventory import inventory as sbom_inventory

    listed = sbom_inventory(the_lock).components
    unknown = sum(1 for c in listed if c.license is None)
    typer.echo(
        f"  sbom:  {len(listed)} packages, {unknown} licenses unknown "
        "(from the lock; `imagesmith sbom IMAGE` also reads the image)"
    )
    typer.echo("  --show spec / --show lock print them in full")
