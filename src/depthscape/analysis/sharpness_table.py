"""The sharpness table of a study and how unconverged numbers are shown.

A number that did not converge within its budget is shown with :data:`UNCONVERGED_MARK`,
never as a result; :func:`unconverged_details` and :func:`unconverged_note` say how far it
got. :func:`sharpness_table` is one row per model (mean ± std over seeds, or the interval
over draws), built in named steps: group by model, the layout, each model's summary, its
cells and CSV row, the notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from depthscape.analysis.curves import display_name
from depthscape.analysis.hessian import UNCONVERGED_MARK  # noqa: F401  (a dagger; re-exported)
from depthscape.analysis.sharpness_estimate import SharpnessResult
from depthscape.analysis.stats import format_ci
from depthscape.analysis.tables import Table, mean_std, model_sort_key


def mark_unconverged(text: str, converged: bool) -> str:
    """``text`` with :data:`UNCONVERGED_MARK` appended unless ``converged``."""
    return text if converged else f"{text}{UNCONVERGED_MARK}"


def unconverged_details(result: SharpnessResult, quantity: str) -> str | None:
    """What is known about an estimate that did not converge, or None if it did.

    ``quantity``: ``"largest"`` or ``"smallest"`` (eigenvalue), ``"trace"`` or ``"top"``
    (the top-k values that did not converge, each with its residual bound).
    """
    if quantity == "top":
        return _top_details(result)
    if quantity == "trace":
        if result.trace_converged:
            return None
        return (f"{result.trace_samples} Hutchinson probe{'s' * (result.trace_samples != 1)}, "
                f"standard error {result.trace_stderr:.3g}")
    if result.end_converged(quantity):
        return None
    parts = [f"{result.eigen_steps} Lanczos step{'s' * (result.eigen_steps != 1)}"]
    for label, value in (("last change", getattr(result, f"{quantity}_change")),
                         ("residual", getattr(result, f"{quantity}_residual"))):
        if value is not None and math.isfinite(value):
            parts.append(f"{label} {value:.3g}")
    if not math.isfinite(getattr(result, f"{quantity}_eigenvalue")):
        parts.append("no finite value (the Hessian overflowed)")
    return ", ".join(parts)


def _top_flags(result: SharpnessResult) -> list[bool]:
    """Per top-k value: converged (False where not recorded)."""
    values, flags = result.top_eigenvalues or [], result.top_converged or []
    return [i < len(flags) and bool(flags[i]) for i in range(len(values))]


def _top_details(result: SharpnessResult) -> str | None:
    """Which top-k values did not converge, with their residual bounds, or None."""
    open_ = [i for i, ok in enumerate(_top_flags(result)) if not ok]
    if not open_:
        return None
    residuals = result.top_residuals or []
    steps = result.top_steps if result.top_steps is not None else result.eigen_steps
    shown = ", ".join(f"{i + 1}" + (f" (residual {residuals[i]:.3g})"
                                    if i < len(residuals) and math.isfinite(residuals[i])
                                    else "") for i in open_)
    return (f"{steps} Lanczos step{'s' * (steps != 1)}, value{'s' * (len(open_) != 1)} "
            f"{shown}")


def unconverged_note(entries: Sequence[tuple[str, str, Sequence[tuple[int, str]]]],
                     several_seeds: bool = False) -> str | None:
    """The footnote that explains :data:`UNCONVERGED_MARK`, or None when nothing is marked.

    ``entries``: (model name as shown, quantity as shown, [(seed, details), ...]) for every
    marked cell, ``details`` from :func:`unconverged_details`.
    """
    if not entries:
        return None
    items = []
    for name, quantity, seeds in entries:
        details = "; ".join(f"seed {seed}: {text}" if several_seeds else text
                            for seed, text in seeds)
        items.append(f"{name} {quantity} ({details})")
    note = (f"{UNCONVERGED_MARK} Did not converge within the budget, so not a result: "
            + "; ".join(items) + ".")
    if any(quantity != "trace" for _, quantity, _ in entries):
        note += (" Residual ||Hv - θv||: the Lanczos bound that decides convergence (under "
                 "the tolerance times the value's magnitude); some Hessian eigenvalue lies "
                 "within it of the value, not necessarily the one it stands for. Last "
                 "change: how far the last Lanczos step moved the value. Lanczos approaches "
                 "both ends from inside: the true smallest eigenvalue is at most the value "
                 "shown, the true largest at least.")
    return note


#: The CSV columns of :func:`sharpness_table`, one row per model.
CSV_HEADER = ["model", "n_seeds", "largest_eigenvalue_mean", "largest_eigenvalue_std",
              "smallest_eigenvalue_mean", "smallest_eigenvalue_std", "trace_mean",
              "trace_std", "trace_stderr_max", "eigen_steps_max",
              "all_eigen_converged", "all_trace_converged", "subset_size", "num_parameters",
              "all_largest_converged", "all_smallest_converged", "draws",
              "largest_eigenvalue_ci", "smallest_eigenvalue_ci", "trace_ci", "confidence",
              "top_eigenvalues", "top_eigenvalues_ci", "all_top_converged",
              "largest_residual_max", "smallest_residual_max", "top_converged",
              "top_residuals_max"]


def sharpness_table(results: Sequence[tuple[object, SharpnessResult]]):
    """Per model: largest and smallest Hessian eigenvalue and trace (mean ± std over seeds).

    Where each model has one seed measured in several draws, ``±`` is the Student-t
    confidence interval over the draws instead (the note says which). With top-k measured,
    a column lists the k largest eigenvalues. A number that did not converge (in any seed
    or draw) carries :data:`UNCONVERGED_MARK`, and the table's note says how far each got.
    """
    by_model = _by_model(results)
    layout = _Layout.of(results, by_model)
    rows, csv_rows, marked = [], [], []
    for model in sorted(by_model, key=model_sort_key):
        runs = sorted(by_model[model], key=lambda pair: getattr(pair[0], "seed", 0))
        summary = _ModelSummary.of([result for _, result in runs], layout)
        rows.append(_cells(display_name(model), summary, layout))
        marked.extend(_unconverged_entries(display_name(model), runs))
        csv_rows.append(_csv_row(model, summary, layout))
    return Table("Sharpness at the trained minima (Hessian of the training loss)",
                 _header(layout), rows, list(CSV_HEADER), csv_rows,
                 notes=_notes(layout, [r for _, r in results], marked))


def _by_model(results: Sequence[tuple[object, SharpnessResult]]
              ) -> dict[str, list[tuple[object, SharpnessResult]]]:
    """The (run, result) pairs of each model, in the order given."""
    by_model: dict[str, list[tuple[object, SharpnessResult]]] = {}
    for run, result in results:
        by_model.setdefault(run.model, []).append((run, result))
    return by_model


@dataclass(frozen=True)
class _Layout:
    """Which columns the table has and what its ``±`` means."""

    several: bool  # some model has several seeds: ± over seeds, a Seeds column
    with_draws: bool  # some result is a mean over draws: a Draws column
    intervals: bool  # ± is the interval over draws (each model one seed)
    with_top: bool  # top-k eigenvalues were measured: a Top eigenvalues column

    @classmethod
    def of(cls, results, by_model) -> _Layout:
        several = any(len(v) > 1 for v in by_model.values())
        every = [r for _, r in results]
        with_draws = any((r.draws or 1) > 1 for r in every)
        return cls(several, with_draws, with_draws and not several,
                   any(r.top_eigenvalues for r in every))

    def cell(self, values: tuple[float, float, int], half: float | None, count: int) -> str:
        """One number as shown: ``mean ± interval`` over draws, else ``mean ± std``."""
        if self.intervals:
            return format_ci(values[0], half if half is not None else math.nan, count)
        return _fmt_g(*values)


def _header(layout: _Layout) -> list[str]:
    return ["Model", "Largest eigenvalue", "Smallest eigenvalue", "Trace",
            "Trace / parameters"] + (["Top eigenvalues"] if layout.with_top else []) \
        + (["Seeds"] if layout.several else []) + (["Draws"] if layout.with_draws else [])


@dataclass(frozen=True)
class _ModelSummary:
    """One model's results over its seeds: (mean, std, count) of each number, and flags."""

    group: list[SharpnessResult]  # by seed
    largest: tuple[float, float, int]
    smallest: tuple[float, float, int]
    trace: tuple[float, float, int]
    per_param: tuple[float, float, int]  # trace / parameters
    ok: dict[str, bool]  # converged in every seed: "largest", "smallest", "trace"
    top_ok: bool
    top_flags: list[bool] | None  # per top-k value: converged in every seed
    top_mean: list[tuple[float, float, int]] | None  # None: no top-k column
    top_ci: list[float] | None  # the first seed's intervals, where ± is over draws

    @classmethod
    def of(cls, group: list[SharpnessResult], layout: _Layout) -> _ModelSummary:
        one = group[0]
        ok = {q: all(r.end_converged(q) for r in group) for q in ("largest", "smallest")}
        ok["trace"] = all(r.trace_converged for r in group)
        top_mean = top_ci = top_flags = None
        if layout.with_top:
            k = max(len(r.top_eigenvalues or []) for r in group)
            flags = [_top_flags(r) for r in group]
            top_flags = [all(f[i] for f in flags if len(f) > i) for i in range(k)]
            top_mean = [mean_std([r.top_eigenvalues[i] for r in group
                                  if r.top_eigenvalues and len(r.top_eigenvalues) > i])
                        for i in range(k)]
            top_ci = one.top_ci if layout.intervals else None
        return cls(group, mean_std([r.largest_eigenvalue for r in group]),
                   mean_std([r.smallest_eigenvalue for r in group]),
                   mean_std([r.trace for r in group]),
                   mean_std([r.trace / r.num_parameters for r in group]), ok,
                   all(all(r.top_converged or [False]) for r in group), top_flags,
                   top_mean, top_ci)

    @property
    def one(self) -> SharpnessResult:
        return self.group[0]

    @property
    def draws(self) -> int:
        return self.one.draws or 1


def _cells(name: str, summary: _ModelSummary, layout: _Layout) -> list[str]:
    """The model's row as shown, unconverged numbers marked."""
    one, ok, draws, cell = summary.one, summary.ok, summary.draws, layout.cell
    per_param_ci = (one.trace_ci / one.num_parameters if one.trace_ci is not None
                    else None)
    cells = [name,
             mark_unconverged(cell(summary.largest, one.largest_ci, draws), ok["largest"]),
             mark_unconverged(cell(summary.smallest, one.smallest_ci, draws), ok["smallest"]),
             mark_unconverged(cell(summary.trace, one.trace_ci, draws), ok["trace"]),
             mark_unconverged(cell(summary.per_param, per_param_ci, draws), ok["trace"])]
    if layout.with_top:
        top_ci = summary.top_ci
        # each value its own dagger: the top-k's values converge one by one
        shown = ", ".join(mark_unconverged(cell(m, top_ci[i] if top_ci else None, draws),
                                           summary.top_flags[i])
                          for i, m in enumerate(summary.top_mean))
        cells.append(shown or "-")
    if layout.several:
        cells.append(str(len(summary.group)))
    if layout.with_draws:
        cells.append(str(draws))
    return cells


def _unconverged_entries(name: str, runs: list[tuple[object, SharpnessResult]]) -> list:
    """The model's entries of :func:`unconverged_note`: (name, quantity, [(seed, details)])."""
    entries = []
    for quantity, shown in (("largest", "largest eigenvalue"),
                            ("smallest", "smallest eigenvalue"), ("trace", "trace"),
                            ("top", "top eigenvalues")):
        seeds = [(getattr(run, "seed", 0), text) for run, r in runs
                 if (text := unconverged_details(r, quantity)) is not None]
        if seeds:
            entries.append((name, shown, seeds))
    return entries


def _csv_row(model: str, summary: _ModelSummary, layout: _Layout) -> list:
    """The model's CSV row (:data:`CSV_HEADER`): the numbers unrounded."""
    group, one, intervals = summary.group, summary.one, layout.intervals
    largest, smallest, trace, top_mean = (summary.largest, summary.smallest, summary.trace,
                                          summary.top_mean)
    return [model, len(group), largest[0], largest[1], smallest[0], smallest[1],
            trace[0], trace[1], max(r.trace_stderr for r in group),
            max(r.eigen_steps for r in group),
            all(r.eigen_converged for r in group), summary.ok["trace"],
            one.subset_size, one.num_parameters, summary.ok["largest"],
            summary.ok["smallest"], summary.draws,
            one.largest_ci if intervals else None,
            one.smallest_ci if intervals else None,
            one.trace_ci if intervals else None,
            one.confidence if intervals else None,
            None if top_mean is None else ";".join(f"{m[0]:.6g}" for m in top_mean),
            None if not summary.top_ci else ";".join(f"{c:.3g}" for c in summary.top_ci),
            summary.top_ok if layout.with_top else None,
            _worst([r.largest_residual for r in group]),
            _worst([r.smallest_residual for r in group]),
            None if summary.top_flags is None else ";".join(str(f) for f in summary.top_flags),
            _top_residuals(group) if layout.with_top else None]


def _worst(values):
    """The largest of the recorded values (None where none was recorded)."""
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _top_residuals(group: list[SharpnessResult]) -> str | None:
    """Per top-k value, the largest residual bound over the seeds (``;``-joined; None where
    no result recorded them: results stored before they were kept)."""
    recorded = [r.top_residuals for r in group if r.top_residuals is not None]
    if not recorded:
        return None
    k = max(len(r) for r in recorded)
    return ";".join(f"{_worst([r[i] for r in recorded if len(r) > i]):.3g}" for i in range(k))


def _notes(layout: _Layout, every: list[SharpnessResult], marked: list) -> list[str]:
    """What ``±`` means, what the top-k column is, and the unconverged numbers' note."""
    notes = []
    if layout.intervals:
        level = round(100 * (every[0].confidence or 0.95))
        notes.append(f"± is the {level}% Student-t confidence interval of the mean over the "
                     "draws (disjoint random data subsets, each with its own Lanczos and "
                     "Hutchinson starts); Draws: their number.")
    elif layout.with_draws:
        notes.append("± is the standard deviation over seeds; each seed's value is the mean "
                     "over its draws (Draws).")
    if layout.with_top:
        notes.append("Top eigenvalues: the largest Lanczos Ritz values, descending, from "
                     "the Lanczos run that gives the largest and smallest (one start vector "
                     "sees one copy of a repeated eigenvalue); each value that did not "
                     f"converge carries {UNCONVERGED_MARK}.")
    note = unconverged_note(marked, layout.several)
    if note:
        notes.append(note)
    return notes


def _fmt_g(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
