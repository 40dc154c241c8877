"""The commands that talk to the lab's registry: `push` (the image by digest, with its input
archive, attestations and first run-time settings), `pull` (by digest, checked), `login`
and `fetch-tool` (the imagesmith wheel that wrote a lock, from the image's input archive)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imagesmith.cli.image_commands import print_summary, read_image
from imagesmith.cli.options import (
    EngineOpt,
    JsonOpt,
    NoInputsOpt,
    SpecArg,
    chosen_engine,
    chosen_signer,
)
from imagesmith.cli.output import err, print_json, reports_errors, warn
from imagesmith.errors import ImagesmithError, InputError
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.model.records import PushRecord
    from imagesmith.model.spec import Spec

commands = typer.Typer()


@commands.command()
@reports_errors
def push(
    spec_path: SpecArg = Path("env.toml"),
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="REPO[:TAG]",
            help="Push here (REGISTRY/PATH[:TAG]) instead of \\[registry] repository.",
        ),
    ] = None,
    as_json: JsonOpt = False,
    no_attestations: Annotated[
        bool,
        typer.Option(
            "--no-attestations",
            help="Do not attach the SBOMs and provenance (OCI referrers) to the image.",
        ),
    ] = False,
    no_inputs: NoInputsOpt = False,
) -> None:
    """Publish the built image to the lab's registry and record its digest for `manifest`.

    Also stores the lock's input archive beside it (every .deb and wheel the lock pins, the
    files [image] copy takes, and a base that exists only here; tagged lock-HASH.inputs),
    so the image can be rebuilt after its sources drop those files, and from a folder
    holding only env.toml and env.lock, and attaches its SPDX and CycloneDX SBOMs and its
    SLSA provenance as OCI referrers (signed when IMAGESMITH_SIGNING_KEY holds an ed25519
    key). The first push of a lock also keeps the run-time tables ([resources], [job],
    [registry]) as they are now, beside the image (tag lock-HASH.run) and on this machine,
    for `inspect` to show as information only. Credentials: docker login / podman login,
    or IMAGESMITH_REGISTRY_USER and IMAGESMITH_REGISTRY_PASSWORD (never on the command
    line).
    """
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec
    from imagesmith.pipeline.push import push as run_push

    signer = None if no_attestations else chosen_signer(None)
    spec = load_spec(spec_path)
    record = run_push(
        spec,
        fresh_lock(spec),
        to=to,
        inputs=not no_inputs,
        on_line=err,
        attestations=not no_attestations,
        signer=signer,
        builder_id=os.environ.get("IMAGESMITH_BUILDER_ID") or None,
    )
    _keep_run_settings(spec, record)
    if as_json:
        from imagesmith.reports import push_report

        print_json(push_report(record))
        return
    typer.echo(f"pushed {record.pinned}")
    typer.echo(f"  tags: {', '.join(record.tags)}")
    typer.echo(f"  next: imagesmith manifest {spec_path}")


def _keep_run_settings(spec: Spec, record: PushRecord) -> None:
    """Keep the run-time tables of the first push of this lock, on this machine and beside
    the image; information only, so a failure here is a warning, not a failed push."""
    from imagesmith.pipeline.canonical_build import layout_dir
    from imagesmith.pipeline.run_settings import publish, settings_tag

    manifest = (
        layout_dir(record.digest) / "blobs" / "sha256" / record.digest.removeprefix("sha256:")
    )
    try:
        publish(
            record.pinned,
            lock_hash=record.lock_hash,
            spec_data=spec.data,
            subject_size=manifest.stat().st_size,
            on_line=err,
        )
    except (ImagesmithError, OSError) as exc:
        warn(
            f"pushed {record.pinned}, but recording its run-time settings "
            f"({settings_tag(record.lock_hash)}, information only) failed: {exc}"
        )


@commands.command()
@reports_errors
def pull(
    image: Annotated[
        str,
        typer.Argument(help="NAME@sha256:..., or an env.toml whose image was pushed."),
    ],
    engine: EngineOpt = "auto",
    verify_key: Annotated[
        Path | None,
        typer.Option(
            "--verify-key",
            metavar="KEY",
            help="Require a provenance attached to the image and signed with this ed25519 "
            "public key (PEM); checked before pulling.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch a lab's image by digest, check the digest, and show the spec it was built from.

    Also lists the SBOMs and provenance attached to it in the registry.
    """
    from imagesmith.pipeline.push import pull as run_pull
    from imagesmith.pipeline.push import served_reference

    ref = _pushed_reference(image) if image.endswith((".toml", ".lock")) else image
    served = served_reference(ref)  # a tag or a wrong digest is refused before any engine
    if verify_key is not None:
        from imagesmith.attest.publish import verify_attached_provenance
        from imagesmith.attest.signing import load_public_key

        verify_attached_provenance(ref, load_public_key(str(verify_key)))
    the_engine = chosen_engine(engine)
    pinned = run_pull(the_engine, served)
    info, the_lock, _ = read_image(the_engine, pinned)
    if as_json:
        from imagesmith.reports import pull_report

        print_json(pull_report(pinned, engine=the_engine.name, info=info, lock=the_lock))
        return
    typer.echo(f"pulled {pinned} into {the_engine.name}; digest verified")
    print_summary(pinned, info, the_lock)
    if verify_key is not None:
        typer.echo(f"  provenance: signed with {verify_key}, verified")
    _print_attached(ref)


def _pushed_reference(spec_or_lock: str) -> str:
    """REPO@sha256:... of the image that the last push of this spec's lock recorded."""
    from imagesmith.model.lock import read_lock
    from imagesmith.model.records import read_push_record
    from imagesmith.model.spec_loading import load_spec

    spec = load_spec(Path(spec_or_lock).with_suffix(".toml"))
    the_lock = read_lock(spec.lock_path)
    record = read_push_record(spec.path, the_lock.lock_hash)
    if record is None:
        raise InputError(
            f"{spec.path.name}'s image has not been pushed: no {spec.path.stem}.pushed.json"
        )
    return record.pinned


def _print_attached(ref: str) -> None:
    """The SBOMs and provenance attached to `ref` in its registry; a warning if unlisted."""
    from imagesmith.attest.publish import attached_summary
    from imagesmith.errors import RegistryError

    try:
        for line in attached_summary(ref):
            typer.echo(f"  attached: {line}")
    except RegistryError as exc:
        warn(f"cannot list what is attached to it: {exc}")


@commands.command("fetch-tool")
@reports_errors
def fetch_tool(
    spec_path: SpecArg = Path("env.toml"),
    source: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="REPO",
            help="The repository the image was pushed to, instead of \\[registry] repository.",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="DIR", help="Write the wheel into this folder."),
    ] = Path("."),
) -> None:
    """Download the imagesmith that wrote env.lock, as a wheel, from the image's input archive.

    `push` keeps that wheel (its sha256 is the lock's imagesmith_wheel) beside the image,
    so the exact tool can be installed years later, whatever this imagesmith is:
    `python3 -m venv v && v/bin/pip install ./imagesmith-VERSION-py3-none-any.whl`.
    The download is checked against the lock's sha256.
    """
    from imagesmith.inputs.tool_wheel import fetch_tool_wheel

    path, lock = fetch_tool_wheel(spec_path, repository=source, output=output)
    typer.echo(f"fetched imagesmith {lock.imagesmith_version}: {as_typed(path.resolve())}")
    typer.echo(f"  {lock.imagesmith_wheel}")
    typer.echo(
        f"  install: python3 -m venv venv && venv/bin/pip install {as_typed(path.resolve())}"
    )


@commands.command()
@reports_errors
def login(
    registry: Annotated[str, typer.Argument(help="The registry host, e.g. registry.example.edu.")],
    username: Annotated[str, typer.Option("--username", "-u", help="Registry user name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Check credentials against a registry and store them in the docker config."""
    from imagesmith.pipeline.push import login as run_login

    if not password_stdin:
        raise InputError("pass the password on standard input with --password-stdin")
    password = sys.stdin.read().rstrip("\n")
    if not password:
        raise InputError("no password on standard input")
    path = run_login(registry, username, password)
    typer.echo(f"login to {registry} succeeded; credentials stored in {path}")
