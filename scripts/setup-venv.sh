#!/usr/bin/env bash
# Python environments for imagesmith: .venv (imagesmith itself, editable, with its test
# tools) and .venv-tools (checkov and kubernetes-validate, whose pins clash with pytest's).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup-venv: installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi

quiet_pip() { "$@" 2>&1 | grep -v -e '^WARNING: Location' -e '^\[notice\]' || true; }

if [ ! -x .venv/bin/imagesmith ] || [ pyproject.toml -nt .venv/.installed ]; then
    echo "setup-venv: installing imagesmith into .venv"
    python3 -m venv .venv
    quiet_pip .venv/bin/pip install -q --upgrade pip
    quiet_pip .venv/bin/pip install -q -e '.[test]'
    .venv/bin/imagesmith --version >/dev/null
    touch .venv/.installed
fi
if [ ! -x .venv-tools/bin/checkov ] || [ ! -x .venv-tools/bin/kubernetes-validate ]; then
    echo "setup-venv: installing checkov and kubernetes-validate into .venv-tools"
    python3 -m venv .venv-tools
    quiet_pip .venv-tools/bin/pip install -q checkov kubernetes-validate
    .venv-tools/bin/checkov --version >/dev/null
fi
