#!/usr/bin/env bash
# The main job end to end on a fresh Debian 12 machine, as root: install imagesmith and
# the engines, make a Debian base image locally (no public registry needed), then lock,
# build and run the example recipe with the engine that is there: Docker when a daemon
# answers, podman otherwise. Usage: bash scripts/demo.sh [RECIPE]   (default lab-analysis)
set -euo pipefail
cd "$(dirname "$0")/.."
RECIPE=${1:-lab-analysis}

bash scripts/install-host.sh
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"

if docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
echo "demo: building with $ENGINE"

imagesmith base --suite bookworm --engine "$ENGINE"

DEMO=demo/$RECIPE
mkdir -p "$DEMO"
imagesmith init "$DEMO" --recipe "$RECIPE" --force
# No public registry here: build on the base image made above.
sed -i 's|^image = "debian:bookworm"|image = "imagesmith/debian:bookworm"|' "$DEMO/env.toml"

imagesmith lock "$DEMO/env.toml" --engine "$ENGINE"
imagesmith build "$DEMO/env.toml" --engine "$ENGINE"

TAG=$(.venv/bin/python -c 'import json, sys; print(json.load(open(sys.argv[1]))["tags"][0])' "$DEMO/env.build.json")
imagesmith inspect "$TAG" --engine "$ENGINE"
echo "demo: running $TAG"
"$ENGINE" run --rm "$TAG" python3 -c 'import sys, os; print("python", sys.version.split()[0], "as uid", os.getuid())'

echo
echo "demo: done. The image is $TAG in $ENGINE's store (spec and lock in $DEMO/)."
echo "  run it:        $ENGINE run --rm -it $TAG"
echo "  its manifest:  .venv/bin/imagesmith manifest $DEMO/env.toml"
