#!/usr/bin/env bash
# The README's test command: install from nothing (idempotent), then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
source infra/env.sh
exec .venv/bin/python -m pytest -q --durations=25 "$@"
