#!/usr/bin/env bash
# The GPU machine's checks in one script, printing one table (issue 19, item 6):
#   (a) CUDA training steps of configs/diffusion_4090.yaml's network at 256 x 256 in bf16 autocast,
#   (b) the full-CONUS 50-member forecast timing (benchmarks/bench_forecast_scale.py --device cuda, every shipped
#       config; then torch.compile and cudnn.benchmark for the 4090 network if time is left),
#   (c) member bit-identity across member batch sizes 1 / 5 / 25 on CUDA,
#   (d) a 1-worker NCCL TorchTrainer run where `import ray` works.
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine; JSON files go to $OUT (else benchmarks/out)
#   bash benchmarks/gpu_check.sh --smoke    # every part tiny, on the CPU: checks the script before a device call
#
# Every step has its own timeout so that one stuck part cannot take the others' time (about 6 minutes in all).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=""
DEV=cuda
if [[ "${1:-}" == "--smoke" || "${GPU_CHECK_SMOKE:-0}" == 1 ]]; then SMOKE=--smoke; DEV=cpu; fi
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SECONDS=0

echo "## gpu_check $(date -u +%FT%TZ) smoke=${SMOKE:-no}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
$PY -c "import def_ray.config, def_ray.models; print('def_ray imports ok')" || exit 1

echo "## (a) training, (c) bit-identity, (d) ray  [t=${SECONDS}s]"
timeout 150 $PY benchmarks/gpu_check.py --parts train,identity,ray --device $DEV $SMOKE --json "$OUT_DIR/gpu_check.json"

echo "## (b) roofline, every config and grid  [t=${SECONDS}s]"
timeout 170 $PY benchmarks/bench_forecast_scale.py --device $DEV --mode direct $SMOKE \
    --json "$OUT_DIR/bench_forecast_scale_cuda.json"

EXTRA=()
if [[ -z "$SMOKE" ]] && (( SECONDS < 280 )); then
  echo "## (b') 4090 network, full CONUS: cudnn.benchmark, torch.compile  [t=${SECONDS}s]"
  timeout $((350 - SECONDS)) $PY benchmarks/bench_forecast_scale.py --device $DEV --mode direct \
      --configs configs/diffusion_4090.yaml --grids conus --variants bf16-cl-cudnnbench,bf16-cl-compile \
      --json "$OUT_DIR/bench_forecast_scale_cuda_extra.json"
  EXTRA=("$OUT_DIR/bench_forecast_scale_cuda_extra.json")
fi

echo "## the table  [t=${SECONDS}s]"
$PY benchmarks/gpu_check.py --table --json "$OUT_DIR/gpu_check.json" \
    --bench "$OUT_DIR/bench_forecast_scale_cuda.json" "${EXTRA[@]}"
echo "## done in ${SECONDS}s"
