"""Start-up time of the `imagesmith` command: what a user waits for on commands that do little.

Run from the repository root with imagesmith's own Python:

    .venv/bin/python bench/startup_time.py                 # 20 runs each, writes bench/startup.md
    .venv/bin/python bench/startup_time.py --runs 50 --spec path/to/locked/env.toml
    .venv/bin/python bench/startup_time.py --baseline /other/venv/bin/imagesmith  # before/after
    .venv/bin/python bench/startup_time.py --build-spec built/env.toml  # + no-op build

Each command runs RUNS times as a fresh process (after one unmeasured warm-up run), and so
do two references, with the same Python (its site-packages and .pth files included):
`python3 -c pass` (the interpreter alone) and `python3 -c 'import typer'` (the CLI
framework alone). Reported: the median and range of the wall-clock time, and the median
CPU time (user + sys of the child), which moves less on a loaded machine.

The children keep their .pyc files in a temporary folder (PYTHONPYCACHEPREFIX), as an
installed package reads the ones pip wrote; no source tree gets a __pycache__. Without
--spec, the `lab-analysis` recipe is copied into a temporary folder and locked with the
test suite's offline lock maker (plausible pins; no network, no engine). --baseline runs
another installation's `imagesmith` on the same spec, interleaved run for run with this
one, so both see the same load. --build-spec adds `build SPEC` on a spec built already
(the no-op build: it needs the engine that built it, and --engine names it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {"--version": 0.1, "validate": 0.1, "render": 0.1, "build (no-op)": 0.3}


WHERE_THE_TIME_GOES = """\
## Where the time goes

Measured in-process on 0.7.0 after the start-up work of issue 18 (one `render` of the
lab-analysis spec, CPU time, 2 cores shared with other work):

- the interpreter, 11 ms; an editable install (`pip install -e`, as `.venv` is) adds its
  import finder to every start, 10-15 ms more than a regular install;
- `import typer` (with click), 35-40 ms: the floor of any typer command;
- `imagesmith.model.spec` and `imagesmith.model.lock`, 15-17 ms, nearly all of it Python creating
  their 18 dataclasses; `hashlib` (OpenSSL) 2.5 ms, `tomllib` 2 ms;
- building the one command named (typer reads its signature), 2 ms; before, all 18
  commands were built for every run, 15-20 ms;
- since issue 14 the command line is a package, `imagesmith/cli/`, and a run imports only
  the module of the command it names (`--version`, none). Importing `imagesmith.cli` and
  building the command, CPU time in-process after `import typer`, median of 25 runs each,
  main (94071f3) → the package (ff27b8f), interleaved, at load average 10 on 2 cores (so
  about twice the quiet figures): `--version` 19.8 → 5.0 ms, `validate` 21.9 → 15.4 ms,
  `render` 23.1 → 19.0 ms, `build` 31.7 → 28.5 ms;
- reading env.toml and env.lock (parsed and hash-checked once per command; before,
  twice), 5 ms; rendering, with the lock in a label, 4.5 ms; writing the file, 1-2 ms.

`lock --check` no longer imports the resolver and the engines' clients. The no-op `build`
used to spend its time in the engine's client: importing docker-py (with requests) took
about 50 ms on a quiet machine. Since 2026-12-02 (after 0.7.0's stop 23) the Docker engine
imports docker-py only for the first call that needs it: the ping and the one image
inspect an unchanged build makes go over the local socket with the standard library
(`engine/docker_socket.py`), and picking Docker no longer imports the registry client to
find the Docker config. Measured against 0.7.0 as landed (stop 23), interleaved, on a
machine then running 2x slower (`python3 -c 'import typer'` 0.155 s): the no-op build
0.629 s → 0.450 s (CPU 0.607 s → 0.438 s).

Then (stop 25) the socket is read in HTTP/1.0 with a few lines of its own instead of
`http.client` (which imports `email` and `ssl`: ~20 ms), and what an unchanged build
does not use is imported only when used: the catalogue of many specs (with
`concurrent.futures`), the resolver, the engines' overlay store reader, `tempfile` (with
`random`) and `ctypes`. The run above measures that against stop 24 (9bd9024), on a quiet
machine (`import typer` 0.068 s): the no-op build 0.193 s → 0.155 s. What is left of the
no-op is the interpreter and typer (~0.07 s), reading and checking env.toml and env.lock
with their dataclasses (~0.03 s), one inspect call, and the report. `validate` (0.102 s)
and `render` (0.121 s) stayed just above 0.1 s for the same reason: typer alone took
0.068 s of it, and creating the spec's and the lock's 18 frozen dataclasses ~1 ms each.

Since stop 27, `--version`, `validate` and `render` in their plain forms (a spec, `--json`,
`-o FILE`) are answered by `imagesmith/cli/quick.py`, which imports neither typer nor
click; any other command line (`--help`, an unknown option...) still goes to typer.
`imagesmith/cli/output.py` writes to the standard streams itself for the same reason. What
is left of `validate` and `render` is the interpreter, the standard library modules the
spec needs (`typing`, `pathlib`, `re`, `dataclasses` with `inspect`, `json`, `tomllib`,
`hashlib`), and the dataclasses (~0.02 s). The table's `baseline` is stop 26.
"""


def timed(argv: Sequence[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall-clock and CPU (user + sys) seconds of one run of `argv`, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr.decode(errors='replace')}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def locked_example(folder: Path) -> Path:
    """The lab-analysis recipe in `folder`, with a lock made offline: its env.toml."""
    sys.path.insert(0, str(HERE.parent))
    from imagesmith.model.lock import write_lock
    from imagesmith.recipebook import copy_recipe
    from tests.fixtures.make_lock import make_lock

    copy_recipe("lab-analysis", folder, force=False)
    spec_path = folder / "env.toml"
    write_lock(make_lock(spec_path), folder / "env.lock")
    return spec_path


def commands(spec: Path, *, built: Path | None, engine: str) -> dict[str, list[str]]:
    """Each figure's arguments after `imagesmith`."""
    names = {
        "--version": ["--version"],
        "--help": ["--help"],
        "validate": ["validate", spec.name],
        "render": ["render", spec.name, "-o", "Containerfile.startup"],
        "lock --check": ["lock", "--check", spec.name],
    }
    if built is not None:
        names["build (no-op)"] = ["build", str(built), "--engine", engine]
    return names


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls = sorted(w for w, _ in samples)
    return {
        "median": statistics.median(walls),
        # The fastest quarter's edge: what the command takes when the machine lets it run.
        "p25": statistics.quantiles(walls, n=4)[0] if len(walls) > 1 else walls[0],
        "min": walls[0],
        "max": walls[-1],
        "cpu": statistics.median(c for _, c in samples),
    }


def measure(
    figures: dict[str, list[list[str]]], runs: int, cwd: Path, env: dict[str, str]
) -> dict[str, list[dict[str, float]]]:
    """Every figure's variants (this install, baseline), interleaved run for run."""
    samples: dict[str, list[list[tuple[float, float]]]] = {
        name: [[] for _ in variants] for name, variants in figures.items()
    }
    for variants in figures.values():
        for argv in variants:
            timed(argv, cwd, env)  # warm-up: page cache, .pyc files, cache notes (model/memo.py)
    for _ in range(runs):
        for name, variants in figures.items():
            for index, argv in enumerate(variants):
                samples[name][index].append(timed(argv, cwd, env))
    return {name: [summary(s) for s in per] for name, per in samples.items()}


def report(
    results: dict[str, list[dict[str, float]]],
    *,
    argv: Sequence[str],
    runs: int,
    spec_note: str,
    imagesmith: str,
    baseline: str | None,
    note: str | None,
    took: float,
) -> str:
    python = results["python3 -c pass"][0]["median"]
    typer = results["python3 -c 'import typer'"][0]["median"]
    head = [
        "| command | run by | wall, median | wall, 1st quartile | wall, range | CPU, median "
        "| × `python3 -c pass` | × `import typer` |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name, variants in results.items():
        label = f"`{name}`" if name.startswith("python3") else f"`imagesmith {name}`"
        target = TARGETS.get(name)
        if target is not None:
            label += f" (target ≤ {target} s)"
        for index, figure in enumerate(variants):
            who = "reference" if name.startswith("python3") else ("new", "baseline")[index]
            cells = [
                label if index == 0 else "",
                who,
                f"{figure['median']:.3f} s",
                f"{figure['p25']:.3f} s",
                f"{figure['min']:.3f}–{figure['max']:.3f} s",
                f"{figure['cpu']:.3f} s",
                f"{figure['median'] / python:.1f}",
                f"{figure['median'] / typer:.2f}",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    load = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# imagesmith start-up time",
        "",
        "Generated by `bench/startup_time.py` (its docstring says what it measures). Run it",
        "from the repository root:",
        "",
        "```sh",
        ".venv/bin/python bench/startup_time.py   # 20 runs per command, ~1 min",
        "# two installations side by side (before/after), and the no-op build of a built spec:",
        ".venv/bin/python bench/startup_time.py --imagesmith NEW/bin/imagesmith \\",
        "    --baseline OLD/bin/imagesmith --build-spec BUILT/env.toml --engine docker",
        "```",
        "",
        "## Latest run",
        "",
        f"- date: {now}; command: `{' '.join(['bench/startup_time.py', *argv])}`; "
        f"took {took:.0f} s",
        f"- runs per command: {runs} (after one warm-up run), one process each",
        f"- machine: {os.cpu_count()} cores, load average {load[0]:.2f} at the end; "
        f"Python {platform.python_version()}",
        f"- spec: {spec_note}",
        f"- new: `{imagesmith}`",
    ]
    if baseline:
        lines.append(f"- baseline: `{baseline}`, interleaved with `new` run for run")
    if note:
        lines.append(f"- {note}")
    lines += ["", *head, *rows, "", WHERE_THE_TIME_GOES]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--spec", type=Path, help="a locked env.toml (default: a recipe)")
    parser.add_argument(
        "--imagesmith",
        default=str(Path(sys.executable).parent / "imagesmith"),
        help="the command to time (default: the one beside this Python)",
    )
    parser.add_argument("--baseline", help="another imagesmith command, timed alongside")
    parser.add_argument("--build-spec", type=Path, help="also a no-op build of this built spec")
    parser.add_argument("--engine", default="docker", help="the engine of --build-spec")
    parser.add_argument("--output", type=Path, default=HERE / "startup.md")
    parser.add_argument("--note", help="one line about this run for the report")
    args = parser.parse_args()

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagesmith-startup-") as tmp:
        if args.spec is None:
            spec = locked_example(Path(tmp))
            spec_note = "the `lab-analysis` recipe, locked offline (tests/fixtures/make_lock.py)"
        else:
            spec = args.spec.resolve()
            spec_note = f"`{args.spec}`"
        if args.build_spec:
            spec_note += f"; the no-op build: `{args.build_spec}` on {args.engine}"
        # The references run with the Python of the imagesmith timed: the same site-packages.
        beside = Path(args.imagesmith).with_name("python3")
        python = str(beside) if beside.exists() else sys.executable
        figures: dict[str, list[list[str]]] = {
            "python3 -c pass": [[python, "-c", "pass"]],
            "python3 -c 'import typer'": [[python, "-c", "import typer"]],
        }
        built = args.build_spec.resolve() if args.build_spec else None
        for name, rest in commands(spec, built=built, engine=args.engine).items():
            figures[name] = [[args.imagesmith, *rest]]
            if args.baseline:
                figures[name].append([args.baseline, *rest])
        # Compiled modules, as an installed package has them (pip writes its .pyc files), in
        # a folder of this run's own: no source tree gets a __pycache__ from the benchmark.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        results = measure(figures, args.runs, spec.parent, env)
        (spec.parent / "Containerfile.startup").unlink(missing_ok=True)
    text = report(
        results,
        argv=[arg for arg in sys.argv[1:] if arg != args.note],  # the note has its own line
        runs=args.runs,
        spec_note=spec_note,
        imagesmith=args.imagesmith,
        baseline=args.baseline,
        note=args.note,
        took=time.monotonic() - started,
    )
    args.output.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
