#!/usr/bin/env bash
# Start a Dask scheduler and workers for the extraction fan-out and print the PG_DASK_ADDRESS to export.
# One worker per GPU, each pinned with its own CUDA_VISIBLE_DEVICES and one thread (a shard is one model
# forward loop); without GPUs, N_WORKERS CPU workers. Ctrl-C stops all of them.
#   bash infra/dask-cluster.sh [PORT]          (default 8786; N_WORKERS=2 for CPU workers)
set -euo pipefail
cd "$(dirname "$0")/.."
source infra/env.sh
PORT="${1:-${PG_DASK_PORT:-8786}}"
HOST="${PG_DASK_HOST:-127.0.0.1}"
ADDRESS="tcp://$HOST:$PORT"
LOGS="$(mktemp -d -t pg-dask-XXXXXX)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM

.venv/bin/dask scheduler --host "$HOST" --port "$PORT" --dashboard-address "$HOST:0" >"$LOGS/scheduler.log" 2>&1 &
pids+=($!)
sleep 2

if command -v nvidia-smi >/dev/null 2>&1 && N_GPUS="$(nvidia-smi -L | wc -l)" && [ "$N_GPUS" -gt 0 ]; then
  for gpu in $(seq 0 $((N_GPUS - 1))); do
    CUDA_VISIBLE_DEVICES="$gpu" .venv/bin/dask worker "$ADDRESS" --nthreads 1 --name "gpu$gpu" \
      --resources "GPU=1" >"$LOGS/worker-gpu$gpu.log" 2>&1 &
    pids+=($!)
  done
  echo "started $N_GPUS GPU worker(s)"
else
  .venv/bin/dask worker "$ADDRESS" --nworkers "${N_WORKERS:-2}" --nthreads 1 >"$LOGS/workers.log" 2>&1 &
  pids+=($!)
  echo "started ${N_WORKERS:-2} CPU worker(s)"
fi
echo "logs in $LOGS"
echo "export PG_DASK_ADDRESS=$ADDRESS"
wait
