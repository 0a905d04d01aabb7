#!/usr/bin/env bash
# GPU check on one CUDA GPU with cohorts of 1,000, 10,000 and 100,000 clients (synthetic
# workload of benchmarks/sim_throughput.py):
# 1. benchmarks/gpu_round.py: full fedloom rounds per second with the updates kept on the
#    GPU (selection, training, validation, reduction, server optimizer, the round record;
#    DP=1 adds central DP), the training alone, and a plain vmap loop on the same GPU;
# 2. benchmarks/sim_throughput.py: the vectorized executor's training with the updates
#    left on the GPU or copied to the host, and its schedule and deltas against the CPU's.
# Needs only a Python with torch and numpy: runs the project from src/ on PYTHONPATH,
# installs nothing, reaches no package registry. Finishes within 5 minutes.
# Results: $OUT/gpu_check.json (or benchmarks/results/gpu_check.json): the full rounds
# under "full_round", the training figures under "training", then the full rounds'
# targets; each script's own JSON beside it (gpu_round.json, gpu_training.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
COHORTS="${COHORTS:-1000,10000,100000}"
OUTDIR="${OUT:-benchmarks/results}"
mkdir -p "$OUTDIR"
"$PY" - <<PYEOF
import torch
print("torch", torch.__version__)
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "no CUDA device visible"
    print("device", torch.cuda.get_device_name(0))
PYEOF
DP_FLAG=()
if [ "${DP:-0}" = "1" ]; then DP_FLAG=(--dp); fi
rm -f "$OUTDIR/gpu_round.json" "$OUTDIR/gpu_training.json"  # never merge an older run's
status=0
timeout 160 "$PY" benchmarks/gpu_round.py --device "$DEVICE" --cohorts "$COHORTS" \
    --repeats 5 ${DP_FLAG[@]+"${DP_FLAG[@]}"} --json "$OUTDIR/gpu_round.json" || status=$?
timeout 110 "$PY" benchmarks/sim_throughput.py --device "$DEVICE" --cohorts "$COHORTS" \
    --repeats 3 --json "$OUTDIR/gpu_training.json" || status=$?
"$PY" - "$OUTDIR" <<'PYEOF'
import json
import sys
from pathlib import Path

out = Path(sys.argv[1])
merged = {}
for key, name in (("full_round", "gpu_round.json"), ("training", "gpu_training.json")):
    path = out / name
    merged[key] = json.loads(path.read_text()) if path.exists() else None
merged["targets"] = (merged["full_round"] or {}).get("targets", [])
(out / "gpu_check.json").write_text(json.dumps(merged, indent=2) + "\n")
print("wrote", out / "gpu_check.json")
PYEOF
exit "$status"
