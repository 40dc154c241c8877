"""Builds on this machine: one spec (with its progress on screen) or many (`--jobs` at once,
one line per spec), each built and, with `--push`, pushed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from imagesmith.cli.output import Progress, err, print_json, redacted, shortened
from imagesmith.userpath import as_typed

if TYPE_CHECKING:
    from imagesmith.engine.base import Engine
    from imagesmith.pipeline.build import BuildResult
    from imagesmith.pipeline.catalogue import Outcome


def build_and_push(
    spec_path: Path,
    the_engine: Engine,
    *,
    extra_tags: list[str] | tuple[str, ...],
    no_cache: bool,
    relock: bool,
    platform: str,
    then_push: bool,
    substitute: bool,
    no_inputs: bool,
    on_line: Callable[[str], None],
) -> tuple[BuildResult, str | None]:
    """Build one spec (and push it with `then_push`): the result and the pinned reference."""
    from imagesmith.inputs.beside_spec import restore_beside_spec
    from imagesmith.model.spec_loading import load_spec

    restore_beside_spec(spec_path, on_line=on_line)
    spec = load_spec(spec_path)
    options: dict[str, Any] = {
        "extra_tags": extra_tags,
        "no_cache": no_cache,
        "relock": relock,
        "platform": platform,
        "on_line": on_line,
        "substitute": substitute,
    }
    if not then_push:
        from imagesmith.pipeline.build import build as run_build

        return run_build(spec, the_engine, **options), None
    from imagesmith.pipeline.publish import build_and_push as publish

    result, record = publish(spec, the_engine, inputs=not no_inputs, **options)
    return result, record.pinned


def build_one(spec_path: Path, *, engine: Engine, as_json: bool, **options: Any) -> None:
    """Build one spec with its progress on screen; then its digest, tags and size."""
    progress = Progress()
    try:
        result, pushed = build_and_push(spec_path, engine, on_line=progress, **options)
    finally:
        progress.stop()
    if as_json:
        from imagesmith.reports import build_report

        print_json(build_report(result, pushed=pushed))
        return
    if not result.loaded:
        typer.echo(
            f"{result.substituted_from} holds this lock's image: nothing built, loaded or "
            f"sent, in {result.seconds:.1f} s"
        )
        typer.echo(f"  digest: {result.digest}")
        typer.echo(f"  tags:   {', '.join(result.tags)}")
        typer.echo(f"  size:   {result.size / 1e6:.1f} MB in the registry (compressed)")
        typer.echo(f"  run it: {result.engine} run --rm -it {pushed}")
        return
    if result.substituted_from is not None:
        typer.echo(
            f"substituted from {result.substituted_from} into {result.engine} "
            f"in {result.seconds:.1f} s (no build step)"
        )
    else:
        typer.echo(f"built {result.tags[0]} with {result.engine} in {result.seconds:.1f} s")
    typer.echo(f"  digest: {result.digest}")
    typer.echo(f"  image:  {result.image_id}")
    typer.echo(f"  tags:   {', '.join(result.tags)}")
    typer.echo(f"  size:   {result.size / 1e6:.1f} MB")
    typer.echo(f"  run it: {result.engine} run --rm -it {result.tags[0]}")


def build_many(
    specs: list[Path],
    *,
    engine: Engine,
    jobs: int,
    fail_fast: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Build each spec (`jobs` at once); one line per spec on stdout as each ends, the
    progress on stderr prefixed with the spec; exit 0 only when every spec succeeded."""
    import threading

    from imagesmith.engine import get_engine
    from imagesmith.pipeline.catalogue import exit_code, run_all

    said = threading.Lock()

    def build_spec(path: Path) -> tuple[BuildResult, str | None]:
        label = as_typed(path)

        def on_line(line: str) -> None:
            with said:
                err(f"[{label}] {redacted(line)}")

        # An engine of its own per spec: docker-py's client is not shared across threads.
        mine = get_engine(engine.name) if jobs > 1 else engine
        return build_and_push(path, mine, on_line=on_line, **options)

    def done(outcome: Outcome[tuple[BuildResult, str | None]]) -> None:
        with said:
            if not outcome.ok and not outcome.skipped:
                print_problems(outcome)
            if not as_json:
                typer.echo(catalogue_line(outcome))

    outcomes = run_all(specs, build_spec, jobs=jobs, fail_fast=fail_fast, on_done=done)
    code = exit_code(outcomes)
    built = sum(o.ok for o in outcomes)
    err(
        f"{len(outcomes)} specs: {built} built, {sum(o.skipped for o in outcomes)} not started, "
        f"{len(outcomes) - built - sum(o.skipped for o in outcomes)} failed"
    )
    if as_json:
        from imagesmith.reports import catalogue_report

        print_json(catalogue_report(outcomes, exit_code=code))
    if code:
        raise typer.Exit(code)


def print_problems(outcome: Outcome[Any]) -> None:
    """A failed spec's problems on stderr, each line starting with the spec."""
    for line in outcome.problems:
        err(shortened(f"[{as_typed(outcome.spec)}] error: {line}"), colour="red")


def catalogue_line(outcome: Outcome[tuple[BuildResult, str | None]]) -> str:
    """The one line a spec gets in a many-spec build's output."""
    spec = as_typed(outcome.spec)
    if outcome.skipped:
        return f"skipped {spec}: {outcome.problems[0]}"
    if outcome.value is None:
        first = outcome.problems[0] if outcome.problems else "failed"
        return shortened(f"failed  {spec}: {first} (exit {outcome.exit_code})")
    result, pushed = outcome.value
    how = f"from {result.substituted_from}" if result.substituted_from else f"with {result.engine}"
    verb = "substituted" if result.substituted_from else "built"
    line = (
        f"ok      {spec}: {verb} {result.tags[0]} {how} in {result.seconds:.1f} s, {result.digest}"
    )
    return line + (f", pushed {pushed}" if pushed else "")
