#!/usr/bin/env bash
# The README's main job on a fresh machine: install, then run the whole DVC pipeline on the embedded default
# (world -> a poisoned demo drop -> fine-tune -> extraction -> projector audit -> head profiling -> GMMs ->
# EM vote -> GX gate -> release). The first run pretrains the world's base model (~15 min on 2 cores);
# later runs reuse every cached stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
source infra/env.sh
source .venv/bin/activate
[ -d .dvc ] || dvc init -q
dvc repro "$@"
echo
echo "screening metrics:"; cat work/metrics/em_vote.json
echo "report:  $(pwd)/work/report/report.html"
[ -d work/release ] && echo "release: $(pwd)/work/release" || true
