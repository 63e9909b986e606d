#!/usr/bin/env bash
# Does bf16 training cost accuracy? ResNet-20 at a scaled spec recipe, trained in bf16 and in
# fp32 (channels-last both, same seeds, same data), every checkpoint evaluated the same way
# by `depthscape tables` (float32, eval mode, all training and test images).
#
#   bash benchmarks/precision_check.sh OUTDIR DATA [SCALE] [SEED ...]
#
# SCALE (default 0.05: 3,200 iterations, decays at 1,600 and 2,400) multiplies the spec's
# schedule; SEEDS default to 0 1. Runs bf16 and fp32 of each seed in turn (a pair is
# complete before the next seed starts); rerunning resumes what an interruption left.
# Writes OUTDIR/{bf16,fp32}/ (runs and tables) and OUTDIR/results.csv (rows in the columns
# of docs/results.csv, recipe "scaled"). Needs the CPU to itself: nothing else heavy at once.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUTDIR DATA [SCALE] [SEED ...]" >&2; exit 2; }
out=$1 data=$2 scale=${3:-0.05}
shift $(( $# < 3 ? $# : 3 ))
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1)
[ -e "$data" ] || { echo "$0: no data at $data" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
export PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import sys; from depthscape.core.runtime import cpu_bf16_supported as ok; sys.exit(not ok())" \
  || { echo "$0: this CPU has no native bf16: nothing to compare" >&2; exit 2; }
mkdir -p "$out"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores; scale $scale, seeds ${seeds[*]}"
for seed in "${seeds[@]}"; do
  for precision in bf16 fp32; do
    start=$(date +%s)
    "$py" -m depthscape train resnet 20 --precision "$precision" --channels-last --seed "$seed" \
      --device cpu --scale "$scale" --data-dir "$data" --resume --no-progress --out "$out/$precision" \
      > "$out/$precision.seed$seed.log" 2>&1 || { tail -3 "$out/$precision.seed$seed.log"; exit 1; }
    echo "trained $precision seed $seed in $(( $(date +%s) - start )) s"
  done
done
header=""
for precision in bf16 fp32; do
  "$py" -m depthscape tables --run-dir "$out/$precision" --data-dir "$data" --device cpu --no-progress \
    > "$out/$precision.tables.log" 2>&1 || { tail -3 "$out/$precision.tables.log"; exit 1; }
  "$py" "$here/benchmarks/gpu_check_report.py" "$out/$precision" "$out/$precision/tables/runs.csv" \
    "$out/$precision.results.csv" --device cpu --models resnet20 \
    --commit "$(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  [ -n "$header" ] || { head -1 "$out/$precision.results.csv" > "$out/results.csv"; header=1; }
  tail -n +2 "$out/$precision.results.csv" >> "$out/results.csv"
done
cat "$out/results.csv"
