"""The `imagesmith` command. Only this module reads argv and turns errors into exit codes."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer

from imagesmith import __version__
from imagesmith.errors import ImagesmithError, InputError, OperationError

if TYPE_CHECKING:
    from imagesmith.engine.base import Engine
    from imagesmith.lock import Lock
    from imagesmith.spec import Spec

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="imagesmith",
    help=(
        "Turn a lab's env.toml into a container image anyone can rebuild bit for bit, "
        "and into the Kubernetes or Slurm job that runs it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

SpecArg = Annotated[
    Path,
    typer.Argument(help="The lab's env.toml.", show_default=True),
]


#: `scheme://user:password@`: what a tool's message may quote of a proxy or index URL.
_URL_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]+@")


def redacted(line: str) -> str:
    """`line` with the user and password of every URL in it replaced by `***`: a message
    quoted from pip, uv or an engine must not put a host credential in a log."""
    return _URL_USERINFO.sub(r"\1***@", line)


def err(line: str) -> None:
    typer.echo(redacted(line), err=True)


#: A problem line quotes the input it is about; past this it is cut (a 4 MB line helps no one).
MAX_LINE = 1000


def _shortened(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 4] + " ..."


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Print an expected failure as one line per problem and exit with its code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ImagesmithError as exc:
            prefix = "error: " if not isinstance(exc, InputError) or len(exc.lines()) == 1 else ""
            for index, line in enumerate(exc.lines()):
                err(_shortened(f"{prefix if index == 0 else ''}{line}"))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted; nothing was left half-done")
            raise typer.Exit(130) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imagesmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Turn a lab's env.toml into a reproducible image and the job that runs it."""


@app.command()
@reports_errors
def validate(spec_path: SpecArg = Path("env.toml")) -> None:
    """Check env.toml and list every problem in it, one per line (exit 2 if any)."""
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
    python = len(spec.python.requirements) if spec.python else 0
    typer.echo(
        f"{spec_path}: valid ({spec.name}:{spec.version}, {len(spec.apt_packages)} apt packages, "
        f"{python} Python requirements)"
    )


@app.command()
@reports_errors
def render(
    spec_path: SpecArg = Path("env.toml"),
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="Write the Containerfile here instead of printing it.",
        ),
    ] = None,
) -> None:
    """Print the Containerfile that env.lock pins (needs an up-to-date lock; no engine)."""
    from imagesmith.lock import fresh_lock, write_atomically
    from imagesmith.render import render as render_lock
    from imagesmith.spec import load_spec

    lock = fresh_lock(load_spec(spec_path))
    text = render_lock(lock)
    if output is None:
        sys.stdout.write(text)
    else:
        write_atomically(output, text)
        err(f"wrote {output}")


@app.command()
@reports_errors
def init(
    recipe: Annotated[
        str, typer.Option("--recipe", "-r", help="The recipe to start from (see --list).")
    ] = "python-minimal",
    directory: Annotated[Path, typer.Argument(help="Folder to write env.toml into.")] = Path("."),
    list_recipes: Annotated[
        bool, typer.Option("--list", help="List the recipes and exit.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing env.toml.")] = False,
) -> None:
    """Write a starting env.toml from one of the ready recipes."""
    from imagesmith.recipebook import available_recipes, recipe_text

    if list_recipes:
        for name, summary in available_recipes().items():
            typer.echo(f"{name:16} {summary}")
        return
    target = directory / "env.toml"
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to overwrite it")
    text = recipe_text(recipe)
    from imagesmith.lock import write_atomically

    made = _make_folders(directory)
    try:
        write_atomically(target, text)
    except BaseException:
        for folder in reversed(made):  # leave nothing behind: only the folders made here
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    typer.echo(f"wrote {target} from recipe {recipe}; next: imagesmith build {target}")


def _make_folders(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents; the folders made, outermost first."""
    missing = [folder for folder in (directory, *directory.parents) if not os.path.lexists(folder)]
    missing.reverse()
    for folder in missing:
        try:
            folder.mkdir()
        except OSError as exc:
            for made in reversed(missing[: missing.index(folder)]):
                with contextlib.suppress(OSError):
                    made.rmdir()
            if exc.errno == errno.ENOTDIR:
                raise InputError(
                    f"cannot create {folder}: {folder.parent} is not a folder"
                ) from None
            reason = exc.strerror or type(exc).__name__
            if exc.errno == errno.ENOENT:
                reason = f"{folder.parent} does not take new folders ({reason})"
            raise OperationError(f"cannot create {folder}: {reason}") from None
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder")
    return missing


EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        "-e",
        metavar="ENGINE",
        help="docker, podman, or auto (Docker if a daemon answers, else podman).",
        envvar="IMAGESMITH_ENGINE",
    ),
]
PlatformOpt = Annotated[
    str,
    typer.Option(
        "--platform",
        metavar="OS/ARCH",
        help="Target platform of the image (linux/amd64, linux/arm64).",
    ),
]


def _engine_factory(name: str) -> Callable[[], Engine]:
    from imagesmith.engine import get_engine

    return lambda: get_engine(name)


@app.command()
@reports_errors
def lock(
    spec_path: SpecArg = Path("env.toml"),
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only check that env.lock matches env.toml: exit 0 or 1 (for CI)."
        ),
    ] = False,
    upgrade: Annotated[
        bool, typer.Option("--upgrade", help="Re-resolve everything to the newest the spec allows.")
    ] = False,
    upgrade_package: Annotated[
        list[str] | None,
        typer.Option(
            "--upgrade-package",
            "-P",
            metavar="NAME",
            help="Re-resolve this Python package only (repeatable).",
        ),
    ] = None,
    engine: EngineOpt = "auto",
    platform: PlatformOpt = "linux/amd64",
) -> None:
    """Pin everything the build will read into env.lock: base digest, apt closure, Python hashes.

    Re-running on an unchanged spec changes nothing and needs no network.
    """
    from imagesmith.lock import read_lock, stale_reason, write_lock
    from imagesmith.resolve import lock_spec
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
    lock_path = spec.lock_path
    if check:
        if not lock_path.exists():
            err(f"{lock_path.name} does not exist; run `imagesmith lock {spec_path.name}`")
            raise typer.Exit(1)
        reason = stale_reason(spec, read_lock(lock_path))
        if reason:
            err(f"{reason}; run `imagesmith lock {spec_path.name}`")
            raise typer.Exit(1)
        typer.echo(f"{lock_path.name} matches {spec_path.name}")
        return
    previous = read_lock(lock_path) if lock_path.exists() else None
    if previous is not None and previous.platform != platform:
        previous = None
    started = time.monotonic()
    new = lock_spec(
        spec,
        engine=_engine_factory(engine),
        platform=platform,
        previous=previous,
        upgrade=upgrade,
        upgrade_packages=upgrade_package or (),
        on_line=err,
    )
    changed = write_lock(new, lock_path)
    for line in lock_diff(previous, new):
        typer.echo(line)
    python = len(new.python.packages) if new.python else 0
    verb = "wrote" if changed else "unchanged:"
    typer.echo(
        f"{verb} {lock_path} ({len(new.apt.packages)} apt packages, {python} Python "
        f"distributions, {time.monotonic() - started:.1f} s)"
    )


def lock_diff(old: Lock | None, new: Lock) -> list[str]:
    """`numpy 2.2.6 → 2.3.5`, `+ libfoo 1.2-3`, `- bar 1.0` lines between two locks."""
    if old is None:
        return []
    lines = []
    if old.base.digest != new.base.digest:
        lines.append(f"base {old.base.digest[:19]} → {new.base.digest[:19]}")

    def versions(lock: Lock) -> dict[str, str]:
        found = {f"{p.name}": p.version for p in lock.apt.packages}
        if lock.python:
            found.update({f"{p.name} (python)": p.version for p in lock.python.packages})
        return found

    before, after = versions(old), versions(new)
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            lines.append(f"+ {name} {after[name]}")
        elif name not in after:
            lines.append(f"- {name} {before[name]}")
        elif before[name] != after[name]:
            lines.append(f"{name} {before[name]} → {after[name]}")
    return lines


class Progress:
    """Build progress: a live status line on a terminal, plain lines in CI or a pipe."""

    def __init__(self) -> None:
        self.plain = (
            os.environ.get("CI", "").lower() in {"1", "true", "yes"} or not sys.stderr.isatty()
        )
        self._status: Any = None
        if not self.plain:
            from rich.console import Console

            self._status = Console(stderr=True).status("starting")
            self._status.start()

    def __call__(self, line: str) -> None:
        line = redacted(line)
        if self._status is None:
            err(line)
        elif line.startswith(("STEP", "Step", "lock", "base", "apt", "python", "canonical")):
            self._status.console.print(line, markup=False, highlight=False)
            self._status.update(line[:100])
        else:
            self._status.update(line[:100])

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()


@app.command()
@reports_errors
def build(
    spec_path: SpecArg = Path("env.toml"),
    engine: EngineOpt = "auto",
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", "-t", metavar="REF", help="Another tag for the image (repeatable)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every step.")] = False,
    relock: Annotated[
        bool, typer.Option("--relock", help="Re-lock first when env.toml changed since env.lock.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object on stdout at the end.")
    ] = False,
    platform: PlatformOpt = "linux/amd64",
    then_push: Annotated[
        bool, typer.Option("--push", help="Push to [registry] repository after the build.")
    ] = False,
) -> None:
    """Build the lab's image: lock (if there is no lock yet), render, build, make canonical, tag.

    Prints the image's tags and digest; the digest depends on env.lock alone.
    """
    from imagesmith.build import build as run_build
    from imagesmith.engine import get_engine
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
    the_engine = get_engine(engine)
    progress = Progress()
    try:
        result = run_build(
            spec,
            the_engine,
            extra_tags=tag or (),
            no_cache=no_cache,
            relock=relock,
            platform=platform,
            on_line=progress,
        )
    finally:
        progress.stop()
    summary = result.as_json()
    if then_push:
        from imagesmith.lock import read_lock
        from imagesmith.push import push as run_push

        record = run_push(spec, read_lock(spec.lock_path), on_line=err)
        summary["pushed"] = record.pinned
        err(f"pushed {record.pinned}")
    if as_json:
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    typer.echo(f"built {result.tags[0]} with {result.engine} in {result.seconds:.1f} s")
    typer.echo(f"  digest: {result.digest}")
    typer.echo(f"  image:  {result.image_id}")
    typer.echo(f"  tags:   {', '.join(result.tags)}")
    typer.echo(f"  size:   {result.size / 1e6:.1f} MB")
    typer.echo(f"  run it: {result.engine} run --rm -it {result.tags[0]}")


@app.command()
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
    from imagesmith.base import make_base
    from imagesmith.engine import get_engine
    from imagesmith.spec import url_has_credentials

    if mirror is not None and url_has_credentials(mirror):
        raise InputError(
            "--mirror holds a user name or password, which would stay in the image's apt "
            "sources; serve the mirror without them (or on a network that needs none)"
        )
    the_engine = get_engine(engine)
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


@app.command()
@reports_errors
def inspect(
    image: Annotated[str, typer.Argument(help="An image imagesmith built (name:tag or ID).")],
    engine: EngineOpt = "auto",
    show: Annotated[
        str, typer.Option("--show", help="What to print: spec, lock, or summary.")
    ] = "summary",
) -> None:
    """Print the spec and lock an image was built from (they travel inside it)."""
    import tomli_w

    from imagesmith.engine import get_engine
    from imagesmith.lock import parse_lock
    from imagesmith.render import LABEL_PREFIX, decode_embedded_lock

    if show not in {"spec", "lock", "summary"}:
        raise InputError(f"--show must be spec, lock or summary, not {show!r}")
    info = get_engine(engine).inspect_image(image)
    embedded = info.labels.get(f"{LABEL_PREFIX}.lock")
    if not embedded:
        raise InputError(
            f"{image} was not built by imagesmith (it has no {LABEL_PREFIX}.lock label)"
        )
    try:
        lock_text = decode_embedded_lock(embedded)
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{image}: its {LABEL_PREFIX}.lock label is damaged") from None
    the_lock = parse_lock(lock_text, path=Path("env.lock"))
    if show == "lock":
        sys.stdout.write(lock_text)
    elif show == "spec":
        sys.stdout.write(tomli_w.dumps(dict(the_lock.spec_data)))
    else:
        spec = the_lock.spec
        typer.echo(f"{image}: {spec.name}:{spec.version}, image {info.id}")
        typer.echo(f"  lock:  {the_lock.lock_hash}")
        typer.echo(f"  base:  {the_lock.base.reference} ({the_lock.base.digest})")
        python = len(the_lock.python.packages) if the_lock.python else 0
        typer.echo(
            f"  pins:  {len(the_lock.apt.packages)} apt packages, {python} Python distributions"
        )
        typer.echo("  --show spec / --show lock print them in full")


def _image_for(spec: Spec, the_lock: Lock) -> tuple[str, int, int]:
    """(repository@digest, uid, gid) of the lock's image: pushed if it was, else built here."""
    from imagesmith.records import read_build_record, read_push_record

    pushed = read_push_record(spec.path, the_lock.lock_hash)
    if pushed is not None:
        return pushed.pinned, pushed.uid, pushed.gid
    built = read_build_record(spec.path, the_lock.lock_hash)
    if built is not None:
        repository = spec.registry_repository or spec.name
        err(
            f"warning: {spec.path.name}'s image was built here but not pushed; a cluster cannot "
            f"pull it until `imagesmith push {spec.path.name}` has run"
        )
        return f"{repository}@{built.digest}", built.uid, built.gid
    raise InputError(
        f"no image digest for this lock yet: run `imagesmith build {spec.path.name}` "
        f"and `imagesmith push {spec.path.name}` first"
    )


def _emit(text: str, output: Path | None) -> None:
    from imagesmith.lock import write_atomically

    if output is None:
        sys.stdout.write(text)
    else:
        write_atomically(output, text)
        err(f"wrote {output}")


OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", metavar="FILE", help="Write to this file instead of printing."),
]


@app.command()
@reports_errors
def manifest(
    spec_path: SpecArg = Path("env.toml"),
    kind: Annotated[
        str | None, typer.Option("--kind", help="pod or job (default: [job] kind, else job).")
    ] = None,
    output: OutputOpt = None,
    from_sbatch: Annotated[
        Path | None,
        typer.Option(
            "--from-sbatch",
            help="Take resources, time and command from this Slurm script's #SBATCH lines.",
        ),
    ] = None,
    for_podman: Annotated[
        bool,
        typer.Option(
            "--for-podman", help="Leave out long annotations podman kube play < 5 refuses."
        ),
    ] = False,
) -> None:
    """Write the Kubernetes Job (or Pod) that runs the image by digest, sized as the spec says.

    Requests equal limits (Guaranteed QoS), and the Pod passes the "restricted" Pod
    Security Standard. The digest comes from `imagesmith push` (or a local build).
    """
    from imagesmith.lock import fresh_lock
    from imagesmith.manifests import render_manifest
    from imagesmith.slurm import parse_sbatch
    from imagesmith.spec import load_spec, read_input_text

    if kind is not None and kind not in {"pod", "job"}:
        raise InputError(f"--kind must be pod or job, not {kind!r}")
    spec = load_spec(spec_path)
    the_lock = fresh_lock(spec)
    overrides = None
    if from_sbatch is not None:
        try:
            script = read_input_text(from_sbatch)
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{from_sbatch}: cannot read it ({exc})") from None
        overrides = parse_sbatch(script, source=from_sbatch.name)
        for warning in overrides.warnings:
            err(f"warning: {warning}")
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
    )
    _emit(text, output)


@app.command()
@reports_errors
def sbatch(
    spec_path: SpecArg = Path("env.toml"),
    runtime: Annotated[
        str, typer.Option("--runtime", help="How the cluster runs containers: podman or apptainer.")
    ] = "podman",
    output: OutputOpt = None,
) -> None:
    """Write a Slurm batch script with the spec's resources that runs the image by digest."""
    from imagesmith.lock import fresh_lock
    from imagesmith.manifests import render_sbatch
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
    image, _, _ = _image_for(spec, fresh_lock(spec))
    _emit(render_sbatch(spec, image=image, runtime=runtime), output)


@app.command()
@reports_errors
def push(
    spec_path: SpecArg = Path("env.toml"),
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="REPO[:TAG]",
            help="Push here (REGISTRY/PATH[:TAG]) instead of [registry] repository.",
        ),
    ] = None,
) -> None:
    """Publish the built image to the lab's registry and record its digest for `manifest`.

    Credentials: docker login / podman login, or IMAGESMITH_REGISTRY_USER and
    IMAGESMITH_REGISTRY_PASSWORD (never on the command line).
    """
    from imagesmith.lock import fresh_lock
    from imagesmith.push import push as run_push
    from imagesmith.spec import load_spec

    spec = load_spec(spec_path)
    record = run_push(spec, fresh_lock(spec), to=to, on_line=err)
    typer.echo(f"pushed {record.pinned}")
    typer.echo(f"  tags: {', '.join(record.tags)}")
    typer.echo(f"  next: imagesmith manifest {spec_path}")


@app.command()
@reports_errors
def pull(
    image: Annotated[
        str,
        typer.Argument(help="NAME@sha256:..., or an env.toml whose image was pushed."),
    ],
    engine: EngineOpt = "auto",
) -> None:
    """Fetch a lab's image by digest, check the digest, and show the spec it was built from."""
    from imagesmith.engine import get_engine
    from imagesmith.lock import read_lock
    from imagesmith.push import pull as run_pull
    from imagesmith.records import read_push_record
    from imagesmith.spec import load_spec

    ref = image
    if image.endswith((".toml", ".lock")):
        spec = load_spec(Path(image).with_suffix(".toml"))
        the_lock = read_lock(spec.lock_path)
        record = read_push_record(spec.path, the_lock.lock_hash)
        if record is None:
            raise InputError(
                f"{spec.path.name}'s image has not been pushed: no {spec.path.stem}.pushed.json"
            )
        ref = record.pinned
    the_engine = get_engine(engine)
    pinned = run_pull(the_engine, ref)
    typer.echo(f"pulled {pinned} into {the_engine.name}; digest verified")
    inspect(pinned, engine=the_engine.name, show="summary")


@app.command()
@reports_errors
def login(
    registry: Annotated[str, typer.Argument(help="The registry host, e.g. registry.example.edu.")],
    username: Annotated[str, typer.Option("--username", "-u", help="Registry user name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Check credentials against a registry and store them in the docker config."""
    from imagesmith.push import login as run_login

    if not password_stdin:
        raise InputError("pass the password on standard input with --password-stdin")
    password = sys.stdin.read().rstrip("\n")
    if not password:
        raise InputError("no password on standard input")
    path = run_login(registry, username, password)
    typer.echo(f"login to {registry} succeeded; credentials stored in {path}")


@app.command()
@reports_errors
def verify(
    target: Annotated[
        str, typer.Argument(help="env.toml, or an image imagesmith built (name:tag or ID).")
    ] = "env.toml",
    engine: EngineOpt = "auto",
) -> None:
    """Rebuild the image from its lock with no cache and check nothing changed.

    With env.toml: compares with the last `imagesmith build` (manifest digest). With an
    image: rebuilds from the lock the image carries and compares image IDs. Exit 0 when
    identical; exit 1 with what differs (config fields, layers, files) when not.
    """
    from imagesmith.engine import get_engine
    from imagesmith.lock import fresh_lock
    from imagesmith.spec import load_spec
    from imagesmith.verify import verify as run_verify
    from imagesmith.verify import verify_image

    the_engine = get_engine(engine)
    progress = Progress()
    try:
        if target.endswith(".toml") or Path(target).is_file():
            spec = load_spec(Path(target))
            verdict = run_verify(spec, fresh_lock(spec), the_engine, on_line=progress)
        else:
            verdict = verify_image(target, the_engine, on_line=progress)
    finally:
        progress.stop()
    if verdict.identical:
        typer.echo(f"reproducible: the rebuild is identical ({verdict.reference})")
        return
    err(f"NOT reproducible: expected {verdict.reference}, the rebuild gave {verdict.rebuilt}")
    for line in verdict.differences:
        err(f"  {line}")
    raise typer.Exit(1)


def main() -> None:
    app()
