#!/usr/bin/env bash
# The README's test command: install from nothing (idempotent), then run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
source infra/env.sh
# Two workers (PG_TEST_WORKERS to change, 0 for one process); a test file stays on one worker (its module
# fixtures -- a tiny bench, a DVC clone -- are built once).
exec .venv/bin/python -m pytest -q --durations=25 -n "${PG_TEST_WORKERS:-2}" --dist loadfile "$@"
