"""A catalogue of 8 small specs: one `build DIR --jobs 2` against 8 `build SPEC` in a row,
and the same catalogue as a Slurm job array.

    .venv/bin/python bench/catalogue.py                  # 1 run, podman, with Slurm
    .venv/bin/python bench/catalogue.py --runs 3 --engines podman,docker --no-slurm
    .venv/bin/python bench/catalogue.py --engines docker --no-slurm --merge   # keep the rest

The 8 specs (SPECS below) share the base `imagesmith/debian:bookworm` and differ in a few
apt packages and 0-2 Python wheels, so they are 8 different images. They are locked first
(untimed); then, per run and engine, both ways build them cold (`--no-cache`, an empty
imagesmith cache, the images of the other way removed first):

- together: `imagesmith build CATALOGUE --jobs 2 --no-cache --json`, one command; each
  spec's seconds are the ones its report gives;
- one by one: `imagesmith build CATALOGUE/NAME/env.toml --no-cache --json` 8 times, each
  timed as a whole process.

With Slurm (`sinfo` answers; bash scripts/start-slurm.sh starts the one-node cluster), each
run also submits `imagesmith build CATALOGUE --on slurm --wait --no-cache --json` against a
docker-registry on 127.0.0.1 that this script starts (empty: no task finds its image
there): one array task per spec (1 CPU each, as the node's 2 cores allow 2 at once), each
building with podman and pushing by digest. Per spec: the seconds its task's report gives;
total: the command's wall time, submit to the last task's end.

The figures go into bench/results.json under `catalogue` and into bench/README.md; the
images (by their tags and IDs), the registry and the Slurm job go.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines import engine_version, ensure_engine
from localregistry import emptied, start_registry
from proc import Timed, bench_env, timed
from report import render_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGESMITH = REPO / ".venv" / "bin" / "imagesmith"
BASE = "imagesmith/debian:bookworm"
JOBS = 2
SPECS: dict[str, tuple[list[str], list[str]]] = {
    "hello": (["hello"], []),
    "tree": (["tree"], []),
    "jq": (["jq"], []),
    "files": (["less", "file"], []),
    "six": (["bc"], ["six"]),
    "idna": (["zip", "unzip"], ["idna", "packaging"]),
    "attrs": (["patch"], ["attrs"]),
    "tools": (["dc", "ed"], []),
}
"""name -> (apt packages, Python requirements)."""
BUILD_TABLE = '[build]\ncpus = 1\nmemory = "1Gi"\ntime = "20"\n'


def _quoted(items: list[str]) -> str:
    return ", ".join(f'"{item}"' for item in items)


def write_catalogue(folder: Path, run_id: str, repository: str) -> dict[str, Path]:
    """One folder per spec under `folder`, each with its env.toml."""
    paths = {}
    for name, (apt, python) in SPECS.items():
        spec = folder / name / "env.toml"
        spec.parent.mkdir(parents=True)
        text = f'name = "imagesmith-bench-cat-{run_id}-{name}"\nversion = "1.0"\n'
        text += f'[base]\nimage = "{BASE}"\n[apt]\npackages = [{_quoted(apt)}]\n'
        if python:
            text += f"[python]\nrequirements = [{_quoted(python)}]\n"
        text += '[image]\ncmd = ["/bin/sh", "-c", "echo ok"]\n'
        text += f'[registry]\nrepository = "{repository}/cat-{name}"\n' + BUILD_TABLE
        spec.write_text(text)
        paths[name] = spec
    return paths


def remove_built(engine: str, paths: dict[str, Path], run_id: str) -> None:
    """The images the builds recorded (tags and IDs), and any image named after this run."""
    refs: list[str] = []
    for spec in paths.values():
        record = spec.with_suffix(".build.json")
        if record.exists():
            built = json.loads(record.read_text())
            refs += [*built["tags"], built["image_id"]]
            record.unlink()
    listed = subprocess.run(
        [engine, "images", "--format", "{{.Repository}}:{{.Tag}}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    refs += [ref for ref in listed if f"-{run_id}-" in ref or f"cat-{run_id}" in ref]
    for ref in refs:
        subprocess.run([engine, "rmi", ref], capture_output=True, check=False)


def _reports(run: Timed) -> dict[str, dict[str, Any]]:
    """Spec name -> its report, from a many-spec `--json` output."""
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return {Path(s["spec"]).parent.name: s for s in result["specs"]}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def local_run(
    work: Path, engine: str, paths: dict[str, Path], run_id: str, order: tuple[str, str]
) -> dict[str, Any]:
    """Both local ways, in `order`, each cold."""
    figures: dict[str, Any] = {"order": list(order)}
    base: list[str | Path] = [IMAGESMITH, "build", "--engine", engine, "--no-cache", "--json"]
    for way in order:
        env = bench_env(XDG_CACHE_HOME=str(work / f"cache-{engine}-{way}"))
        load = _load()
        if way == "together":
            run = timed([*base, "catalogue", "--jobs", str(JOBS)], cwd=work, env=env)
            reports = _reports(run)
            figures[way] = {
                "seconds": run.seconds,
                "specs": {name: reports[name]["seconds"] for name in SPECS},
                "digests": {name: reports[name]["digest"] for name in SPECS},
            }
        else:
            seconds, digests = {}, {}
            started = 0.0
            for name in SPECS:
                one = timed([*base, f"catalogue/{name}/env.toml"], cwd=work, env=env)
                seconds[name] = one.seconds
                digests[name] = json.loads(one.stdout.strip().splitlines()[-1])["digest"]
                started += one.seconds
            figures[way] = {"seconds": started, "specs": seconds, "digests": digests}
        figures[way]["load"] = {"start": load, "end": _load()}
        remove_built(engine, paths, run_id)
        shutil.rmtree(work / f"cache-{engine}-{way}", ignore_errors=True)
    return figures


def slurm_run(work: Path, paths: dict[str, Path], run_id: str) -> dict[str, Any]:
    """The catalogue as one job array, followed to its end."""
    env = bench_env(XDG_CACHE_HOME=str(work / "cache-slurm"))
    load = _load()
    job = ""
    try:
        run = timed(
            [IMAGESMITH, "build", "catalogue", "--on", "slurm", "--wait", "--no-cache", "--json"],
            cwd=work,
            env=env,
            check=False,
        )
        found = re.search(r"submitted job (\d+)", "\n".join(run.lines))
        job = found.group(1) if found else ""
        if run.returncode != 0:
            logs = sorted((work / "imagesmith-slurm").glob("*.log"))
            tails = [f"{p.name}: {p.read_text()[-400:]}" for p in logs]
            raise SystemExit(f"build --on slurm exited {run.returncode}:\n{run.tail()}\n{tails}")
        reports = _reports(run)
        return {
            "seconds": run.seconds,
            "job": job,
            "specs": {name: reports[name]["seconds"] for name in SPECS},
            "digests": {name: reports[name]["digest"] for name in SPECS},
            "substituted": sorted(n for n in SPECS if reports[n].get("substituted_from")),
            "load": {"start": load, "end": _load()},
        }
    finally:
        if job:
            subprocess.run(["scancel", job], capture_output=True, check=False)
        remove_built("podman", paths, run_id)


def slurm_digests_agree(figure: dict[str, Any]) -> bool:
    """Each Slurm run gave the digests of the local podman builds of the same invocation
    (the spec names, so the digests, are the invocation's own), or of its other runs."""
    by_invocation: dict[str, dict[str, str]] = {}
    for run in figure["local"].get("podman", []):
        by_invocation.setdefault(run["invocation"], run["together"]["digests"])
    for run in figure["slurm"]:
        expected = by_invocation.setdefault(run["invocation"], run["digests"])
        if run["digests"] != expected:
            return False
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--engines", default="podman")
    parser.add_argument("--no-slurm", action="store_true")
    parser.add_argument("--no-local", action="store_true", help="the Slurm array alone")
    parser.add_argument(
        "--merge", action="store_true", help="keep the figures of engines (and Slurm) not measured"
    )
    args = parser.parse_args(argv)
    engines = args.engines.split(",")
    for engine in engines:
        ensure_engine(engine)
    slurm = not args.no_slurm and shutil.which("sinfo") is not None
    if slurm and subprocess.run(["sinfo"], capture_output=True, check=False).returncode != 0:
        raise SystemExit("sinfo fails: start the cluster (bash scripts/start-slurm.sh)")
    figure: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "imagesmith": subprocess.run(
            [str(IMAGESMITH), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "jobs": JOBS,
        "specs": {name: {"apt": apt, "python": py} for name, (apt, py) in SPECS.items()},
        "engines": {e: engine_version(e) for e in engines},
        "local": {e: [] for e in engines},
        "slurm": [],
        "load": {"start": _load()},
    }
    same = True
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-cat-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry", HERE / ".work")
        run_id = uuid.uuid4().hex[:6]
        paths = write_catalogue(work / "catalogue", run_id, f"{registry.host}/bench-{run_id}")
        try:
            lock_env = bench_env(XDG_CACHE_HOME=str(work / "cache-lock"))
            for spec in paths.values():
                timed([IMAGESMITH, "lock", spec, "--engine", engines[0]], cwd=work, env=lock_env)
            for index in range(args.runs):
                order = ("together", "one_by_one") if index % 2 == 0 else ("one_by_one", "together")
                for engine in [] if args.no_local else engines:
                    local = local_run(work, engine, paths, run_id, order)
                    local["invocation"] = figure["date"]
                    figure["local"][engine].append(local)
                    same &= local["together"]["digests"] == local["one_by_one"]["digests"]
                    print(json.dumps({engine: local}), flush=True)
                if slurm:
                    registry = emptied(registry)  # no task finds its image or stage there
                    figure["slurm"].append(slurm_run(work, paths, run_id))
                    figure["slurm"][-1]["invocation"] = figure["date"]
                    print(json.dumps({"slurm": figure["slurm"][-1]}), flush=True)
        finally:
            registry.stop()
            for engine in engines:
                remove_built(engine, paths, run_id)
    figure["load"]["end"] = _load()
    figure["same_digests"] = same
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text())
    kept = results.get("catalogue", {}) if args.merge else {}
    if kept:
        figure["engines"] = {**kept.get("engines", {}), **figure["engines"]}
        measured = {e: runs for e, runs in figure["local"].items() if runs}
        figure["local"] = {**kept.get("local", {}), **measured}
        # Slurm runs add up (those that took images from the registry do not count).
        figure["slurm"] = [
            r for r in [*kept.get("slurm", []), *figure["slurm"]] if not r["substituted"]
        ]
        figure["same_digests"] = same and kept.get("same_digests", True)
        what = "Slurm" if args.no_local else ", ".join(engines)
        figure["date"] = f"{kept.get('date')}; {figure['date']} ({what})"
    figure["same_digests"] &= slurm_digests_agree(figure)
    same = figure["same_digests"]
    results["catalogue"] = figure
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (HERE / "README.md").write_text(render_readme(results), encoding="utf-8")
    print(f"same digests both ways: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
