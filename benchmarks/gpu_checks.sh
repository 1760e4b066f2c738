#!/usr/bin/env bash
# The GPU checks of issue 15 in one run, for a machine with an NVIDIA GPU (each prints its own figures):
# the CUDA-only tests, GMM profiling and drift spectra on the GPU against the CPU, and the LLaVA-1.5-7B-shaped
# screen without and with --compile. Outputs under ${OUT:-gpu-checks}/.  bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-checks}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi -L | tee "$OUT/gpus.txt"
"$PY" -m pytest -q -p no:cacheprovider tests/detect/test_gmm.py -k cuda 2>&1 | tail -3 | tee "$OUT/tests.txt"
"$PY" benchmarks/bench_gmm.py --device cuda --sk-heads 0 2>&1 | tee "$OUT/bench_gmm_cuda.txt"
"$PY" benchmarks/bench_drift.py --device cuda 2>&1 | tee "$OUT/bench_drift_cuda.txt"
"$PY" benchmarks/gpu_screen.py --samples 1000 --json "$OUT/gpu_screen.json" 2>&1 | tee "$OUT/gpu_screen.txt"
"$PY" benchmarks/gpu_screen.py --samples 1000 --compile --skip-cli --json "$OUT/gpu_screen_compile.json" 2>&1 \
  | tee "$OUT/gpu_screen_compile.txt"
