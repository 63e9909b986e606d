#!/usr/bin/env bash
# depthscape quick start. Sets up .venv (once; again when pyproject.toml changes), then:
#   bash run.sh                 the main job: the quick study (train the seven models, curves,
#                               landscapes, tables, sharpness, report.html) into ./study
#   bash run.sh test [ARGS]     the test suite (pytest ARGS)
#   bash run.sh COMMAND [ARGS]  any depthscape command, e.g. `bash run.sh train resnet 56`
# Real CIFAR-10 is taken from ../shared/data/cifar10-jpeg.tar.gz where it lies (or from
# $DEPTHSCAPE_DATA_DIR); elsewhere torchvision downloads it on first use.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.depthscape-installed"
want=$(cat pyproject.toml | cksum)
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setting up $VENV (torch, torchvision, numpy, matplotlib, tqdm, h5py, plotly, pytest)..." >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
    "$VENV/bin/python" -m pip install -q -e '.[test]' >&2
    echo "$want" > "$stamp"
fi

data_args=()
data_dir=${DEPTHSCAPE_DATA_DIR:-../shared/data/cifar10-jpeg.tar.gz}
if [ -e "$data_dir" ]; then
    data_args=(--data-dir "$data_dir")
fi

case "${1:-study}" in
    test)
        shift || true
        exec "$VENV/bin/python" -m pytest "$@"
        ;;
    study)
        [ $# -gt 0 ] && shift
        exec "$VENV/bin/depthscape" study --budget quick --out study "${data_args[@]}" "$@"
        ;;
    *)
        exec "$VENV/bin/depthscape" "$@"
        ;;
esac
