#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine, as root. It installs and starts
# what the tests need (engines and tools from apt, the podman config fix, the Docker
# daemon, imagesmith in .venv); the tests start their own registries, Slurm cluster and
# base image (kept between runs). Arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not integration"     # the fast tier alone (no engines)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-host.sh
bash scripts/setup-venv.sh
bash scripts/start-dockerd.sh
export PATH="$PWD/.venv/bin:$PWD/.venv-tools/bin:$PATH"
# Here every engine is installed and started: a test that cannot find one fails, not skips.
export IMAGESMITH_REQUIRE_ENGINES=1

.venv/bin/ruff check imagesmith tests
.venv/bin/ruff format --check imagesmith tests
.venv/bin/mypy
exec .venv/bin/pytest -p no:cacheprovider "$@"
