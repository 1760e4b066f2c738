#!/usr/bin/env bash
# Set up a fresh machine: a virtualenv in .venv with the CPU torch wheel first, then poisonguard and its stack.
# Installing torch first matters: otherwise a dependency (peft) pulls the newest torch with GBs of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[dev]"
.venv/bin/pip check
