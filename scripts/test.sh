#!/usr/bin/env bash
# The test suite, on a fresh Debian 12 machine, as root.
#
#   bash scripts/test.sh [PYTEST ARGS]          # everything: installs engines and tools from
#                                               # apt, the podman config fix, starts dockerd
#   bash scripts/test.sh --fast [PYTEST ARGS]   # the fast tier: no apt, no engine, no daemon
#
# Both set up .venv (imagesmith and its test tools) and .venv-tools (checkov,
# kubernetes-validate) when missing, then run ruff, mypy and pytest. The full run's tests
# start their own registries, Slurm cluster and base image (kept between runs); --fast
# runs tests/unit only (the tier is the folder).
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [ "${1:-}" = "--fast" ]; then
    fast=1
    shift
fi

if [ "$fast" = 0 ]; then
    bash scripts/install-host.sh
fi
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PWD/.venv-tools/bin:$PATH"

.venv/bin/ruff check imagesmith tests
.venv/bin/ruff format --check imagesmith tests
.venv/bin/mypy
if [ "$fast" = 1 ]; then
    exec .venv/bin/pytest -p no:cacheprovider tests/unit "$@"
fi
bash scripts/start-dockerd.sh
# Here every engine is installed and started: a test that cannot find one fails, not skips.
export IMAGESMITH_REQUIRE_ENGINES=1
exec .venv/bin/pytest -p no:cacheprovider "$@"
