#!/usr/bin/env bash
# Start a local Prefect API server (sqlite under $PREFECT_HOME) and print the PREFECT_API_URL to export.
# Process-based task runners (Dask) and CLI workflows need a real server: in ephemeral mode every worker
# process and every `prefect` command would start a temporary server of its own.
#   bash infra/prefect-server.sh [PORT]        (default 4200; Ctrl-C stops it)
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
PORT="${1:-${PG_PREFECT_PORT:-4200}}"
HOST="${PG_PREFECT_HOST:-127.0.0.1}"
echo "PREFECT_HOME=$PREFECT_HOME"
echo "export PREFECT_API_URL=http://$HOST:$PORT/api"
exec .venv/bin/prefect server start --host "$HOST" --port "$PORT"
