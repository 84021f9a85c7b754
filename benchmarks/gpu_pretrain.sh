#!/usr/bin/env bash
# Prepared device call: continue pretraining the built-in model on one GPU, inside one call's limit.
#
# here:   .venv/bin/python benchmarks/gpu_bench_pack.py pack            (wheels -> benchmarks/work/gpu_pack)
# there:  bash benchmarks/gpu_pretrain.sh                                (device call, carry benchmarks/work/gpu_pack
#         and, from the second call on, benchmarks/work/gpu_pretrain_state; timeout_s 600)
# smoke:  SMOKE=1 PYTHON=.venv/bin/python SKIP_INSTALL=1 OUT=/tmp/gp bash benchmarks/gpu_pretrain.sh
#
# Writes into $OUT: the training state (so the next call resumes: copy $OUT/state to
# benchmarks/work/gpu_pretrain_state and carry it), the exported model folder (export/, final or, when the
# time ran out, the latest checkpoint), and log.txt. Every step runs under `timeout`; BUDGET_S bounds training.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vs_gpu_pretrain}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-450}
EPOCHS=${EPOCHS:-200}
ITERS=${ITERS:-250}
CASES=${CASES:-800}
DEVICE=${DEVICE:-cuda}
if [ "${SMOKE:-0}" = 1 ]; then EPOCHS=1 ITERS=2 CASES=4 DEVICE=cpu BUDGET_S=300; fi
mkdir -p "$OUT"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  timeout 120 "$PY" benchmarks/gpu_bench_pack.py install --pack benchmarks/work/gpu_pack --target /tmp/site \
    > "$OUT/install.txt" 2>&1 || { echo "install failed (see install.txt)"; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site"
fi
STATE="$OUT/state"
if [ -d benchmarks/work/gpu_pretrain_state ] && [ ! -d "$STATE" ]; then cp -r benchmarks/work/gpu_pretrain_state "$STATE"; fi
export VS_RAW="$STATE/raw" VS_PREPROCESSED=/tmp/vs_gpu_pre VS_RESULTS="$STATE/results" PYTHONUNBUFFERED=1
timeout "$BUDGET_S" "$PY" -m vessel_seg.cli.pretrain -d 994 --cases "$CASES" --seed 2 --epochs "$EPOCHS" \
  --iterations-per-epoch "$ITERS" --init builtin --warmup 200 --device "$DEVICE" --export "$OUT/export" \
  > "$OUT/log.txt" 2>&1
rc=$?
if [ ! -d "$OUT/export" ]; then  # the time ran out before the last epoch: export the latest checkpoint
  timeout 60 "$PY" - "$OUT" <<'PYEOF' >> "$OUT/log.txt" 2>&1
import os, sys
from pathlib import Path
from vessel_seg.pretraining import export_builtin_model
run = Path(os.environ["VS_RESULTS"]) / "Dataset994_VesselPretrain" / "vsTrainer__pretrain__3d_fullres"
print(export_builtin_model(run, Path(sys.argv[1]) / "export", "latest checkpoint of an unfinished GPU run",
                           checkpoint="latest"))
PYEOF
fi
rm -rf "$STATE/raw"  # regenerated from the seed by the next call (seconds with -np 16); keeps $OUT small
grep -E "^epoch|resuming|stopped" "$OUT/log.txt" | tail -5
exit $rc
