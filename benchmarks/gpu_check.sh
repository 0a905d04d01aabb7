#!/usr/bin/env bash
# GPU check: vectorized executor throughput on one CUDA GPU with cohorts of 1,000,
# 10,000 and 100,000 clients (synthetic workload of benchmarks/sim_throughput.py).
# Needs only a Python with torch and numpy: runs the project from src/ on PYTHONPATH,
# installs nothing, reaches no package registry. Finishes within 5 minutes.
# Results: $OUT/gpu_check.json (or benchmarks/results/gpu_check.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
"$PY" - <<PYEOF
import torch
print("torch", torch.__version__)
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device visible"
    print("device", torch.cuda.get_device_name(0))
PYEOF
timeout 280 "$PY" benchmarks/sim_throughput.py --device "$DEVICE" \
    --cohorts "${COHORTS:-1000,10000,100000}" --repeats 3 --json "$OUTDIR/gpu_check.json"
