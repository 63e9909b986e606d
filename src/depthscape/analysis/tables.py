"""The spec's Tables 1 and 2, computed from the trained runs' final checkpoints.

Table 1 (spec 8.1): final training and test accuracy, error and loss of every model,
evaluated from the final checkpoint in eval mode, without augmentation, over the training
split the run trained on (the full 50,000 images unless the run used a subset) and the full
test set. Table 2 (spec 8.6): test accuracy by depth, ResNet vs PlainNet, with each model's
training wall-clock time and its ratio to the shallowest depth.

With several seeds per model every cell is ``mean ± std`` (sample standard deviation over
seeds). Each run's evaluation is cached beside the tables as JSON, keyed by the
checkpoint's size and modification time, so a rerun only evaluates new or changed runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from depthscape.analysis.curves import display_name
from depthscape.core.atomic import atomic_write_text
from depthscape.core.datasets import DEFAULT_DATASET
from depthscape.core.device import get_device
from depthscape.core.errors import UserError
from depthscape.core.models import canonical_name, families, model_depth, model_family, model_info
from depthscape.core.runs import RunInfo, find_runs
from depthscape.core.subject import subject_from_run
from depthscape.training import evaluation

#: Table 1's columns: (metric key, header). Errors are 100 - accuracy.
TABLE1_COLUMNS = (
    ("train_acc", "Train Acc. (%)"), ("test_acc", "Test Acc. (%)"),
    ("train_err", "Train Err. (%)"), ("test_err", "Test Err. (%)"),
    ("train_loss", "Train Loss"), ("test_loss", "Test Loss"),
)
_DIGITS = {"train_loss": 4, "test_loss": 4}


@dataclass
class RunMetrics:
    """Final metrics of one run, from its final checkpoint."""

    model: str
    seed: int
    dataset: str
    run_name: str
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    train_size: int
    test_size: int
    train_time_s: float  # training wall-clock seconds (from the checkpoint)
    iterations: int

    @property
    def train_err(self) -> float:
        return 100.0 - self.train_acc

    @property
    def test_err(self) -> float:
        return 100.0 - self.test_acc

    def value(self, key: str) -> float:
        return float(getattr(self, key))


# ---------------------------------------------------------------------------------------
# Evaluation


def _checkpoint_key(path: Path) -> dict:
    stat = path.stat()
    return {"checkpoint": str(path.name), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def evaluate_run(run: RunInfo, dataset=None, device: str | None = None, batch_size: int = 1000,
                 train_limit: int | None = None, test_limit: int | None = None,
                 cache_dir: str | os.PathLike | None = None, data_source: dict | None = None,
                 datasets: dict | None = None) -> RunMetrics:
    """Table 1's numbers for one finished run, from its final checkpoint.

    The training split is the one the run trained on (its ``train_subset``, drawn the same
    way); ``train_limit``/``test_limit`` cap the evaluated images (a fixed subset) where a
    quick study cannot afford the full splits. With ``cache_dir`` the result is stored
    there as ``<run>.json`` and reused while the checkpoint and limits are unchanged.
    ``dataset`` (a loaded dataset) or ``data_source`` (``dataset``/``data_dir``/
    ``cache_dir``) override the run's recorded data by :func:`subject_from_run`'s rule;
    ``datasets`` is its cache of loaded datasets, shared over runs.
    """
    final = run.paths.final
    if not final.exists():
        raise UserError(f"{run.paths.run_name} has no final checkpoint yet ({final}): "
                        "finish its training first")
    key = {**_checkpoint_key(final), "train_limit": train_limit, "test_limit": test_limit}
    cache_file = Path(cache_dir) / f"{run.paths.run_name}.json" if cache_dir else None
    if cache_file is not None and cache_file.exists():
        try:
            stored = json.loads(cache_file.read_text())
            if stored.get("key") == key:
                return RunMetrics(**stored["metrics"])
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is recomputed
    target = get_device(device)
    source = data_source or {}
    subject = subject_from_run(final, dataset=dataset if dataset is not None else
                               source.get("dataset"), data_dir=source.get("data_dir"),
                               cache_dir=source.get("cache_dir"), device=target, datasets=datasets)
    ckpt = subject.run.checkpoint  # Table 1 also reports the run's training time and steps
    train_split = subject.split("train").subset(train_limit)  # the run's split, then the cap
    test_split = subject.split("test").subset(test_limit)  # Table 1: the whole test set
    model, preprocess = subject.model, subject.preprocess
    with torch.inference_mode():
        train_loss, train_acc = evaluation.evaluate(model, train_split, preprocess, batch_size, target)
        test_loss, test_acc = evaluation.evaluate(model, test_split, preprocess, batch_size, target)
    metrics = RunMetrics(
        model=run.model, seed=run.seed, dataset=run.dataset, run_name=run.paths.run_name,
        train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
        train_size=len(train_split), test_size=len(test_split),
        train_time_s=float(ckpt.get("metrics", {}).get("elapsed_s", math.nan)),
        iterations=int(ckpt.get("iteration", 0)),
    )
    if cache_file is not None:
        atomic_write_text(cache_file, json.dumps({"key": key, "metrics": asdict(metrics)},
                                                 indent=2) + "\n")
    return metrics


def evaluate_runs(runs: Sequence[RunInfo], dataset=None, device: str | None = None,
                  batch_size: int = 1000, train_limit: int | None = None,
                  test_limit: int | None = None, cache_dir: str | os.PathLike | None = None,
                  data_source: dict | None = None, progress: bool = True) -> list[RunMetrics]:
    """:func:`evaluate_run` for every run that has a final checkpoint, with a progress bar."""
    finished = [r for r in runs if r.paths.final.exists()]
    datasets: dict = {}  # loaded once per data source, shared by the runs
    results = []
    for run in tqdm(finished, desc="evaluating", unit="run", disable=not progress,
                    dynamic_ncols=True):
        results.append(evaluate_run(run, dataset, device, batch_size, train_limit, test_limit,
                                    cache_dir, data_source, datasets))
    return results


# ---------------------------------------------------------------------------------------
# Aggregation and formatting


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    mean = sum(finite) / len(finite)
    if len(finite) == 1:
        return mean, 0.0, 1
    var = sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)
    return mean, math.sqrt(var), len(finite)


def format_cell(mean: float, std: float, n: int, digits: int = 2) -> str:
    """``91.84`` for one seed, ``91.84 ± 0.21`` for several, ``-`` for none."""
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_duration(seconds: float) -> str:
    """``45 s``, ``12.5 min`` or ``3.2 h``."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def model_sort_key(model: str) -> tuple[int, int]:
    """The spec's order: CNN, then ResNets, then PlainNets, each by depth."""
    return model_info(model).sort_key


def group_by_model(metrics: Sequence[RunMetrics]) -> dict[str, list[RunMetrics]]:
    """Runs grouped by model, in the spec's order (CNN, ResNets, PlainNets by depth)."""
    groups: dict[str, list[RunMetrics]] = {}
    for m in metrics:
        groups.setdefault(m.model, []).append(m)
    return {k: sorted(groups[k], key=lambda m: m.seed) for k in sorted(groups, key=model_sort_key)}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align_left: int = 1) -> str:
    """A GitHub-flavoured Markdown table; the first ``align_left`` columns left-aligned."""
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(":---" if i < align_left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_text(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
    return buffer.getvalue()


@dataclass
class Table:
    """A table as Markdown-ready cells plus a CSV of the raw numbers."""

    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list]
    align_left: int = 1
    notes: list[str] = field(default_factory=list)  # footnotes shown under the table

    def markdown(self) -> str:
        """The Markdown table, then each note as a paragraph of its own."""
        text = markdown_table(self.header, self.rows, self.align_left)
        return text + "".join(f"\n{note}\n" for note in self.notes)

    def csv(self) -> str:
        return csv_text(self.csv_header, self.csv_rows)


def table1(metrics: Sequence[RunMetrics]) -> Table:
    """The spec's Table 1: final training vs test performance per model."""
    groups = group_by_model(metrics)
    several = any(len(g) > 1 for g in groups.values())
    header = ["Model", *(h for _, h in TABLE1_COLUMNS)] + (["Seeds"] if several else [])
    csv_header = ["model", "n_seeds"] + [f"{k}_{s}" for k, _ in TABLE1_COLUMNS for s in ("mean", "std")]
    csv_header += ["train_size", "test_size"]
    rows, csv_rows = [], []
    for model, group in groups.items():
        cells, raw = [display_name(model)], [model, len(group)]
        for key, _ in TABLE1_COLUMNS:
            mean, std, n = mean_std([m.value(key) for m in group])
            cells.append(format_cell(mean, std, n, _DIGITS.get(key, 2)))
            raw += [mean, std]
        if several:
            cells.append(str(len(group)))
        raw += [group[0].train_size, group[0].test_size]
        rows.append(cells)
        csv_rows.append(raw)
    return Table("Table 1: final training vs. test performance", header, rows, csv_header,
                 csv_rows)


def table2(metrics: Sequence[RunMetrics]) -> Table:
    """The spec's Table 2: test accuracy by depth, ResNet vs PlainNet, and training time.

    Time ratios are relative to the shallowest depth of the same family; accuracy gains
    are percentage points over that depth.
    """
    groups = group_by_model(metrics)
    depths = sorted({model_depth(m) for m in groups if model_depth(m) is not None})
    present = [f for f in families(with_depth=True)
               if any(model_family(m) == f.prefix for m in groups)]
    header = ["Depth"]
    for f in present:
        header.append(f"{f.label} Acc. (%)")
    for f in present:
        header += [f"{f.label} time", f"{f.label} time ratio", f"{f.label} gain (pp)"]
    csv_header = ["depth"]
    for f in present:
        name = f.file_name
        csv_header += [f"{name}_test_acc_mean", f"{name}_test_acc_std", f"{name}_n_seeds",
                       f"{name}_time_s_mean", f"{name}_time_s_std", f"{name}_time_ratio",
                       f"{name}_gain_pp"]
    base: dict[str, tuple[float, float]] = {}  # family -> (acc, time) at its shallowest depth
    rows, csv_rows = [], []
    for depth in depths:
        acc_cells, time_cells, raw = [], [], [depth]
        for f in (f.prefix for f in present):
            group = groups.get(f"{f}{depth}", [])
            acc = mean_std([m.test_acc for m in group])
            seconds = mean_std([m.train_time_s for m in group])
            if group and f not in base:
                base[f] = (acc[0], seconds[0])
            ratio = seconds[0] / base[f][1] if group and base[f][1] > 0 else math.nan
            gain = acc[0] - base[f][0] if group else math.nan
            acc_cells.append(format_cell(*acc))
            time_cells += [format_duration(seconds[0]) if group else "-",
                           f"{ratio:.2f}x" if math.isfinite(ratio) else "-",
                           f"{gain:+.2f}" if math.isfinite(gain) else "-"]
            raw += [acc[0], acc[1], acc[2], seconds[0], seconds[1], ratio, gain]
        rows.append([f"{depth}-layer", *acc_cells, *time_cells])
        csv_rows.append(raw)
    return Table("Table 2: generalization by depth and training time", header, rows, csv_header,
                 csv_rows)


def runs_table(metrics: Sequence[RunMetrics]) -> Table:
    """Every run's own numbers (one row per seed), for the CSV beside Table 1."""
    keys = ["train_acc", "test_acc", "train_loss", "test_loss", "train_time_s", "iterations",
            "train_size", "test_size"]
    header = ["model", "seed", "run", *keys]
    rows = [[m.model, m.seed, m.run_name, *(getattr(m, k) for k in keys)]
            for group in group_by_model(metrics).values() for m in group]
    return Table("Runs", header, [[str(c) for c in r] for r in rows], header, rows)


def write_table(table: Table, out_dir: str | os.PathLike, stem: str) -> list[Path]:
    """``<stem>.md`` (title + Markdown table) and ``<stem>.csv`` in ``out_dir``, atomically."""
    out = Path(out_dir)
    md, csv_path = out / f"{stem}.md", out / f"{stem}.csv"
    atomic_write_text(md, f"**{table.title}**\n\n{table.markdown()}")
    atomic_write_text(csv_path, table.csv())
    return [md, csv_path]


def make_tables(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                models: Sequence[str] | None = None, dataset=None, device: str | None = None,
                batch_size: int = 1000, train_limit: int | None = None,
                test_limit: int | None = None, data_source: dict | None = None,
                progress: bool = True) -> tuple[list[RunMetrics], list[Path]]:
    """Evaluate every finished run under ``run_dir`` and write Tables 1 and 2 (+ per-run CSV).

    ``out_dir`` defaults to ``<run_dir>/tables``; ``models`` limits the runs. Returns the
    metrics and the written files.
    """
    runs = find_runs(run_dir)
    if models:
        wanted = {canonical_name(m) for m in models}
        runs = [r for r in runs if r.model in wanted]
    datasets = sorted({r.dataset for r in runs if r.paths.final.exists()})
    if len(datasets) > 1:
        keep = DEFAULT_DATASET if DEFAULT_DATASET in datasets else datasets[0]
        runs = [r for r in runs if r.dataset == keep]
    if not any(r.paths.final.exists() for r in runs):
        raise UserError(f"no finished runs (final checkpoints) found under {run_dir}")
    out = Path(out_dir) if out_dir else Path(run_dir) / "tables"
    metrics = evaluate_runs(runs, dataset, device, batch_size, train_limit, test_limit,
                            cache_dir=out / "metrics", data_source=data_source,
                            progress=progress)
    written = write_table(table1(metrics), out, "table1")
    written += write_table(table2(metrics), out, "table2")
    written += write_table(runs_table(metrics), out, "runs")
    return metrics, written
