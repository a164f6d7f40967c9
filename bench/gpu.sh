#!/usr/bin/env bash
# What to run first whenever a GPU is lent: CUDA correctness checks, then the generation
# benchmarks at the published shapes in bf16, random weights (nothing is downloaded or
# installed). Tables land in $OUT (default bench-out/), one file per step; record them in
# bench/RESULTS.md with the machine.
#
#   bash bench/gpu.sh             # on the GPU machine: about 8 minutes on one H100/H200
#   bash bench/gpu.sh --dry-run   # CPU, small shapes, a few jobs: what CI runs so this
#                                 # script cannot rot (tests/test_bench_gpu.py)
#
# The Janus-Pro steps end with the engine step eager vs compiled (compiled_step_speedup).
# The GPU image needs torch and transformers (it has them); JanusFlow also needs diffusers,
# whose steps report "skipped" without it (carry its wheel to run them). Static vs
# continuous batching runs `bench/serve.py --no-db` (the machine has no Postgres: an
# in-memory queue drives the runner and its engine under Poisson arrivals).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONUNBUFFERED=1
if [ "$DRY" = 1 ]; then
  DEVICE=cpu; SHAPES="small"; JOBS=1; REF=1; FLOW_SHAPE=small; FLOW_JOBS=1; LIMIT=600
  INV_SIZES=1,2; INV_FAMILIES=janusflow
  SERVE="--quick"
else
  DEVICE=cuda; SHAPES="1b 7b"; JOBS=64; REF=2; FLOW_SHAPE=1b; FLOW_JOBS=8; LIMIT=240
  INV_SIZES=1,4,16; INV_FAMILIES=janus-pro,janusflow
  SERVE="--shape 1b --jobs 32 --max-batch 16 --loads 0.6"
fi

failed=0
step() {  # step NAME COMMAND...: output to $OUT/NAME.txt and the console; bounded in time
  local name=$1; shift
  echo "== $name: $*"
  timeout "$LIMIT" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ]; then echo "!! $name exited $rc" | tee -a "$OUT/$name.txt"; failed=$((failed + 1)); fi
}

{
  date -u
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
  "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>/dev/null || echo "diffusers: not installed"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step checks "$PY" bench/gpu_checks.py --device "$DEVICE"
for shape in $SHAPES; do
  step "janus-pro-$shape" "$PY" bench/generate.py --family janus-pro --shape "$shape" \
    --jobs "$JOBS" --reference-jobs "$REF" --device "$DEVICE" --compile
done
# shellcheck disable=SC2086  # SERVE is a list of flags
step serve-janus-pro "$PY" bench/serve.py --family janus-pro --device "$DEVICE" --no-db $SERVE
if "$PY" -c "import diffusers" 2>/dev/null; then
  step "janusflow-$FLOW_SHAPE" "$PY" bench/generate.py --family janusflow --shape "$FLOW_SHAPE" \
    --jobs "$FLOW_JOBS" --device "$DEVICE" --steps 4
  step invariance "$PY" bench/invariance.py --device "$DEVICE" --repeats 1 --flow-steps 4 \
    --sizes "$INV_SIZES" --families "$INV_FAMILIES"
else
  echo "janusflow and invariance: skipped (diffusers is not installed)" | tee "$OUT/janusflow-skipped.txt"
fi

echo "gpu_sh_failed_steps=$failed"
[ "$failed" = 0 ]
