"""Many specs in one `imagesmith build`: which specs a command line names, and running them.

A folder stands for `FOLDER/env.toml` and `FOLDER/*/env.toml` (one level down), sorted.
Each spec builds on its own (`--jobs N` at once, threads sharing the engine and the cache);
one that fails does not stop the others unless `fail_fast`, which then leaves the specs
not yet started unbuilt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from imagesmith.errors import ImagesmithError, InputError
from imagesmith.userpath import as_typed

SPEC_NAME = "env.toml"
T = TypeVar("T")


def spec_paths(arguments: Sequence[Path]) -> list[Path]:
    """The specs `arguments` name, in order, each once: a file as it is, a folder as its
    env.toml and its subfolders' env.toml files. A folder with none is an `InputError`."""
    found: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            inside = [argument / SPEC_NAME] if (argument / SPEC_NAME).is_file() else []
            inside += sorted(p for p in argument.glob(f"*/{SPEC_NAME}") if p.is_file())
            if not inside:
                raise InputError(
                    f"{as_typed(argument)}: no specs in this folder (looked for "
                    f"{SPEC_NAME} in it and in each folder directly inside it)"
                )
            found += inside
        else:
            found.append(argument)  # a missing file is that spec's own failure
    seen: set[Path] = set()
    unique = []
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What became of one spec: its value, or the problem lines and exit code."""

    spec: Path
    value: T | None = None
    exit_code: int = 0
    problems: tuple[str, ...] = ()
    skipped: bool = False
    """Not started: an earlier spec failed and `fail_fast` was given."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


SKIPPED = "not built: another spec failed first (--fail-fast)"


def run_all(
    specs: Sequence[Path],
    build_one: Callable[[Path], T],
    *,
    jobs: int = 1,
    fail_fast: bool = False,
    on_done: Callable[[Outcome[T]], None] = lambda _: None,
) -> list[Outcome[T]]:
    """`build_one` for each spec, `jobs` at a time; the outcomes in the order of `specs`.

    An `ImagesmithError` is that spec's failure; anything else is a bug and propagates
    once the specs already running have finished. `on_done` hears each outcome as it comes
    (those that end together in the order of `specs`).
    """
    if jobs < 1:
        raise InputError(f"--jobs {jobs}: give 1 or more")
    outcomes: dict[int, Outcome[T]] = {}
    stop = threading.Event()

    def one(index: int) -> Outcome[T]:
        spec = specs[index]
        if stop.is_set():
            return Outcome(spec, exit_code=1, problems=(SKIPPED,), skipped=True)
        try:
            outcome: Outcome[T] = Outcome(spec, value=build_one(spec))
        except ImagesmithError as exc:
            outcome = Outcome(spec, exit_code=exc.exit_code, problems=tuple(exc.lines()))
            if fail_fast:
                stop.set()
        return outcome

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="spec") as pool:
        futures = [pool.submit(one, index) for index in range(len(specs))]
        running: dict[Future[Outcome[T]], int] = {f: i for i, f in enumerate(futures)}
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for index in sorted(running.pop(future) for future in done):
                    outcomes[index] = futures[index].result()
                    on_done(outcomes[index])
        except BaseException:  # interrupted, or a bug: start nothing more
            stop.set()
            for future in futures:
                future.cancel()
            raise
    return [outcomes[index] for index in range(len(specs))]


def exit_code(outcomes: Sequence[Outcome[T]]) -> int:
    """0 when every spec succeeded; 2 when every failure was bad input; else 1."""
    failed = [o for o in outcomes if not o.ok and not o.skipped]
    if not failed:
        return 0
    if any(o.exit_code == 130 for o in failed):
        return 130
    return 2 if all(o.exit_code == 2 for o in failed) else 1
