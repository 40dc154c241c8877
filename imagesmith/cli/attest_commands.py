"""The commands that say what an image is made of and how it was made: `sbom`, `provenance`
(SLSA, signed with a key) and `verify-provenance`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from imagesmith.cli.options import EngineOpt, OutputOpt, SpecArg, chosen_signer
from imagesmith.cli.output import emit, reports_errors
from imagesmith.errors import InputError

if TYPE_CHECKING:
    from imagesmith.attest.provenance import BuildRun
    from imagesmith.model.lock import Lock
    from imagesmith.model.spec import Spec

commands = typer.Typer()


@commands.command()
@reports_errors
def sbom(
    target: Annotated[
        str,
        typer.Argument(
            help="env.toml (or env.lock), or an image imagesmith built (name:tag or ID)."
        ),
    ] = "env.toml",
    sbom_format: Annotated[
        str,
        typer.Option("--format", "-f", help="spdx (SPDX 2.3 JSON) or cyclonedx (CycloneDX 1.6)."),
    ] = "spdx",
    output: OutputOpt = None,
    engine: EngineOpt = "auto",
) -> None:
    """Write the image's software bill of materials, made from its lock (no scanner, no network).

    Lists the base image by digest, every apt package with its .deb sha256 and every Python
    distribution with its hashes. The same lock gives the same bytes. From an image, the
    Debian packages its base brought are listed too (read with dpkg-query in a container),
    and the license expressions its Python distributions declare.
    """
    from imagesmith.attest.inventory import inventory
    from imagesmith.attest.sbom import FORMATS, render_sbom
    from imagesmith.attest.target import is_spec_target, lock_for_spec, lock_from_labels

    if sbom_format not in FORMATS:
        raise InputError(f"--format must be spdx or cyclonedx, not {sbom_format!r}")
    if "@sha256:" in target and not is_spec_target(target):
        from imagesmith.attest.referrers import attached_document

        emit(attached_document(target, sbom_format).decode("utf-8"), output)
        return
    if is_spec_target(target):
        contents = inventory(lock_for_spec(target))
    else:
        from imagesmith.attest.target import deb_licenses, installed_debs, venv_licenses
        from imagesmith.engine import get_engine

        the_engine = get_engine(engine)
        the_lock = lock_from_labels(target, the_engine.inspect_image(target).labels)
        licenses = venv_licenses(the_engine, target) if the_lock.python else {}
        contents = inventory(
            the_lock,
            installed_debs(the_engine, target),
            licenses,
            deb_licenses(the_engine, target),
        )
    emit(render_sbom(contents, sbom_format), output)


@commands.command()
@reports_errors
def provenance(
    spec_path: SpecArg = Path("env.toml"),
    output: OutputOpt = None,
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            metavar="KEY",
            help="Sign with this ed25519 private key (PEM) and write a DSSE envelope. "
            "IMAGESMITH_SIGNING_KEY may hold the PEM text instead.",
        ),
    ] = None,
    builder_id: Annotated[
        str | None,
        typer.Option(
            "--builder-id",
            metavar="URI",
            envvar="IMAGESMITH_BUILDER_ID",
            help="Who built it (default urn:imagesmith:builder:HOSTNAME).",
        ),
    ] = None,
) -> None:
    """Write the SLSA v1 provenance (an in-toto Statement) of the image built from env.lock.

    The subject is the digest the last `imagesmith build` of this lock printed; with a key,
    the statement is signed into a DSSE envelope (`imagesmith verify-provenance` checks it).
    """
    from imagesmith.attest.inventory import inventory
    from imagesmith.attest.provenance import dump_statement, provenance_statement
    from imagesmith.model.lock import fresh_lock
    from imagesmith.model.spec_loading import load_spec

    signer = chosen_signer(sign_key)
    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    run = _build_run(spec, the_lock, builder_id)
    text = dump_statement(provenance_statement(the_lock, inventory(the_lock), run))
    if signer is not None:
        from imagesmith.attest.signing import sign_statement

        text = sign_statement(text, signer)
    emit(text, output, reads=(spec.path, spec.lock_path))


def _build_run(spec: Spec, the_lock: Lock, builder_id: str | None) -> BuildRun:
    """The build of `the_lock` recorded here (and where it was pushed), as provenance says it."""
    import socket

    from imagesmith.attest.provenance import BuildRun
    from imagesmith.model.records import read_build_record, read_push_record

    built = read_build_record(spec.path, the_lock.lock_hash)
    if built is None:
        raise InputError(
            f"no build of this lock here: run `imagesmith build {spec.path.name}` first "
            "(the provenance names the digest it made)"
        )
    pushed = read_push_record(spec.path, the_lock.lock_hash)
    return BuildRun(
        repository=pushed.repository if pushed else (spec.registry_repository or spec.name),
        digest=built.digest,
        engine=built.engine,
        builder_id=builder_id or f"urn:imagesmith:builder:{socket.gethostname()}",
        started=built.started,
        finished=built.finished,
    )


@commands.command("verify-provenance")
@reports_errors
def verify_provenance(
    envelope: Annotated[
        Path, typer.Argument(help="A DSSE envelope `provenance --sign-key` wrote.")
    ],
    key: Annotated[
        Path, typer.Option("--key", metavar="KEY", help="The ed25519 public key (PEM) to trust.")
    ],
    digest: Annotated[
        str | None,
        typer.Option("--digest", metavar="sha256:…", help="Also require this subject digest."),
    ] = None,
) -> None:
    """Check a signed provenance: the signature with KEY, then (with --digest) its subject.

    Exit 0 when it verifies, 1 when it does not, 2 when a file is not what it should be.
    """
    from imagesmith.attest.signing import VerificationFailed, load_public_key, verify_envelope

    public = load_public_key(str(key))
    try:
        text = envelope.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{envelope}: cannot read it ({exc})") from None
    statement = verify_envelope(text, public, what=str(envelope))
    subjects = statement.get("subject") if isinstance(statement, dict) else None
    found = [
        f"{s.get('name')}@sha256:{s.get('digest', {}).get('sha256')}"
        for s in subjects or []
        if isinstance(s, dict)
    ]
    if digest is not None and not any(f.endswith("@" + digest) for f in found):
        raise VerificationFailed(
            f"{envelope}: signed, but its subject is {', '.join(found) or 'missing'}, not {digest}"
        )
    typer.echo(f"verified: {', '.join(found)} (key {public.keyid[:16]})")
