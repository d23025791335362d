#!/usr/bin/env bash
# The GPU measurements, one stage per device call, each within the 10-minute limit with margin.
# Run `smoke` first on any GPU: it finds a crash or a recompilation storm in minutes, before a stage
# spends its window on it.
#   bench/device.sh smoke        # every GPU code path once (bench/smoke.py): graphs, peak memory, wall time
#   bench/device.sh smoke --dry  # the same phases on the CPU (aot_eager backend); CI runs this
#   bench/device.sh bench        # WRN-34-10 throughput: PGD-7 AT and AT + FDM, fast vs eager fp32 -> BENCHMARKS.md
#   bench/device.sh bench-ft     # WRN-34-10 throughput: fine-tuning k = 1 and k = all
#   bench/device.sh bench-eval   # WRN-34-10 PGD-100 (own vs foolbox), then the trained quick source's PGD-100
#   bench/device.sh accuracy     # the quick source trained on both paths: accuracy does not pay for speed
#   bench/device.sh calibrate    # WRN-16-4 (the `full` model) rates + the `full` suite's time estimate
#   bench/device.sh figures      # the `full` figures (empty cache), manifests with wall times
#   bench/device.sh ddp          # DDP scaling of PGD-7 AT on WRN-34-10 over every GPU the device has
# Outputs go under $OUT (the device tool's folder) or bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # rtlkit importable without an install, notebook kernels included
mkdir -p "$OUT"
stage=${1:-smoke}
shift || true
if [ "$stage" != smoke ] || [ "${1:-}" != --dry ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
WRN="--model wrn-34-10 --accuracy none --trained none --out $OUT"
case "$stage" in
  smoke)
    TORCH_LOGS="${TORCH_LOGS:-recompiles}" python -m bench.smoke --out "$OUT" "$@" ;;
  bench)
    python -m bench.throughput $WRN --only "PGD-7 AT" ;;
  bench-ft)
    python -m bench.throughput $WRN --only fine-tune ;;
  bench-eval)
    python -m bench.throughput --model wrn-34-10 --accuracy none --trained quick --out "$OUT" --only PGD-100 ;;
  accuracy)
    python -m bench.throughput --model wrn-34-10 --only none --accuracy quick --trained none --out "$OUT" ;;
  calibrate)
    python -m bench.throughput --model wrn-16-4 --input 1x28x28 --classes 10 --batch 128 --eval-batch 500 \
      --accuracy none --trained none --out "$OUT/wrn-16-4"
    rtlkit plan --profile full --bench "$(ls -t "$OUT"/wrn-16-4/*.json | head -1)" --json "$OUT/plan-full.json" ;;
  figures)
    export RTLKIT_RUNS="$OUT/runs"
    rtlkit figures --profile full --figures-dir "$OUT/figures" ;;
  ddp)
    python -m bench.ddp_scaling --model wrn-34-10 --procs 1 2 4 8 --out "$OUT" ;;
  *) echo "usage: $0 smoke [--dry]|bench|bench-ft|bench-eval|accuracy|calibrate|figures|ddp" >&2; exit 2 ;;
esac
