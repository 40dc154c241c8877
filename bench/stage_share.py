"""Builds that take the image or its system stage from the registry, against cold builds.

    .venv/bin/python bench/stage_share.py                # 1 run
    .venv/bin/python bench/stage_share.py --runs 3

recipes/lab-analysis, its base replaced by `imagesmith/debian:bookworm`, is built with
`build --push --engine podman` into a docker-registry on 127.0.0.1 that this script
starts (the first machine: the image, its input archive and its system stage are
pushed). The lock the registry now holds is built again, each build timed as a whole:

- by the first machine and by a fresh builder: `build --push` (the registry holds the
  image: it is checked there and its version tag moved; nothing is built, loaded or sent);
- by two more fresh builders: `build --substitute` (the image pulled from the registry by
  digest into the builder's store) and `build --no-cache` (the cold build, the reference;
  issue 15's targets: <= 0.05x and <= 0.5x of it).

Each must print the digest of the push. Then a Python pin changes (pyyaml==6.0.1), and
the new lock is built twice, each time as a fresh builder: a podman storage of its own
(CONTAINERS_STORAGE_CONF) and an empty imagesmith cache:

- shared: `build --substitute`: the registry lacks this lock's image but holds its system
  stage, which is taken; only the Python steps run;
- cold: `build --no-cache`, no substitution (its base comes from the input archive, as
  on any machine that lacks it).

Both must print the same digest. The figures go into bench/results.json under
`stage_share` and into bench/README.md; the registry, the storages and the images go.
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from engines import engine_version, ensure_engine
from localregistry import start_registry
from proc import Timed, bench_env, timed
from report import render_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGESMITH = REPO / ".venv" / "bin" / "imagesmith"
BASE = "imagesmith/debian:bookworm"
PIN_BEFORE, PIN_AFTER = '"pyyaml"', '"pyyaml==6.0.1"'
STEP_LINE = re.compile(r"^\s*(?:\[\d+/\d+\]\s*)?(?:Step|STEP) \d+/\d+")


def _fresh_builder(root: Path) -> dict[str, str]:
    """Environment variables of a builder with a podman storage and a cache of its own."""
    conf = root / "storage.conf"
    root.mkdir(parents=True)
    conf.write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "store"}"\n'
        f'runroot = "{root / "run"}"\n'
    )
    return {"CONTAINERS_STORAGE_CONF": str(conf), "XDG_CACHE_HOME": str(root / "cache")}


def _remove_builder(root: Path) -> None:
    store = ["--root", str(root / "store"), "--runroot", str(root / "run")]
    subprocess.run(["podman", *store, "rmi", "-a", "-f"], capture_output=True, check=False)
    subprocess.run(["umount", "-R", str(root / "store" / "overlay")], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def _report(run: Timed) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


HELD_BUILDS = (("push", ["--push"]), ("substitute", ["--substitute"]), ("cold", ["--no-cache"]))
"""Fresh builders on the lock the registry holds: what each passes to `build`."""


def _figure(run: Timed, digest: str) -> dict[str, Any]:
    """Seconds, digest, whether it equals `digest`, and whether an engine build ran."""
    result = _report(run)
    return {
        "seconds": run.seconds,
        "digest": result["digest"],
        "same_digest": result["digest"] == digest,
        "built": any(STEP_LINE.match(line) for line in run.lines),
        "load": list(os.getloadavg()),
    }


def one_run(work: Path, registry_host: str) -> dict[str, Any]:
    folder = work / "lab"
    shutil.copytree(REPO / "recipes" / "lab-analysis", folder)
    spec = folder / "env.toml"
    text = re.sub(r'(?m)^image = "[^"]*"', f'image = "{BASE}"', spec.read_text(), count=1)
    text, count = re.subn(
        r'(?m)^repository = "[^"]*"', f'repository = "{registry_host}/lab/stage-bench"', text
    )
    if count != 1:
        raise SystemExit("recipes/lab-analysis/env.toml no longer has one [registry] repository")
    spec.write_text(text)
    first_env = bench_env(XDG_CACHE_HOME=str(work / "first-cache"))
    build: list[str | Path] = [IMAGESMITH, "build", "env.toml", "--engine", "podman", "--json"]
    first = timed([*build, "--push", "--no-cache"], cwd=folder, env=first_env)
    pushed = _report(first)
    figures: dict[str, Any] = {"first_build_seconds": first.seconds, "held": {}}
    try:
        # The lock the registry holds: pushed again by the first machine, then taken by
        # fresh builders (`build --push`, `build --substitute`) against a fresh cold build.
        again = timed([*build, "--push"], cwd=folder, env=first_env)
        figures["held"]["push_again"] = _figure(again, pushed["digest"])
        for kind, flags in HELD_BUILDS:
            root = work / f"builder-held-{kind}"
            env = bench_env(**_fresh_builder(root))
            try:
                run = timed([*build, *flags], cwd=folder, env=env)
                figures["held"][kind] = _figure(run, pushed["digest"])
            finally:
                _remove_builder(root)
        spec.write_text(text.replace(PIN_BEFORE, PIN_AFTER, 1))
        timed([IMAGESMITH, "lock", "env.toml", "--engine", "podman"], cwd=folder, env=first_env)
        for kind, flags in (("shared", ["--substitute"]), ("cold", ["--no-cache"])):
            root = work / f"builder-{kind}"
            env = bench_env(**_fresh_builder(root))
            try:
                run = timed([*build, *flags], cwd=folder, env=env)
                result = _report(run)
                figures[kind] = {
                    "seconds": run.seconds,
                    "digest": result["digest"],
                    "apt_step": any("apt-get install" in line for line in run.lines),
                    "stage_taken": any(
                        line.startswith("system stage: taking") for line in run.lines
                    ),
                }
            finally:
                _remove_builder(root)
    finally:
        for tag in pushed["tags"]:
            subprocess.run(["podman", "rmi", tag], capture_output=True, check=False)
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    ensure_engine("podman")
    runs = []
    load_start = list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-stage-") as tmp:
        work = Path(tmp)
        registry = start_registry(work / "registry", HERE / ".work")
        try:
            for index in range(args.runs):
                run_dir = work / f"run-{index}"
                run_dir.mkdir()
                runs.append(one_run(run_dir, registry.host))
                print(json.dumps(runs[-1]), flush=True)
        finally:
            registry.stop()
    figure = {
        "engine": engine_version("podman"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "imagesmith": subprocess.run(
            [str(IMAGESMITH), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "runs": runs,
        "load": {"start": load_start, "end": list(os.getloadavg())},
    }
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text())
    results["stage_share"] = figure
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (HERE / "README.md").write_text(render_readme(results), encoding="utf-8")
    same = all(r["shared"]["digest"] == r["cold"]["digest"] for r in runs) and all(
        held["same_digest"] for r in runs for held in r["held"].values()
    )
    print(f"same digest: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
