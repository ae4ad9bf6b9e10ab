#!/usr/bin/env bash
# One prepared command for one NVIDIA H200 (finishes in under 8 minutes):
# float32 and bf16, T = 50, a batch sweep, images per second, ms per
# iteration and model FLOP utilisation, leat-jax beside the torch reference.
# Run from the repository root on the device machine:
#   bash benchmarks/gpu.sh            (results under $OUT or benchmarks/gpu/)
# Needs jax[cuda12] and torch with CUDA there; the golden layouts (weights
# recipe) under $LEAT_GOLDEN_DIR or ../shared/golden.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
# Highest matmul precision only for golden checks; timings use the default.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 420 python -m benchmarks.run --iterations 50 --batch 16 --batch-sizes 1,8,32,64 --repeats 3 \
    --no-torch-compile --json "$out/results_gpu.json" --results-md "$out/RESULTS_gpu.md" \
    --plot "$out/throughput_gpu.png" 2>&1 | tee "$out/log.txt"
