#!/usr/bin/env bash
# A lab's image pipeline as one script, the steps that github-actions.yml and gitlab-ci.yml
# run one by one: check the committed lock, build, verify the build is reproducible, push
# by digest, and write the Job and the Slurm script that run the pushed image.
#
#   examples/ci/pipeline.sh REGISTRY/PATH [SPEC]
#   examples/ci/pipeline.sh registry.example.edu/lab/analysis env.toml
#
# Environment (all optional):
#   IMAGESMITH_ENGINE             docker, podman or auto (the default)
#   IMAGESMITH_REGISTRY_USER      registry credentials, from the CI's secret store; never
#   IMAGESMITH_REGISTRY_PASSWORD  on a command line (unset: docker/podman login, or none)
#   ARTIFACTS                     where the outputs go (default: artifacts)
# Outputs in $ARTIFACTS: build.json (imagesmith build --json), pushed.json (the registry's
# confirmation), job.yaml (imagesmith manifest), job.sbatch (imagesmith sbatch).
# Exit codes are imagesmith's: 1 when something failed (a stale lock, a build, a digest that
# differs on rebuild, the registry), 2 when the input is wrong.
set -euo pipefail

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 REGISTRY/PATH [SPEC]   (e.g. $0 registry.example.edu/lab/analysis env.toml)" >&2
  exit 2
fi
REPOSITORY=$1
SPEC=${2:-env.toml}
ARTIFACTS=${ARTIFACTS:-artifacts}
mkdir -p "$ARTIFACTS"

imagesmith --version

# 1. env.lock is committed and matches env.toml (exit 1 if not: run `imagesmith lock`, commit).
imagesmith lock "$SPEC" --check

# 2. Build from the lock; the digest depends on env.lock alone.
imagesmith build "$SPEC" --json > "$ARTIFACTS/build.json"

# 3. Rebuild with no cache: the same digest, or exit 1 with what differs.
imagesmith verify "$SPEC"

# 4. Push the canonical image by digest, tagged with the spec's version and lock-<hash>.
imagesmith push "$SPEC" --to "$REPOSITORY"
cp "${SPEC%.toml}.pushed.json" "$ARTIFACTS/pushed.json"

# 5. What runs the pushed image, by digest: a Kubernetes Job and a Slurm batch script.
imagesmith manifest "$SPEC" -o "$ARTIFACTS/job.yaml"
imagesmith sbatch "$SPEC" -o "$ARTIFACTS/job.sbatch"

python3 - "$ARTIFACTS" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
built = json.loads((out / "build.json").read_text())["digest"]
pushed = json.loads((out / "pushed.json").read_text())
if pushed["digest"] != built:
    sys.exit(f"pipeline: pushed {pushed['digest']}, but the build made {built}")
print(f"pipeline: {pushed['repository']}@{built} is built, verified, pushed; "
      f"its Job is {out / 'job.yaml'}")
PY
