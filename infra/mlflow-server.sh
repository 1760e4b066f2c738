#!/usr/bin/env bash
# Start a local MLflow tracking server on the repo's sqlite store (MLflow 3 has no file store) and print the
# MLFLOW_TRACKING_URI to export. Artifacts are served by the server from mlruns/ next to the database.
#   bash infra/mlflow-server.sh [PORT] [DB]    (default 5000, <repo>/mlflow.db)
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
PORT="${1:-${PG_MLFLOW_PORT:-5000}}"
DB="$(realpath -m "${2:-${PG_MLFLOW_DB:-mlflow.db}}")"
HOST="${PG_MLFLOW_HOST:-127.0.0.1}"
mkdir -p "$(dirname "$DB")/mlruns"
echo "export MLFLOW_TRACKING_URI=http://$HOST:$PORT"
exec .venv/bin/mlflow server --host "$HOST" --port "$PORT" \
  --backend-store-uri "sqlite:///$DB" \
  --artifacts-destination "$(dirname "$DB")/mlruns" --serve-artifacts
