#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine, as root: installs and starts what
# the tests need, then runs pytest. Arguments go to pytest, e.g.
#   scripts/test.sh -m "not integration"     # the fast tier alone (no engines)
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PWD/.venv-tools/bin:$PATH"

.venv/bin/ruff check imagesmith tests
.venv/bin/mypy
exec .venv/bin/pytest -p no:cacheprovider "$@"
