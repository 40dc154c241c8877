"""imagesmith benchmark: lock, build, push and scaling figures against references from the same run.

    .venv/bin/python bench/run.py [--quick] [--engines docker,podman] [--runs N]

Writes bench/results.json, bench/README.md and bench/build-times.png. Every figure is the
median of whole-process wall-clock runs (subprocesses), next to its reference measured in
the same run. Every image it makes is named imagesmith-bench* and removed at the end, and
every docker-registry process it starts on 127.0.0.1 is stopped.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from subprocess import CalledProcessError
from typing import Any, TypeVar

import tomllib
from engines import (
    ENGINES,
    Ledger,
    build_command,
    engine_version,
    ensure_engine,
    image_size,
    steps_run,
)
from localregistry import LocalRegistry, start_registry, stop_stale_registries
from proc import BenchError, Timed, bench_env, output, timed
from report import render_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VENV_BIN = REPO / ".venv" / "bin"
IMAGESMITH = VENV_BIN / "imagesmith"
PYTHON = VENV_BIN / "python"
PLOT_VENV = HERE / ".venv-plot"
PIPTOOLS_VENV = HERE / ".venv-piptools"
BASE = "imagesmith/debian:bookworm"
EXAMPLE = REPO / "recipes" / "lab-analysis" / "env.toml"
PIN_BEFORE, PIN_AFTER = '"pyyaml"', '"pyyaml==6.0.1"'
PYTHON_REQUIREMENTS = ("numpy>=2", "requests", "pyyaml")
SCALING_SIZES = (5, 20, 80)
FIGURES = ("lock", "build", "push", "scaling")
UNREACHABLE = {  # every public source unreachable: a proxy that answers nothing
    **{
        key: "http://127.0.0.1:9"
        for key in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    },
    "no_proxy": "127.0.0.1,localhost",
    "NO_PROXY": "127.0.0.1,localhost",
    "PIP_RETRIES": "0",
}
LEDGERS = HERE / ".work"
WARM_RUNS = 5
_STEP_LINE = re.compile(r"^\s*(?:\[\d+/\d+\]\s*)?(?:Step|STEP) \d+/\d+")
#: The first step of an engine build (podman numbers a multi-stage file's stages: "[1/2]").
_FIRST_STEP = re.compile(r"^\s*(?:\[1/\d+\]\s*)?(?:Step|STEP) 1/\d+")
_TRANSIENT = ("name resolution", "timed out", "Connection reset", "Connection refused")
_LOCK_COUNTS = re.compile(r"\((\d+) apt packages, (\d+) Python distributions")

T = TypeVar("T")


class DigestMismatch(BenchError):
    """The rebuild from the input archive gave another digest: never measured again."""


def log(message: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", flush=True)


@dataclass
class Bench:
    runs: int
    quick: bool
    engines: list[str]
    work: Path
    scaling_runs: int = 1
    merge: bool = False
    rid: str = field(default_factory=lambda: secrets.token_hex(3))
    ledger: Ledger = field(default_factory=Ledger)
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def uv_cache(self) -> Path:
        """A uv cache shared by the build figures, warmed by their first (untimed) lock."""
        return self.work / "uv-cache"

    def fresh(self, name: str) -> Path:
        """An empty folder under the work dir (cleared if it was there)."""
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def save(self, *, keep_elapsed: bool = False) -> None:
        """Write results.json, README.md and the plot with what is measured so far."""
        if not keep_elapsed:
            elapsed = time.perf_counter() - self.started
            if self.merge:
                self.results["merged"][-1]["elapsed_seconds"] = elapsed
            else:
                self.results["elapsed_seconds"] = elapsed
        results = HERE / "results.json"
        results.write_text(json.dumps(self.results, indent=1, sort_keys=True) + "\n")
        (HERE / "README.md").write_text(render_readme(self.results), encoding="utf-8")
        plot = PLOT_VENV / "bin" / "python"
        if plot.exists():
            done = subprocess.run(
                [str(plot), str(HERE / "plot.py"), str(results), str(HERE / "build-times.png")],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                log(f"plot failed: {done.stderr.strip()[-400:]}")


# -- set-up ------------------------------------------------------------------------------


def ensure_venv(folder: Path, packages: Sequence[str]) -> None:
    """A bench-only virtual environment (never imagesmith's .venv) with `packages`."""
    marker = folder / ".bench-ready"
    if marker.exists():
        return
    log(f"creating {folder.name} with {' '.join(packages)}")
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(["python3", "-m", "venv", str(folder)], check=True)
    subprocess.run(
        [str(folder / "bin" / "pip"), "install", "--quiet", *packages],
        check=True,
        env=bench_env(),
    )
    marker.touch()


def ensure_base(engine: str) -> None:
    if output([engine, "image", "inspect", "--format", "{{.Id}}", BASE]):
        return
    log(f"{engine}: no {BASE}; making it with `imagesmith base` (kept: it is shared)")
    timed([IMAGESMITH, "base", "--engine", engine], env=bench_env())


def machine_facts() -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text()
    kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    cpu = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
    os_release = Path("/etc/os-release").read_text()
    pretty = re.search(r'PRETTY_NAME="([^"]+)"', os_release)
    uv = output(
        [PYTHON, "-c", "from imagesmith.locking.python_pins import uv_binary; print(uv_binary())"]
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu.group(1).strip() if cpu else "?",
        "ram": f"{kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": pretty.group(1) if pretty else "?",
        "python": platform.python_version(),
        "imagesmith": output([IMAGESMITH, "--version"]) or "?",
        "docker": engine_version("docker"),
        "podman": engine_version("podman"),
        "uv": output([uv or "uv", "--version"]) or "?",
        "pip-compile": output([PIPTOOLS_VENV / "bin" / "pip-compile", "--version"]).split()[-1]
        or "?",
    }


# -- specs -------------------------------------------------------------------------------


def example_spec(name: str) -> str:
    """The lab-analysis recipe with the local base image and a benchmark-only name."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text, names = re.subn(r'(?m)^name = "[^"]*"', f'name = "{name}"', text)
    text, bases = re.subn(r'(?m)^image = "[^"]*"', f'image = "{BASE}"', text)
    if names != 1 or bases != 1 or PIN_BEFORE not in text:
        raise BenchError(f"{EXAMPLE} no longer has the lines the benchmark edits")
    return text


def example_files(folder: Path) -> None:
    """The files beside the recipe's env.toml that its spec names (`[image] copy`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in EXAMPLE.parent.iterdir():
        if path.is_file() and path.name not in ("env.toml", "env.lock", "README.md"):
            shutil.copy(path, folder / path.name)


def with_repository(text: str, repository: str) -> str:
    """The spec with its [registry] repository replaced."""
    text, count = re.subn(r'(?m)^repository = "[^"]*"', f'repository = "{repository}"', text)
    if count != 1:
        raise BenchError(f"{EXAMPLE} no longer has one `repository = ` line")
    return text


def scaling_spec(name: str, apt: Sequence[str], python: Sequence[str]) -> str:
    return "\n".join(
        [
            f'name = "{name}"',
            'version = "1.0.0"',
            "",
            "[base]",
            f'image = "{BASE}"',
            "",
            "[apt]",
            f"packages = {json.dumps(list(apt))}",
            "",
            "[python]",
            f"requirements = {json.dumps(list(python))}",
            "",
            "[image]",
            'workdir = "/work"',
            'user = "researcher"',
            'cmd = ["python3"]',
            "",
        ]
    )


def package_list(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


# -- measurements ------------------------------------------------------------------------


def with_engine(engine: str, measure: Callable[[], T]) -> T:
    """Run a measurement; if Docker's daemon went away meanwhile, restart it and retry once."""
    ensure_engine(engine)
    try:
        return measure()
    except BenchError:
        if engine != "docker" or output(["docker", "info", "--format", "{{.ServerVersion}}"]):
            raise
        log("the Docker daemon stopped during the measurement; restarting it and retrying")
        ensure_engine(engine)
        return measure()


def imagesmith_build(
    bench: Bench,
    engine: str,
    spec_dir: Path,
    env: dict[str, str],
    *flags: str,
    reset: Callable[[], None] | None = None,
    retry: bool = True,
) -> dict[str, Any]:
    """One whole `imagesmith build` process, split into phases by its progress lines.

    A build that fails on the network (a DNS hiccup on the shared machine) is measured
    again once, after `reset` puts the caches back as they were; the retry is noted in
    results.json and the README."""

    def measure() -> Timed:
        return timed(
            [IMAGESMITH, "build", "env.toml", "--engine", engine, "--json", *flags],
            cwd=spec_dir,
            env=env,
        )

    try:
        run = with_engine(engine, measure)
    except BenchError as exc:
        if not retry or not any(word in str(exc) for word in _TRANSIENT):
            raise
        first_problem = str(exc).splitlines()[-1][:300]
        log(f"{engine}: build failed on the network, measuring it again: {first_problem}")
        bench.results.setdefault("retries", []).append(
            f"{engine} build {' '.join(flags)}: {first_problem}"
        )
        if reset is not None:
            reset()
        run = with_engine(engine, measure)
    bench.ledger.add_build_log(engine, run.lines)
    result = json.loads(run.stdout.strip().splitlines()[-1])
    bench.ledger.add_tags(engine, result["tags"])
    bench.ledger.add_images(engine, [result["image_id"]])
    steps = [(at, line) for at, line in run.events if _STEP_LINE.match(line)]
    first_step = steps[0][0] if steps else None
    canonical_at = run.first("canonical:")
    build_start = first_step if first_step is not None else run.seconds
    build_end = canonical_at if canonical_at is not None else run.seconds
    # The system stage built apart: a second engine build starts with its own step 1.
    later = next((at for at, line in steps[1:] if _FIRST_STEP.match(line)), None)
    return {
        "seconds": run.seconds,
        "prepare": build_start,
        "engine_build": max(0.0, build_end - build_start),
        "system_stage": max(0.0, later - build_start) if later is not None else None,
        "canonical": run.seconds - canonical_at if canonical_at is not None else 0.0,
        "relocked": run.first("lock:") is not None,
        "steps_run": steps_run(run.lines),
        "size": image_size(engine, result["image_id"]),
        "image_id": result["image_id"],
        "digest": result["digest"],
        "tags": result["tags"],
    }


def figure_lock(bench: Bench) -> None:
    engine = "docker" if "docker" in bench.engines else bench.engines[0]
    folder = bench.fresh("lock")
    example_files(folder)
    (folder / "env.toml").write_text(example_spec(f"imagesmith-bench-{bench.rid}-lock"))
    lock_cmd: list[str | Path] = [IMAGESMITH, "lock", "env.toml", "--engine", engine]
    figure: dict[str, Any] = {"engine": engine, "cold": [], "warm": [], "startup": []}
    bench.results["lock"] = figure
    for index in range(bench.runs):
        (folder / "env.lock").unlink(missing_ok=True)
        cache = bench.fresh(f"lock-cache-{index}")
        env = bench_env(XDG_CACHE_HOME=str(cache), UV_CACHE_DIR=str(cache / "uv"))
        run = with_engine(engine, functools.partial(timed, lock_cmd, cwd=folder, env=env))
        figure["cold"].append(run.seconds)
        counts = _LOCK_COUNTS.search(run.stdout)
        if counts:
            figure["closure"] = {"apt": int(counts.group(1)), "python": int(counts.group(2))}
        log(f"lock cold {index + 1}/{bench.runs}: {run.seconds:.2f} s")
    env = bench_env(XDG_CACHE_HOME=str(bench.work / "lock-cache-0"))
    for _ in range(max(WARM_RUNS, bench.runs)):
        figure["warm"].append(timed(lock_cmd, cwd=folder, env=env).seconds)
        figure["startup"].append(timed([IMAGESMITH, "--version"], env=env).seconds)
    log(f"lock warm: {sorted(figure['warm'])}")
    figure["import_times"] = import_profile(folder, env, lock_cmd)
    figure_python_resolution(bench, figure)


def import_profile(
    folder: Path, env: dict[str, str], lock_cmd: list[str | Path]
) -> list[tuple[str, float]]:
    """The slowest top-level imports of a warm `imagesmith lock` (python -X importtime)."""
    run = timed([PYTHON, "-X", "importtime", *lock_cmd], cwd=folder, env=env)
    found: list[tuple[str, float]] = []
    for line in run.lines:
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip())) // 2
        if depth <= 1:
            found.append((name.strip(), int(parts[1]) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:8]


def figure_python_resolution(bench: Bench, figure: dict[str, Any]) -> None:
    """imagesmith's exact uv call against pip-compile, same requirements, cold and warm."""
    folder = bench.fresh("python-resolution")
    requirements = folder / "requirements.in"
    requirements.write_text("\n".join(PYTHON_REQUIREMENTS) + "\n")
    uv = output(
        [PYTHON, "-c", "from imagesmith.locking.python_pins import uv_binary; print(uv_binary())"]
    )
    for key in ("uv_cold", "uv_warm", "pip_compile_cold", "pip_compile_warm"):
        figure[key] = []
    pins: dict[str, list[str]] = {}
    for index in range(bench.runs):
        cache = bench.fresh(f"python-resolution/cache-{index}")
        uv_out, pc_out = folder / "uv.txt", folder / "pip-compile.txt"
        uv_cmd: list[str | Path] = [
            uv, "pip", "compile", requirements, "-o", uv_out,
            "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_36",
            "--generate-hashes", "--no-header", "--no-annotate", "--quiet",
            "--no-config", "--emit-index-url",
        ]  # fmt: skip
        pc_cmd: list[str | Path] = [
            PIPTOOLS_VENV / "bin" / "pip-compile", "--generate-hashes", "--quiet",
            "--cache-dir", cache / "pip-tools", "-o", pc_out, requirements,
        ]  # fmt: skip
        uv_env = bench_env(UV_CACHE_DIR=str(cache / "uv"))
        pc_env = bench_env(PIP_CACHE_DIR=str(cache / "pip"), XDG_CACHE_HOME=str(cache / "xdg"))
        for phase in ("cold", "warm"):
            uv_out.unlink(missing_ok=True)
            pc_out.unlink(missing_ok=True)
            figure[f"uv_{phase}"].append(timed(uv_cmd, cwd=folder, env=uv_env).seconds)
            figure[f"pip_compile_{phase}"].append(timed(pc_cmd, cwd=folder, env=pc_env).seconds)
        pins = {"uv": _pins(uv_out), "pip-compile": _pins(pc_out)}
        log(
            f"python resolution {index + 1}/{bench.runs}: uv {figure['uv_cold'][-1]:.2f} s, "
            f"pip-compile {figure['pip_compile_cold'][-1]:.2f} s (cold)"
        )
    figure["pins"] = pins


def _pins(path: Path) -> list[str]:
    return sorted(
        match.group(0).lower()
        for match in re.finditer(r"(?m)^[A-Za-z0-9][A-Za-z0-9._-]*==\S+", path.read_text())
    )


def handwritten_fetch(context: Path, pip_cache: Path) -> Timed:
    """The hand-written recipe's host step: wheels into the context (pip cannot in the build)."""
    shutil.rmtree(context / "wheels", ignore_errors=True)
    command: list[str | Path] = [
        PYTHON, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
        "-r", context / "requirements.txt", "-d", context / "wheels",
    ]  # fmt: skip
    return timed(command, env=bench_env(PIP_CACHE_DIR=str(pip_cache)))


def handwritten_build(
    bench: Bench, engine: str, context: Path, tag: str, *, no_cache: bool, note_steps: bool = True
) -> Timed:
    """One engine build of a hand-written Containerfile (`note_steps`: keep the steps that
    ran, for the two-stage reference's no-op figures)."""

    def measure() -> Timed:
        return timed(
            build_command(engine, context, tag, no_cache=no_cache), env=bench_env(), merge=True
        )

    run = with_engine(engine, measure)
    bench.ledger.add_build_log(engine, run.lines)
    if note_steps:
        bench.results.setdefault("handwritten_steps_run", {}).setdefault(engine, []).append(
            steps_run(run.lines)
        )
    return run


def canonical_split(
    bench: Bench, engine: str, cache: Path, lock: Path, work: Path
) -> dict[str, float] | None:
    """The canonical step's parts on the image the cold build made, each on its own."""
    memos = sorted((cache / "imagesmith" / "canonical" / engine).glob("*.json"))
    if not memos:
        return None
    built = "sha256:" + memos[0].stem.rsplit("-", 1)[0]
    run = timed([PYTHON, HERE / "canon_time.py", engine, built, lock, work])
    split: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    bench.ledger.add_images(engine, [split.pop("image_id")])
    shutil.rmtree(work, ignore_errors=True)
    return {key: float(value) for key, value in split.items() if value is not None}


def copy_debs(source: Path, target: Path) -> None:
    """An imagesmith cache (XDG_CACHE_HOME) `target` holding only the .debs of `source`."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source / "imagesmith" / "debs", target / "imagesmith" / "debs")


def measure_run(
    bench: Bench,
    name: str,
    index: int,
    figure: dict[str, Any],
    engine: str,
    one_run: Callable[[int], None],
) -> None:
    """Run `one_run(index)`; if it fails (other people's builds and clean-ups share the
    engines: an image can vanish under a build), throw away what it recorded and measure
    the whole run again, once. The retry is noted in results.json and the README."""
    saved = copy.deepcopy(figure)
    steps = bench.results.setdefault("handwritten_steps_run", {}).setdefault(engine, [])
    steps_saved = list(steps)
    try:
        one_run(index)
    except BenchError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        problem = lines[0][:160] + (f" ... {lines[-1][:240]}" if len(lines) > 1 else "")
        log(f"{name} run {index + 1} failed, measuring the run again: {problem}")
        bench.results.setdefault("retries", []).append(
            f"{name} run {index + 1} failed and was measured again from its start: {problem}"
        )
        figure.clear()
        figure.update(saved)
        bench.results["handwritten_steps_run"][engine] = steps_saved
        one_run(index)


def figure_build(bench: Bench, engine: str) -> None:
    ensure_engine(engine)
    ensure_base(engine)
    spec_dir = bench.fresh(f"build-{engine}/spec")
    context = bench.fresh(f"build-{engine}/handwritten")
    single = bench.fresh(f"build-{engine}/handwritten-single")
    tag = f"imagesmith-bench/hand-{bench.rid}:{engine}"
    single_tag = f"imagesmith-bench/hand1-{bench.rid}:{engine}"
    bench.ledger.add_tags(engine, [tag, single_tag])
    spec_text = example_spec(f"imagesmith-bench-{bench.rid}-{engine}")
    example_files(spec_dir)
    (spec_dir / "env.toml").write_text(spec_text)
    init_env = bench_env(
        XDG_CACHE_HOME=str(bench.work / f"build-{engine}/init-cache"),
        UV_CACHE_DIR=str(bench.uv_cache),
    )
    lock_cmd: list[str | Path] = [IMAGESMITH, "lock", "env.toml", "--engine", engine]
    with_engine(engine, lambda: timed(lock_cmd, cwd=spec_dir, env=init_env))
    lock_text = (spec_dir / "env.lock").read_text()
    shutil.copy(HERE / "handwritten" / "Containerfile", context / "Containerfile")
    for name in ("Containerfile", "requirements.txt"):
        shutil.copy(HERE / "handwritten-single" / name, single / name)
    requirements = (HERE / "handwritten" / "requirements.txt").read_text()
    keys = ("cold", "noop", "noop_again", "pin", "cold_debs_cached")
    figure: dict[str, Any] = {
        "imagesmith": {key: [] for key in keys},
        "handwritten": {key: [] for key in keys},
        "handwritten_fetch": {"cold": [], "pin": []},
        "handwritten_engine": {"cold": [], "pin": []},
        "size": {"imagesmith": [], "handwritten": [], "handwritten_single": []},
        "handwritten_single": {"cold": [], "fetch": [], "engine": []},
    }
    bench.results.setdefault("build", {})[engine] = figure
    bench.results.setdefault("handwritten_steps_run", {})[engine] = []  # a --merge starts anew

    def one_run(index: int) -> None:
        # Each run starts from an engine that holds none of the earlier runs' images. Else
        # podman answers a later run's hand-written pin change from the first run's build
        # of the same pin (its cache matches look-alike parents): in 2026-12-03's figure,
        # runs 2 and 3 of the hand-written pin change ran no step at all.
        left = bench.ledger.clean(engine)
        if left:
            raise BenchError(f"{engine}: cannot remove the earlier runs' images: {left}")
        (spec_dir / "env.toml").write_text(spec_text)
        (spec_dir / "env.lock").write_text(lock_text)
        (context / "requirements.txt").write_text(requirements)
        run_dir = bench.fresh(f"build-{engine}/run-{index}")
        env = bench_env(XDG_CACHE_HOME=str(run_dir / "xdg"), UV_CACHE_DIR=str(bench.uv_cache))
        label = f"{engine} run {index + 1}/{bench.runs}"

        cold = imagesmith_build(
            bench,
            engine,
            spec_dir,
            env,
            "--no-cache",
            reset=functools.partial(shutil.rmtree, run_dir / "xdg", ignore_errors=True),
        )
        figure["imagesmith"]["cold"].append(cold)
        figure["size"]["imagesmith"].append(cold["size"])
        log(f"{label}: imagesmith cold {cold['seconds']:.1f} s (canonical {cold['canonical']:.1f})")
        if index == 0:
            split = canonical_split(
                bench, engine, run_dir / "xdg", spec_dir / "env.lock", run_dir / "canon"
            )
            figure["canonical_split"] = split
            log(f"{label}: canonical split {split}")

        fetch = handwritten_fetch(context, run_dir / "pip")
        built = handwritten_build(bench, engine, context, tag, no_cache=True)
        figure["handwritten"]["cold"].append(fetch.seconds + built.seconds)
        figure["handwritten_fetch"]["cold"].append(fetch.seconds)
        figure["handwritten_engine"]["cold"].append(built.seconds)
        figure["size"]["handwritten"].append(image_size(engine, tag))
        log(f"{label}: hand-written cold {fetch.seconds:.1f} + {built.seconds:.1f} s")

        fetch = handwritten_fetch(single, run_dir / "pip-single")
        built = handwritten_build(
            bench, engine, single, single_tag, no_cache=True, note_steps=False
        )
        figure["handwritten_single"]["cold"].append(fetch.seconds + built.seconds)
        figure["handwritten_single"]["fetch"].append(fetch.seconds)
        figure["handwritten_single"]["engine"].append(built.seconds)
        figure["size"]["handwritten_single"].append(image_size(engine, single_tag))
        log(f"{label}: single-stage hand-written cold {fetch.seconds:.1f} + {built.seconds:.1f} s")

        noop = imagesmith_build(bench, engine, spec_dir, env)
        figure["imagesmith"]["noop"].append(noop)
        hand_noop = handwritten_build(bench, engine, context, tag, no_cache=False)
        figure["handwritten"]["noop"].append(hand_noop.seconds)
        log(f"{label}: no-op imagesmith {noop['seconds']:.2f} s, hand {hand_noop.seconds:.2f} s")
        again = imagesmith_build(bench, engine, spec_dir, env)
        figure["imagesmith"]["noop_again"].append(again)
        hand_again = handwritten_build(bench, engine, context, tag, no_cache=False)
        figure["handwritten"]["noop_again"].append(hand_again.seconds)
        log(
            f"{label}: no-op again imagesmith {again['seconds']:.2f} s, "
            f"hand {hand_again.seconds:.2f} s"
        )

        (spec_dir / "env.toml").write_text(spec_text.replace(PIN_BEFORE, PIN_AFTER, 1))
        pin = imagesmith_build(bench, engine, spec_dir, env, "--relock")
        figure["imagesmith"]["pin"].append(pin)
        (context / "requirements.txt").write_text(
            requirements.replace("pyyaml\n", "pyyaml==6.0.1\n")
        )
        fetch = handwritten_fetch(context, run_dir / "pip")
        built = handwritten_build(bench, engine, context, tag, no_cache=False)
        figure["handwritten"]["pin"].append(fetch.seconds + built.seconds)
        figure["handwritten_fetch"]["pin"].append(fetch.seconds)
        figure["handwritten_engine"]["pin"].append(built.seconds)
        log(
            f"{label}: pin change imagesmith {pin['seconds']:.1f} s, "
            f"hand {fetch.seconds:.1f} + {built.seconds:.1f} s"
        )

        # The cold build again, the .debs already in the host cache (nothing else in it).
        (spec_dir / "env.toml").write_text(spec_text)
        (spec_dir / "env.lock").write_text(lock_text)
        debs_only = run_dir / "xdg-debs"
        only_debs = functools.partial(copy_debs, run_dir / "xdg", debs_only)
        only_debs()
        env = bench_env(XDG_CACHE_HOME=str(debs_only), UV_CACHE_DIR=str(bench.uv_cache))
        cached = imagesmith_build(bench, engine, spec_dir, env, "--no-cache", reset=only_debs)
        figure["imagesmith"]["cold_debs_cached"].append(cached)
        log(f"{label}: imagesmith cold, .debs cached {cached['seconds']:.1f} s")
        shutil.rmtree(run_dir, ignore_errors=True)

    for index in range(bench.runs):
        measure_run(bench, f"build ({engine})", index, figure, engine, one_run)
        bench.save()


def imagesmith_push(
    folder: Path, registry: LocalRegistry, env: dict[str, str], *flags: str
) -> dict[str, Any]:
    """One whole `imagesmith push` process and the bytes it added to the registry's storage."""
    before = registry.bytes_used()
    run = timed([IMAGESMITH, "push", "env.toml", "--json", *flags], cwd=folder, env=env)
    after = registry.bytes_used()
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        "seconds": run.seconds,
        "bytes_added": after - before,
        "registry_bytes": after,
        "digest": result["digest"],
    }


def remove_image(engine: str, built: dict[str, Any]) -> None:
    """Untag and remove an image this run built (never --force); fail if it stays."""
    for tag in built["tags"]:
        subprocess.run([engine, "rmi", tag], capture_output=True, check=False)
    subprocess.run([engine, "rmi", built["image_id"]], capture_output=True, check=False)
    if output([engine, "image", "inspect", "--format", "{{.Id}}", built["image_id"]]):
        raise BenchError(f"{engine}: cannot remove {built['image_id']} for the empty-machine build")


def figure_push(bench: Bench, engine: str) -> None:
    """push with and without the input archive to fresh local registries, and a rebuild
    from that archive alone on an "empty machine"."""
    ensure_engine(engine)
    ensure_base(engine)
    name = f"imagesmith-bench-{bench.rid}-push-{engine}"
    first_dir = bench.fresh(f"push-{engine}/first")
    second_dir = bench.fresh(f"push-{engine}/second")
    env = bench_env(
        XDG_CACHE_HOME=str(bench.fresh(f"push-{engine}/xdg")), UV_CACHE_DIR=str(bench.uv_cache)
    )
    # The builds both pushes read from (untimed). The second image is the same spec with one
    # Python pin changed: the same apt closure, the same base, other wheels.
    spec_text = with_repository(example_spec(name), "127.0.0.1:9/not-yet")
    for folder in (first_dir, second_dir):
        example_files(folder)
    (first_dir / "env.toml").write_text(spec_text)
    first = imagesmith_build(bench, engine, first_dir, env)
    (second_dir / "env.toml").write_text(spec_text.replace(PIN_BEFORE, PIN_AFTER, 1))
    (second_dir / "env.lock").write_text((first_dir / "env.lock").read_text())
    second = imagesmith_build(bench, engine, second_dir, env, "--relock")
    log(f"{engine}: built {first['digest'][:19]} and {second['digest'][:19]} to push")
    figure: dict[str, Any] = {
        "first_digest": first["digest"],
        "second_digest": second["digest"],
        "closure": {
            folder.name: _lock_closure(folder / "env.lock") for folder in (first_dir, second_dir)
        },
        "push": {
            key: []
            for key in ("first_inputs", "first_no_inputs", "second_inputs", "second_no_inputs")
        },
        "rebuild": [],
    }
    bench.results.setdefault("push", {})[engine] = figure
    mismatches = []
    for index in range(bench.runs):
        label = f"{engine} run {index + 1}/{bench.runs}"
        # Two empty registries per run: one gets the images alone, the other the images with
        # their inputs, so neither push finds blobs the other sent.
        plain = start_registry(bench.fresh(f"push-{engine}/registry-plain"), LEDGERS)
        full: LocalRegistry | None = None
        try:
            full = start_registry(bench.fresh(f"push-{engine}/registry-inputs"), LEDGERS)
            repository = f"{full.host}/bench/{name}"
            for folder in (first_dir, second_dir):
                text = (folder / "env.toml").read_text()
                (folder / "env.toml").write_text(with_repository(text, repository))
            for key, folder in (("first", first_dir), ("second", second_dir)):
                bare = imagesmith_push(
                    folder, plain, env, "--no-inputs", "--to", f"{plain.host}/bench/{name}"
                )
                figure["push"][f"{key}_no_inputs"].append(bare)
                inputs = imagesmith_push(folder, full, env)
                figure["push"][f"{key}_inputs"].append(inputs)
                log(
                    f"{label}: push {key} image --no-inputs {bare['seconds']:.1f} s "
                    f"(+{bare['bytes_added'] / 1e6:.0f} MB), with inputs "
                    f"{inputs['seconds']:.1f} s (+{inputs['bytes_added'] / 1e6:.0f} MB)"
                )

            # The empty machine: env.toml, env.lock and the registry; no imagesmith cache,
            # the image gone from the engine, Debian's archive and PyPI unreachable.
            remove_image(engine, first)
            machine = bench.fresh(f"push-{engine}/empty-machine")
            for file in ("env.toml", "env.lock"):
                shutil.copy(first_dir / file, machine / file)
            cache = machine / "xdg"
            offline = bench_env(
                XDG_CACHE_HOME=str(cache), UV_CACHE_DIR=str(machine / "uv"), **UNREACHABLE
            )
            rebuilt = imagesmith_build(bench, engine, machine, offline, "--no-cache", retry=False)
            rebuilt["same_digest"] = rebuilt["digest"] == first["digest"]
            rebuilt["debs_fetched"] = len(list((cache / "imagesmith" / "debs").glob("[0-9a-f]*")))
            rebuilt["wheels_fetched"] = len(
                list((cache / "imagesmith" / "wheels").glob("*/wheels/*"))
            )
            figure["rebuild"].append(rebuilt)
            first = {**first, "tags": rebuilt["tags"], "image_id": rebuilt["image_id"]}
            log(
                f"{label}: rebuild from the registry archive {rebuilt['seconds']:.1f} s, "
                f"{rebuilt['debs_fetched']} .debs, digest "
                + ("the same" if rebuilt["same_digest"] else f"DIFFERS: {rebuilt['digest']}")
            )
            if not rebuilt["same_digest"]:
                mismatches.append(f"run {index + 1}: {rebuilt['digest']}")
        finally:
            plain.stop()
            if full is not None:
                full.stop()
        bench.save()
    if mismatches:
        raise DigestMismatch(
            f"{engine}: the rebuild from the input archive gave another digest than the first "
            f"build ({first['digest']}): {'; '.join(mismatches)}"
        )


def _lock_closure(lock: Path) -> dict[str, int]:
    """How many apt packages and Python distributions a lock pins."""
    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    apt = data.get("apt", {}).get("packages", [])
    python = data.get("python", {}).get("packages", [])
    return {"apt": len(apt), "python": len(python)}


def figure_scaling(bench: Bench) -> None:
    engine = "docker"
    ensure_engine(engine)
    ensure_base(engine)
    apt = package_list(HERE / "scaling-apt.txt")
    python = package_list(HERE / "scaling-python.txt")
    figure: dict[str, Any] = {"engine": engine, "sizes": list(SCALING_SIZES), "points": {}}
    bench.results["scaling"] = figure
    lock_cmd: list[str | Path] = [IMAGESMITH, "lock", "env.toml", "--engine", engine]
    for size in SCALING_SIZES:
        folder = bench.fresh(f"scale-{size}")
        (folder / "env.toml").write_text(
            scaling_spec(f"imagesmith-bench-{bench.rid}-s{size}", apt[:size], python[:size])
        )
        point: dict[str, Any] = {"lock": [], "build": []}
        figure["points"][str(size)] = point
        for index in range(bench.scaling_runs):
            (folder / "env.lock").unlink(missing_ok=True)
            cache = bench.fresh(f"scale-{size}-cache")
            env = bench_env(XDG_CACHE_HOME=str(cache), UV_CACHE_DIR=str(cache / "uv"))
            locked = with_engine(engine, functools.partial(timed, lock_cmd, cwd=folder, env=env))
            point["lock"].append(locked.seconds)
            counts = _LOCK_COUNTS.search(locked.stdout)
            if counts:
                point["closure"] = {"apt": int(counts.group(1)), "python": int(counts.group(2))}
            built = imagesmith_build(
                bench,
                engine,
                folder,
                env,
                "--no-cache",
                reset=functools.partial(shutil.rmtree, cache, ignore_errors=True),
            )
            point["build"].append(built)
            log(
                f"scaling {size}: lock {locked.seconds:.1f} s, build {built['seconds']:.1f} s "
                f"(run {index + 1}/{bench.scaling_runs})"
            )
            shutil.rmtree(cache, ignore_errors=True)
        bench.save()


# -- main --------------------------------------------------------------------------------


def clean_stale_ledgers() -> None:
    """Remove the images of earlier runs that were killed before their own clean-up."""
    for stopped in stop_stale_registries(LEDGERS):
        log(f"an earlier run was killed before stopping its registry; stopped {stopped}")
    for path in sorted(LEDGERS.glob("ledger-*.json")):
        log(f"an earlier run was killed before cleaning up; removing its images ({path.name})")
        left = Ledger.load(path).clean()
        if left:
            log(f"still in use by other images, left: {left}")
        path.unlink()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run each, no scaling figure")
    parser.add_argument("--engines", default="docker,podman", help="comma-separated")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument(
        "--scaling-runs", type=int, default=1, help="runs per scaling point (default 1)"
    )
    parser.add_argument(
        "--render-only", action="store_true", help="re-render README/PNG from results.json"
    )
    parser.add_argument(
        "--figures", default=",".join(FIGURES), help=f"which figures (default: {','.join(FIGURES)})"
    )
    parser.add_argument(
        "--merge", action="store_true", help="update these figures in the existing results.json"
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown or not args.engines:
        parser.error(f"--engines: choose from {', '.join(ENGINES)}")
    args.figures = {f.strip() for f in args.figures.split(",") if f.strip()}
    if not args.figures or args.figures - set(FIGURES):
        parser.error(f"--figures: choose from {', '.join(FIGURES)}")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    ensure_venv(PLOT_VENV, ["matplotlib"])
    ensure_venv(PIPTOOLS_VENV, ["pip-tools"])
    if args.render_only:
        results = json.loads((HERE / "results.json").read_text())
        Bench(runs=0, quick=False, engines=[], work=HERE, results=results).save(keep_elapsed=True)
        return 0
    clean_stale_ledgers()
    work = Path(tempfile.mkdtemp(prefix="imagesmith-bench-"))
    bench = Bench(
        runs=args.runs,
        quick=args.quick,
        engines=args.engines,
        work=work,
        scaling_runs=args.scaling_runs,
        merge=args.merge,
    )
    bench.ledger.path = LEDGERS / f"ledger-{bench.rid}.json"
    facts = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["bench/run.py", *argv]),
        "figures": sorted(args.figures),
    }
    if args.merge:
        bench.results = json.loads((HERE / "results.json").read_text())
        bench.results.setdefault("merged", []).append(facts)
        bench.results["complete"] = False
    else:
        bench.results = {
            **facts,
            "runs": args.runs,
            "scaling_runs": 0 if args.quick else args.scaling_runs,
            "quick": args.quick,
            "engines": args.engines,
            "machine": machine_facts(),
            "errors": [],
            "complete": False,
        }
    log(f"work folder {work}, run id {bench.rid}, {args.runs} run(s), engines {args.engines}")
    figures: list[tuple[str, Callable[[], None]]] = []
    if "lock" in args.figures:
        figures.append(("lock", lambda: figure_lock(bench)))
    for engine in args.engines if "build" in args.figures else []:
        figures.append((f"build ({engine})", functools.partial(figure_build, bench, engine)))
    for engine in args.engines if "push" in args.figures else []:
        figures.append((f"push ({engine})", functools.partial(figure_push, bench, engine)))
    if "scaling" in args.figures and not args.quick and "docker" in args.engines:
        figures.append(("scaling", lambda: figure_scaling(bench)))
    if args.merge:  # the figures measured again replace their old failures
        bench.results["errors"] = [
            error
            for error in bench.results.get("errors", [])
            if not any(error.startswith(f"{name}:") for name, _ in figures)
        ]
    try:
        for name, figure in figures:
            log(f"== {name}")
            # Others run tests on the same machine: the load when each figure starts and ends.
            load = {"start": list(os.getloadavg())}
            bench.results.setdefault("load", {})[name] = load
            try:
                try:
                    figure()
                except DigestMismatch:
                    raise
                except BenchError as exc:
                    # Other people's tests share the engines and can pull an image or the
                    # docker0 bridge out from under a build: measure the figure again, once.
                    problem = str(exc).splitlines()[0][:200]
                    log(f"{name} failed, measuring the figure again from its start: {problem}")
                    bench.results.setdefault("retries", []).append(
                        f"{name} failed and was measured again from its start: {problem}"
                    )
                    figure()
            except (BenchError, OSError, ValueError, KeyError, CalledProcessError) as exc:
                log(f"{name} failed: {exc}")
                bench.results["errors"].append(f"{name}: {exc}")
            finally:
                load["end"] = list(os.getloadavg())
            bench.save()
        bench.results["complete"] = True
    finally:
        log("removing the images this run made")
        left = bench.ledger.clean()
        bench.results["left_behind"] = left
        if left:
            log(f"could not remove: {left}")
        if bench.ledger.path is not None:
            bench.ledger.path.unlink(missing_ok=True)
        bench.save()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.perf_counter() - bench.started:.0f} s: bench/README.md")
    return 0 if not bench.results["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
