#!/usr/bin/env bash
# The GPU measurements of issue 3, one stage per device call (each fits the 10-minute limit):
#   bench/device.sh bench      # WRN-34-10 throughput table + accuracy check  -> BENCHMARKS.md
#   bench/device.sh calibrate  # WRN-16-4 (the `full` model) rates + the `full` suite's time estimate
#   bench/device.sh figures    # the `full` figures (empty cache), manifests with wall times
#   bench/device.sh ddp        # DDP scaling of PGD-7 AT on WRN-34-10 over every GPU the device has (issue 15)
# Outputs go under $OUT (the device tool's folder) or bench/results.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # rtlkit importable without an install, notebook kernels included
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
case "${1:-bench}" in
  bench)
    python -m bench.throughput --model wrn-34-10 --out "$OUT" ;;
  calibrate)
    python -m bench.throughput --model wrn-16-4 --input 1x28x28 --classes 10 --batch 128 --eval-batch 500 \
      --accuracy none --out "$OUT/wrn-16-4"
    python -m rtlkit.plan --profile full --bench "$(ls -t "$OUT"/wrn-16-4/*.json | head -1)" --json "$OUT/plan-full.json" ;;
  figures)
    export RTLKIT_RUNS="$OUT/runs"
    python -m rtlkit.figures --profile full --figures-dir "$OUT/figures" ;;
  ddp)
    python -m bench.ddp_scaling --model wrn-34-10 --procs 1 2 4 8 --out "$OUT" ;;
  *) echo "usage: $0 bench|calibrate|figures|ddp" >&2; exit 2 ;;
esac
