"""The training part of the device check's report: one line per run, and results.csv rows.

    python benchmarks/gpu_check_report.py RUN_DIR TABLES_CSV RESULTS_CSV --device cuda
        [--commit abc1234] [--models resnet20 plain20]

Reads the runs under ``RUN_DIR`` (their CSV logs, settings and checkpoints) and the
``runs.csv`` that ``depthscape tables`` wrote (``TABLES_CSV``, the accuracies in percent
as the tables evaluate them), prints one line per run (finished or how far it got) and
writes ``RESULTS_CSV``: a header line, then one row per finished run with exactly the
columns of ``docs/results.csv`` (append them there with ``tail -n +2``).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from depthscape.core.models import canonical_name  # noqa: E402
from depthscape.core.runs import run_paths  # noqa: E402

#: The columns of docs/results.csv, in order.
COLUMNS = ["date", "device", "device_name", "precision", "model", "recipe", "iterations", "seed",
           "train_acc", "test_acc", "train_loss", "test_loss", "wall_s", "commit"]


def device_name(device: str) -> str:
    """The GPU's name on CUDA, the CPU's model name on the CPU."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else "cpu"


def _read_csv(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_line(run_dir: Path, model: str) -> str:
    """One line on how the run of ``model`` under ``run_dir`` went."""
    paths = run_paths(run_dir, model)
    rows = _read_csv(paths.log)
    last = rows[-1] if rows else None
    settings = json.loads(paths.config.read_text()) if paths.config.exists() else {}
    runtime = settings.get("runtime") or {}
    scale = (settings.get("train") or {}).get("scale", 1.0)
    how = (f"{'captured' if runtime.get('cuda_graph') else 'eager'} {runtime.get('precision', '?')} "
           f"{'channels-last' if runtime.get('channels_last') else 'NCHW'}, recipe scale {scale}")
    if last is None:
        return f"{model}: did not start (see train.log)"
    where = (f"iteration {last['iteration']}, last row: train {float(last['train_acc']):.2f} %, "
             f"test {float(last['test_acc']):.2f} %, {float(last['elapsed_s']):.0f} s training")
    state = "finished" if paths.final.exists() else "NOT finished (stopped by its time limit)"
    return f"{model}: {state}; {where} ({how})"


def result_rows(run_dir: Path, tables_csv: Path, device: str, name: str, commit: str,
                date: str) -> list[dict]:
    """The results.csv rows of the finished runs that ``depthscape tables`` evaluated."""
    rows = []
    for table_row in _read_csv(tables_csv):
        model = canonical_name(table_row["model"])
        paths = run_paths(run_dir, model, int(table_row["seed"]))
        if not paths.final.exists() or not paths.config.exists():
            continue
        settings = json.loads(paths.config.read_text())
        runtime = settings.get("runtime") or {}
        scale = float((settings.get("train") or {}).get("scale", 1.0))
        rows.append({
            "date": date, "device": "cuda" if device.startswith("cuda") else device,
            "device_name": name, "precision": runtime.get("precision", "fp32"), "model": model,
            "recipe": "full" if math.isclose(scale, 1.0) else "scaled",
            "iterations": int(float(table_row["iterations"])), "seed": int(table_row["seed"]),
            **{key: f"{float(table_row[key]):.2f}" for key in
               ("train_acc", "test_acc")},
            **{key: f"{float(table_row[key]):.4f}" for key in ("train_loss", "test_loss")},
            "wall_s": f"{float(table_row['train_time_s']):.0f}", "commit": commit,
        })
    return rows


def write_results(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("tables_csv", type=Path)
    parser.add_argument("results_csv", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--commit", default="unknown")
    parser.add_argument("--models", nargs="+", default=["resnet20", "plain20"])
    args = parser.parse_args(argv)
    for model in args.models:
        print(run_line(args.run_dir, canonical_name(model)))
    rows = result_rows(args.run_dir, args.tables_csv, args.device, device_name(args.device),
                       args.commit, dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
    write_results(args.results_csv, rows)
    for row in rows:
        print(f"{row['model']} ({row['recipe']} recipe, {row['iterations']} iterations, "
              f"{row['precision']}): train {row['train_acc']} %, test {row['test_acc']} % "
              f"(depthscape tables), {row['wall_s']} s")
    print(f"{len(rows)} row(s) for docs/results.csv in {args.results_csv.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
