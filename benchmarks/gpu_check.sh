#!/usr/bin/env bash
# The prepared device check: one call, at most 480 s on one H100/H200, no network.
#
#   PYTHONPATH=src bash benchmarks/gpu_check.sh OUTDIR [ARCHIVE]
#
# from the repository root (ARCHIVE: the JPEG CIFAR-10 archive, default
# data/cifar10-jpeg.tar.gz, a git-ignored folder carried with the checkout). Stages, in
# order, each under its own `timeout` (never past the budget; 124 = timed out):
#   data             decode the archive once into the cache                  <= 40 s
#   tests            the CUDA tests (pytest -m "not slow")                    <= 60 s
#   bench_train      bench_train.py ResNet-20/56/110 vs the seed-style loop   <= 90 s
#   bench_landscape  bench_landscape.py ResNet-56, fp32 exact then bf16       <= 60 s
#   train            the full recipe of ResNet-20 (64,000 iterations) alone, with the
#                    time left but 40 s (expected ~175 s); then PlainNet-20 with the time
#                    then left, its recipe scaled to fit the rate ResNet-20 measured
#                    (the full one if it fits; skipped under 30 s); both in this call,
#                    nothing relies on a second one
#   tables           `depthscape tables` of the finished runs (accuracies)   <= 25 s
#   report           the runs' lines and results.csv                        <= 15 s
# Exits 1 where a stage failed or timed out. Into OUTDIR, at most 8 files, none in folders: summary.txt (written first and rewritten
# after every stage: device, versions, each stage's exit code, seconds and figures),
# results.csv (a header, then one row per finished run with docs/results.csv's columns:
# append with `tail -n +2`), tests.log, bench_train.log, bench_landscape.log, train.log
# and the two runs' CSV logs. Checkpoints and caches stay in a work folder outside it.
#
# Overrides (environment):
#   GPU_CHECK_DEVICE   device of every stage (default cuda)
#   GPU_CHECK_BUDGET   seconds for the whole script (default 480)
#   GPU_CHECK_STAGES   stages to run (default "data tests bench_train bench_landscape train")
#   GPU_CHECK_SCALE    multiplies ResNet-20's recipe length (default 1: the full recipe)
#   GPU_CHECK_TINY=1   a dry run at a tiny scale (ResNet-8/PlainNet-8, a few steps), e.g.
#                      GPU_CHECK_TINY=1 GPU_CHECK_DEVICE=cpu GPU_CHECK_STAGES="data bench_train
#                      bench_landscape train" bash benchmarks/gpu_check.sh /tmp/check ARCHIVE
#   GPU_CHECK_WORK     the work folder (default: a new one under /tmp)
#   GPU_CHECK_COMMIT   the commit for results.csv where the checkout has no .git
#   PYTHON             the interpreter (default python3)
set -u

OUT=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR [ARCHIVE]}
ARCHIVE=${2:-data/cifar10-jpeg.tar.gz}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-480}
STAGES=${GPU_CHECK_STAGES:-data tests bench_train bench_landscape train}
SCALE=${GPU_CHECK_SCALE:-1}
TINY=${GPU_CHECK_TINY:-0}
PY=${PYTHON:-python3}
START=$(date +%s)
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check.XXXXXX)}
mkdir -p "$WORK/logs" "$WORK/cache"
export DEPTHSCAPE_DATA="$WORK/cache"
COMMIT=${GPU_CHECK_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
STAGE_LINES="$WORK/stages.txt"
: > "$STAGE_LINES"
FAILED=0  # the exit status: 1 where a stage failed or timed out

if [ "$TINY" = 1 ]; then
    BENCH_TRAIN=(--models resnet8 --iterations 2 --window 1 --baseline-iterations 1
                 --baseline-warmup 1 --workers 0)
    BENCH_LAND=(--models resnet8 --images 24 --points 2 --workers 1)
    DEPTH=8 TRAIN_LENGTH=64000 SCALE=$(awk 'BEGIN { print 4 / 64000 }')
    TRAIN_EXTRA=(--log-every 2 --checkpoint-every 3)
else
    BENCH_TRAIN=(--models resnet20 resnet56 resnet110 --iterations 500 --window 100
                 --baseline-iterations 200 --workers 8)
    BENCH_LAND=(--models resnet56 --images 5000 --points 4)
    DEPTH=20 TRAIN_LENGTH=64000
    TRAIN_EXTRA=(--checkpoint-every 8000)
fi
RESNET="resnet$DEPTH" PLAIN="plain$DEPTH"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wants() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

write_summary() {
    {
        echo "depthscape gpu_check, $(date -u '+%Y-%m-%d %H:%M UTC'), device $DEVICE, commit $COMMIT," \
             "budget ${BUDGET} s, $(( $(date +%s) - START )) s so far$([ "$TINY" = 1 ] && echo ', TINY dry run')"
        cat "$WORK/versions.txt" 2>/dev/null
        echo; echo "stages (exit 124: timed out):"; cat "$STAGE_LINES"
        echo; echo "tests:"; grep -E "passed|failed|error" "$WORK/logs/tests.log" 2>/dev/null | tail -n 3
        echo; echo "bench_train:"; grep -E "^(cuda|cpu): | \| |FAILED" "$WORK/logs/bench_train.log" 2>/dev/null
        echo; echo "bench_landscape:"; grep -E "ratio|not below|Error" "$WORK/logs/bench_landscape.log" 2>/dev/null
        echo; echo "training:"; cat "$WORK/training.txt" 2>/dev/null
        grep -E "^depthscape: " "$WORK/logs/train.log" 2>/dev/null | tail -n 4
        echo; echo "files: $(cd "$OUT" && ls | tr '\n' ' ')"
    } > "$WORK/summary.txt" 2>&1
    cp "$WORK/summary.txt" "$OUT/summary.txt"
}

# stage NAME LIMIT LOG COMMAND...: COMMAND under `timeout` (at most LIMIT and never past the
# budget less 15 s), appending to LOG; records the exit code and seconds, then the summary.
stage() {
    local name=$1 limit=$2 log=$3; shift 3
    local remaining=$(( $(left) - 15 ))
    (( limit > remaining )) && limit=$remaining
    if (( limit < 5 )); then
        echo "$name: skipped (no time left)" >> "$STAGE_LINES"; write_summary; return 1
    fi
    local t0; t0=$(date +%s)
    echo "== $name (limit ${limit} s): $*" >> "$log"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    (( rc != 0 )) && FAILED=1
    echo "$name: exit $rc, $(( $(date +%s) - t0 )) s (limit ${limit} s)" >> "$STAGE_LINES"
    case $(basename "$log") in  # what comes back: at most 8 files (see the top)
        tests.log|bench_train.log|bench_landscape.log|train.log) cp "$log" "$OUT/" 2>/dev/null ;;
    esac
    write_summary
    return $rc
}

"$PY" - "$DEVICE" > "$WORK/versions.txt" 2>&1 <<'EOF'
import platform
import sys

import torch

device = sys.argv[1]
if device.startswith("cuda") and torch.cuda.is_available():
    name = torch.cuda.get_device_name(device)
else:
    name = f"{platform.processor() or 'cpu'} (no CUDA)" if device.startswith("cuda") else device
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"device name: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
      f"Python {platform.python_version()}")
EOF
write_summary

if wants data; then  # the benchmarks and trainings then read the decoded cache
    stage data 40 "$WORK/logs/data.log" "$PY" -c "import sys; from depthscape.core.data import load_dataset; d = load_dataset('cifar10', sys.argv[1]); print(len(d.train), 'train,', len(d.test), 'test images')" "$ARCHIVE"
fi
if wants tests; then
    stage tests 60 "$WORK/logs/tests.log" "$PY" -m pytest -q -m "not slow" -p no:cacheprovider \
        tests/test_cuda_graph.py tests/test_switches.py \
        tests/test_data.py::test_normalising_a_cuda_batch_never_waits_for_the_gpu
fi
if wants bench_train; then
    stage bench_train 90 "$WORK/logs/bench_train.log" "$PY" benchmarks/bench_train.py \
        --device "$DEVICE" "${BENCH_TRAIN[@]}" --data-dir "$ARCHIVE"
fi
if wants bench_landscape; then
    stage bench_landscape 60 "$WORK/logs/bench_landscape.log" bash -c '
        "$0" benchmarks/bench_landscape.py --precision fp32 "$@"; a=$?
        "$0" benchmarks/bench_landscape.py --precision bf16 "$@"; b=$?
        exit $(( a > b ? a : b ))' "$PY" --device "$DEVICE" "${BENCH_LAND[@]}" --data "$ARCHIVE"
fi
if wants train; then
    common=(--data-dir "$ARCHIVE" --device "$DEVICE" --out "$WORK/runs" --no-progress
            --overwrite "${TRAIN_EXTRA[@]}")
    log="$WORK/logs/train.log"
    stage train_resnet "$(( $(left) - 40 ))" "$log" "$PY" -m depthscape train resnet "$DEPTH" \
        --scale "$SCALE" "${common[@]}"
    resnet_rc=$?
    # PlainNet-20 with the time left, at the rate ResNet-20 just measured (a step costs the
    # same; the rate includes its evaluations): the full recipe if it fits, else scaled
    rate=$(awk -F, 'NR == 1 { for (i = 1; i <= NF; i++) c[$i] = i; next }
                    { it = $c["iteration"]; s = $c["elapsed_s"] }
                    END { if (s > 0) printf "%.3f", it / s; else print 0 }' \
           "$WORK/runs/logs/${RESNET}_log.csv" 2>/dev/null)
    seconds=$(( $(left) - 40 - 25 ))  # less its start-up (25 s), then the tables and the report
    scale=$SCALE
    if [ "$TINY" != 1 ]; then
        scale=$(awk -v r="${rate:-0}" -v t="$seconds" -v n="$TRAIN_LENGTH" \
                'BEGIN { s = int(100 * r * t / n) / 100; if (s > 1) s = 1; print s }')
    fi
    if (( resnet_rc != 0 )); then
        echo "train_plain: skipped (ResNet-$DEPTH did not finish)" >> "$STAGE_LINES"
    elif (( seconds < 30 )) || ! awk -v s="$scale" -v tiny="$TINY" 'BEGIN { exit !(s >= 0.05 || tiny == 1) }'; then
        echo "train_plain: skipped (${seconds} s left at ${rate:-0} it/s: recipe scale ${scale})" >> "$STAGE_LINES"
    else
        echo "== plainnet: ${rate:-0} it/s measured, ${seconds} s left: recipe scale $scale" >> "$log"
        stage train_plain "$(( $(left) - 40 ))" "$log" "$PY" -m depthscape train plainnet \
            "$DEPTH" --scale "$scale" "${common[@]}"
    fi
    stage tables 25 "$log" "$PY" -m depthscape tables "$RESNET" "$PLAIN" --run-dir "$WORK/runs" \
        --out "$WORK/tables" --device "$DEVICE" --data-dir "$ARCHIVE" --no-progress
    stage report 15 "$WORK/logs/report.log" "$PY" benchmarks/gpu_check_report.py "$WORK/runs" \
        "$WORK/tables/runs.csv" "$OUT/results.csv" --device "$DEVICE" --commit "$COMMIT" \
        --models "$RESNET" "$PLAIN"
    grep -v "^==" "$WORK/logs/report.log" > "$WORK/training.txt" 2>/dev/null
    cp "$WORK"/runs/logs/*_log.csv "$OUT"/ 2>/dev/null
fi
write_summary
cat "$OUT/summary.txt"
exit $FAILED
