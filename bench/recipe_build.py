"""A ready recipe locked and built cold, once: its lock and build time and its image size.

    .venv/bin/python bench/recipe_build.py pytorch-gpu            # Docker
    .venv/bin/python bench/recipe_build.py pytorch-gpu --engine podman

The recipe is copied into a temporary folder with its base replaced by
`imagesmith/debian:bookworm` (no public registry here; made with `imagesmith base` when
missing), locked, and built with `--no-cache` and an empty imagesmith cache (the uv
cache is the bench's own, empty at first too). The figures go into bench/results.json
under `recipes` and into bench/README.md (section "Recipes"); the image is removed again.
Records the wheels' total size (what the host fetches and installs), the image's size as
the engine reports it, and the digest.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from engines import engine_version, ensure_engine, image_size
from proc import bench_env, timed
from report import render_readme

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
IMAGESMITH = REPO / ".venv" / "bin" / "imagesmith"
BASE = "imagesmith/debian:bookworm"


def _lock_counts(lock_text: str) -> tuple[int, int]:
    """(apt packages, Python distributions) that env.lock pins."""
    import tomllib

    lock = tomllib.loads(lock_text)
    return len(lock.get("apt", {}).get("packages", [])), len(
        lock.get("python", {}).get("packages", [])
    )


def _wheel_bytes(cache: Path) -> int:
    """Bytes of the wheels the build fetched into imagesmith's (fresh) cache."""
    return sum(p.stat().st_size for p in cache.glob("imagesmith/wheels/*/wheels/*.whl"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a folder name under recipes/")
    parser.add_argument("--engine", default="docker", choices=("docker", "podman"))
    parser.add_argument(
        "--run",
        metavar="CMD",
        help="a shell command to run in the image before it is removed (its output is kept)",
    )
    args = parser.parse_args(argv)
    source = REPO / "recipes" / args.recipe
    if not (source / "env.toml").is_file():
        print(f"recipe_build: no recipes/{args.recipe}/env.toml", file=sys.stderr)
        return 2
    ensure_engine(args.engine)
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-recipe-") as tmp:
        work = Path(tmp)
        folder = work / args.recipe
        shutil.copytree(source, folder)
        spec = folder / "env.toml"
        text = spec.read_text(encoding="utf-8")
        text = re.sub(r'(?m)^image = "[^"]*"', f'image = "{BASE}"', text, count=1)
        spec.write_text(text, encoding="utf-8")
        env = bench_env(XDG_CACHE_HOME=str(work / "xdg"), UV_CACHE_DIR=str(work / "uv"))
        locked = timed(
            [IMAGESMITH, "lock", "env.toml", "--engine", args.engine], cwd=folder, env=env
        )
        built = timed(
            [IMAGESMITH, "build", "env.toml", "--engine", args.engine, "--no-cache", "--json"],
            cwd=folder,
            env=env,
        )
        report = json.loads(built.stdout.strip().splitlines()[-1])
        tag = report["tags"][0]
        size = image_size(args.engine, tag)
        ran = None
        if args.run:
            done = subprocess.run(
                [args.engine, "run", "--rm", "--user", "0", tag, "/bin/sh", "-c", args.run],
                capture_output=True,
                text=True,
                check=False,
            )
            ran = {"command": args.run, "exit": done.returncode, "output": done.stdout.strip()}
        apt, python = _lock_counts((folder / "env.lock").read_text())
        wheel_bytes = _wheel_bytes(work / "xdg")
        for ref in report["tags"]:
            subprocess.run([args.engine, "rmi", ref], capture_output=True, check=False)
    figure = {
        "recipe": args.recipe,
        "engine": engine_version(args.engine),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "imagesmith": subprocess.run(
            [str(IMAGESMITH), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "lock_seconds": locked.seconds,
        "build_seconds": built.seconds,
        "image_bytes": size,
        "apt_packages": apt,
        "python_distributions": python,
        "wheel_bytes": wheel_bytes,
        "digest": report["digest"],
        "ran": ran,
    }
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text())
    recipes = [
        r
        for r in results.get("recipes", [])
        if (r["recipe"], r["engine"].split()[0]) != (args.recipe, args.engine)
    ]
    results["recipes"] = [*recipes, figure]
    results_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (HERE / "README.md").write_text(render_readme(results), encoding="utf-8")
    print(json.dumps(figure, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
