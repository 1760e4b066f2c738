# Source me: offline mode and telemetry off for every tool in the stack (CI, scripts, tests).
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true
export DVC_NO_ANALYTICS=1
export GX_ANALYTICS_ENABLED=false
export RAY_USAGE_STATS_ENABLED=0
export PREFECT_HOME="${PREFECT_HOME:-$(mktemp -d -t pg-prefect-XXXXXX)}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # torch threads must not busy-wait on shared CPUs
