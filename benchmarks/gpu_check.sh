#!/usr/bin/env bash
# The prepared device check of the GPU engine: one script, at most 9 minutes on one H100/H200.
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh OUTDIR [ARCHIVE]
#
# run from the repository root (ARCHIVE: the JPEG CIFAR-10 archive, default
# ../shared/data/cifar10-jpeg.tar.gz). Stages, each under its own `timeout`:
#   tests           the CUDA tests and the switch tests (pytest -m "not slow")
#   bench_train     benchmarks/bench_train.py on the device (short)
#   bench_landscape benchmarks/bench_landscape.py on the device, fp32 and bf16 (short)
#   train           `depthscape train resnet 20` and `plainnet 20`, the full recipe (64,000
#                   iterations), concurrently on the one GPU with the CUDA defaults (captured
#                   step, bf16, channels-last); given the time left, resumable: rerun the
#                   script (GPU_CHECK_STAGES=train) to continue them
# then OUTDIR/summary.txt: date, device, versions, each stage's exit code and seconds, the
# benchmark lines, the final (or last logged) test accuracies; the CSV logs are copied beside it.
#
# Overrides (environment), e.g. a dry run on the CPU:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SCALE=0.002 bash benchmarks/gpu_check.sh /tmp/check
#   GPU_CHECK_DEVICE   device for every stage (default cuda)
#   GPU_CHECK_SCALE    multiplies the training recipe's length (default 1: the full recipe)
#   GPU_CHECK_BUDGET   seconds for the whole script (default 540)
#   GPU_CHECK_STAGES   the stages to run (default "tests bench_train bench_landscape train")
#   GPU_CHECK_CACHE    the decoded-data cache (default /tmp/depthscape-gpu-check-cache)
#   PYTHON             the interpreter (default python)
set -u

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [ARCHIVE]}
ARCHIVE=${2:-../shared/data/cifar10-jpeg.tar.gz}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SCALE=${GPU_CHECK_SCALE:-1}
BUDGET=${GPU_CHECK_BUDGET:-540}
STAGES=${GPU_CHECK_STAGES:-tests bench_train bench_landscape train}
PY=${PYTHON:-python}
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
export DEPTHSCAPE_DATA=${GPU_CHECK_CACHE:-/tmp/depthscape-gpu-check-cache}
mkdir -p "$OUT" "$DEPTHSCAPE_DATA"
OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
STAGE_LINES="$OUT/stages.txt"
# appended: a rerun that resumes the trainings keeps the earlier stages' lines
echo "-- $(date -u '+%H:%M:%S UTC'): $STAGES (device $DEVICE, budget ${BUDGET} s)" >> "$STAGE_LINES"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wants() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# stage NAME SECONDS COMMAND...: run COMMAND under `timeout` (never past the budget), log to
# OUTDIR/NAME.log, record the exit code (124: timed out) and the seconds taken.
stage() {
    local name=$1 limit=$2; shift 2
    local remaining; remaining=$(( $(left) - 20 ))  # keep 20 s for the summary
    (( limit > remaining )) && limit=$remaining
    if (( limit < 5 )); then
        echo "$name: skipped (no time left)" >> "$STAGE_LINES"; return
    fi
    local t0; t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*" >&2
    timeout --signal=TERM --kill-after=20 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc, $(( $(date +%s) - t0 )) s (limit ${limit} s)" >> "$STAGE_LINES"
}

if wants tests; then
    stage tests 100 "$PY" -m pytest -q -m "not slow" tests/test_cuda_graph.py tests/test_switches.py \
        tests/test_graph_step.py
fi
if wants bench_train; then
    # decode the archive into the cache first, so neither benchmark nor training pays for it
    stage data 90 "$PY" -c "import sys; from depthscape.core.data import load_dataset; load_dataset('cifar10', sys.argv[1])" "$ARCHIVE"
    if [ "$DEVICE" = cpu ]; then models="resnet20"; iters=8; else models="resnet20 resnet56 resnet110"; iters=30; fi
    stage bench_train 90 "$PY" benchmarks/bench_train.py --device "$DEVICE" --models $models \
        --iterations "$iters" --data-dir "$ARCHIVE"
fi
if wants bench_landscape; then
    if [ "$DEVICE" = cpu ]; then images=200; points=2; else images=5000; points=4; fi
    stage bench_landscape 70 bash -c "'$PY' benchmarks/bench_landscape.py --device '$DEVICE' --precision fp32 \
        --models resnet20 resnet56 --images $images --points $points --data '$ARCHIVE'; a=\$?; \
        '$PY' benchmarks/bench_landscape.py --device '$DEVICE' --precision bf16 \
        --models resnet20 resnet56 --images $images --points $points --data '$ARCHIVE'; b=\$?; \
        exit \$(( a > b ? a : b ))"
fi
if wants train; then
    # both runs at once on the one GPU; --resume continues a run an earlier check left unfinished
    common=(--data-dir "$ARCHIVE" --device "$DEVICE" --scale "$SCALE" --out "$OUT/runs" --resume
            --no-progress --checkpoint-every 2000)
    limit=$(( $(left) - 30 ))
    stage train_resnet20 "$limit" "$PY" -m depthscape train resnet 20 "${common[@]}" &
    stage train_plainnet20 "$limit" "$PY" -m depthscape train plainnet 20 "${common[@]}" &
    wait
fi

SUMMARY="$OUT/summary.txt"
{
    echo "depthscape gpu_check, $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, recipe scale $SCALE"
    "$PY" - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
name = torch.cuda.get_device_name(device) if device.startswith("cuda") and torch.cuda.is_available() else device
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"device name: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}")
EOF
    echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo; echo "stages:"; cat "$STAGE_LINES"
    echo; echo "tests:"; tail -n 3 "$OUT/tests.log" 2>/dev/null
    echo; echo "bench_train:"; grep -E "ratio|torch " "$OUT/bench_train.log" 2>/dev/null
    echo; echo "bench_landscape:"; grep -E "ratio|difference|images" "$OUT/bench_landscape.log" 2>/dev/null
    echo; echo "training (full recipe unless the scale says otherwise):"
    "$PY" - "$OUT/runs" <<'EOF'
import csv
import sys
import torch
from depthscape.core.models import canonical_name
from depthscape.core.runs import run_paths
for family in ("resnet", "plainnet"):
    name = canonical_name(family, "20")
    paths = run_paths(sys.argv[1], name)
    rows = list(csv.DictReader(open(paths.log))) if paths.log.exists() else []
    if paths.final.exists():
        saved = torch.load(paths.final, map_location="cpu", weights_only=True)
        m = saved.get("metrics", {})
        print(f"{name}: finished, iteration {saved.get('iteration')}, final test accuracy "
              f"{m.get('test_acc', float('nan')):.2f} %, {m.get('elapsed_s', 0):.0f} s training")
    elif paths.resume.exists():
        saved = torch.load(paths.resume, map_location="cpu", weights_only=True)
        last = f", last row: test accuracy {float(rows[-1]['test_acc']):.2f} %" if rows else ""
        print(f"{name}: NOT finished, stopped at iteration {saved['iteration']}{last} "
              f"(rerun with GPU_CHECK_STAGES=train to resume)")
    else:
        print(f"{name}: did not start (see its log)")
EOF
} > "$SUMMARY" 2>&1
cp "$OUT"/runs/logs/*_log.csv "$OUT"/ 2>/dev/null
cat "$SUMMARY"
