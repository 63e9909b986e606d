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
from depthscape.analysis.measures import all_measures, measure_of
from depthscape.analysis.measures.base import (  # noqa: F401  (mark_unconverged re-exported)
    mark_unconverged,
    padded_flags,
)
from depthscape.analysis.sharpness_estimate import SharpnessResult
from depthscape.analysis.stats import format_ci
from depthscape.analysis.tables import Table, mean_std, model_sort_key


def unconverged_details(result: SharpnessResult, quantity: str) -> str | None:
    """What is known about an estimate that did not converge, or None if it did (or was
    not measured).

    ``quantity``: ``"largest"`` or ``"smallest"`` (eigenvalue), ``"trace"``, ``"top"``
    (the top-k values that did not converge, each with its residual bound), or any other
    measure's quantity (:mod:`depthscape.analysis.measures`).
    """
    if quantity not in result:
        return None
    return measure_of(quantity).details(result, quantity)


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


#: The CSV columns of :func:`sharpness_table`, one row per model, in the order they have
#: always had; a measure's fields that are not here follow them.
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
    """Per model: every measure's columns (mean ± std over seeds): the largest and smallest
    Hessian eigenvalue, the trace, the top-k where measured, ...

    Where each model has one seed measured in several draws, ``±`` is the Student-t
    confidence interval over the draws instead (the note says which). A number that did
    not converge (in any seed or draw) carries :data:`UNCONVERGED_MARK`, and the table's
    note says how far each got.
    """
    by_model = _by_model(results)
    layout = _Layout.of(results, by_model)
    measures = [m for m in all_measures() if m.shown_in(layout)]  # an optional one where measured
    rows, marked, fields = [], [], []
    for model in sorted(by_model, key=model_sort_key):
        runs = sorted(by_model[model], key=lambda pair: getattr(pair[0], "seed", 0))
        group = _Group([result for _, result in runs], layout)
        rows.append([display_name(model)] + [c for m in measures for c in m.cells(group, layout)]
                    + ([str(len(group.results))] if layout.several else [])
                    + ([str(group.draws)] if layout.with_draws else []))
        marked.extend(_unconverged_entries(display_name(model), runs))
        fields.append({"model": model, "n_seeds": len(group.results),
                       "subset_size": group.one.subset_size,
                       "num_parameters": group.one.num_parameters, "draws": group.draws,
                       "confidence": group.one.confidence if layout.intervals else None,
                       **{k: v for m in measures for k, v in m.csv_fields(group, layout).items()}})
    header = list(CSV_HEADER)
    header += [k for k in dict.fromkeys(k for row in fields for k in row) if k not in header]
    return Table("Sharpness at the trained minima (Hessian of the training loss)",
                 ["Model"] + [h for m in measures for h in m.headers(layout)]
                 + (["Seeds"] if layout.several else [])
                 + (["Draws"] if layout.with_draws else []),
                 rows, header, [[row.get(name) for name in header] for row in fields],
                 notes=_notes(layout, measures, [r for _, r in results], marked))


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
    results: tuple  # every result of the table (a measure's column where any has it)

    @classmethod
    def of(cls, results, by_model) -> _Layout:
        several = any(len(v) > 1 for v in by_model.values())
        every = tuple(r for _, r in results)
        with_draws = any((r.draws or 1) > 1 for r in every)
        return cls(several, with_draws, with_draws and not several, every)

    def cell(self, values: tuple[float, float, int], half: float | None, count: int) -> str:
        """One number as shown: ``mean ± interval`` over draws, else ``mean ± std``."""
        if self.intervals:
            return format_ci(values[0], half if half is not None else math.nan, count)
        return _fmt_g(*values)


class _Group:
    """One model's results over its seeds, as the measures' columns read them."""

    def __init__(self, results: list[SharpnessResult], layout: _Layout):
        self.results, self.layout = results, layout
        self.one = results[0]
        self.draws = self.one.draws or 1

    def _having(self, quantity: str) -> list[SharpnessResult]:
        return [r for r in self.results if quantity in r]

    def mean_std(self, quantity: str, per_parameter: bool = False) -> tuple[float, float, int]:
        return mean_std([r[quantity].value / (r.num_parameters if per_parameter else 1)
                         for r in self._having(quantity)])

    def _list_mean_std(self, quantity: str) -> list[tuple[float, float, int]]:
        having = [r[quantity].value or [] for r in self._having(quantity)]
        k = max((len(v) for v in having), default=0)
        return [mean_std([v[i] for v in having if len(v) > i]) for i in range(k)]

    def means(self, quantity: str) -> list[float]:
        """Per value of a list quantity: its mean over the seeds that have it."""
        return [m[0] for m in self._list_mean_std(quantity)]

    def ok(self, quantity: str) -> bool:
        """Converged in every seed."""
        return all(bool(r.converged(quantity)) for r in self._having(quantity))

    def flags(self, quantity: str) -> list[bool]:
        """Per value of a list quantity: converged in every seed (False where not recorded)."""
        flags = [padded_flags(r[quantity]) for r in self._having(quantity)]
        k = max((len(f) for f in flags), default=0)
        return [all(f[i] for f in flags if len(f) > i) for i in range(k)]

    def interval(self, quantity: str):
        """The first seed's half-width(s) where ``±`` is over draws, else None."""
        return self.one[quantity].ci if self.layout.intervals and quantity in self.one else None

    def worst(self, quantity: str, detail: str):
        """The largest recorded ``detail`` over the seeds (per value for lists; None where
        none recorded it)."""
        known = [r[quantity].details.get(detail) for r in self._having(quantity)]
        known = [v for v in known if v is not None]
        if not known:
            return None
        if isinstance(known[0], list):
            k = max(len(v) for v in known)
            return [max(v[i] for v in known if len(v) > i) for i in range(k)]
        return max(known)

    def cell(self, quantity: str, per_parameter: bool = False) -> str:
        """The quantity as shown, marked where it did not converge."""
        half = self.interval(quantity)
        if half is not None and per_parameter:
            half = half / self.one.num_parameters
        text = self.layout.cell(self.mean_std(quantity, per_parameter), half, self.draws)
        return mark_unconverged(text, self.ok(quantity))

    def cells(self, quantity: str) -> list[str]:
        """Per value of a list quantity, as shown, each marked on its own."""
        halves = self.interval(quantity)
        return [mark_unconverged(self.layout.cell(m, halves[i] if halves else None,
                                                  self.draws), ok)
                for i, (m, ok) in enumerate(zip(self._list_mean_std(quantity),
                                                self.flags(quantity)))]


def _unconverged_entries(name: str, runs: list[tuple[object, SharpnessResult]]) -> list:
    """The model's entries of :func:`unconverged_note`: (name, quantity, [(seed, details)])."""
    entries = []
    for measure in all_measures():
        for quantity in measure.quantities:
            seeds = [(getattr(run, "seed", 0), text) for run, r in runs
                     if (text := unconverged_details(r, quantity)) is not None]
            if seeds:
                entries.append((name, measure.shown(quantity), seeds))
    return entries


def _notes(layout: _Layout, measures: list, every: list[SharpnessResult], marked: list
           ) -> list[str]:
    """What ``±`` means, each shown measure's notes, and the unconverged numbers' note."""
    notes = []
    if layout.intervals:
        level = round(100 * (every[0].confidence or 0.95))
        notes.append(f"± is the {level}% Student-t confidence interval of the mean over the "
                     f"draws ({_draws_were(every)}); Draws: their number.")
    elif layout.with_draws:
        notes.append("± is the standard deviation over seeds; each seed's value is the mean "
                     "over its draws (Draws).")
    for measure in measures:
        notes.extend(measure.notes(layout))
    note = unconverged_note(marked, layout.several)
    if note:
        notes.append(note)
    return notes


def _draws_were(every: list[SharpnessResult]) -> str:
    """What the draws were: disjoint subsets of the split, or the same data each time (the
    subset covered it), or some of each."""
    same = {r.same_data for r in every if (r.draws or 1) > 1}
    starts = "each with its own Lanczos and Hutchinson starts"
    if same == {True}:
        return f"the same data each time, as the subset covers the split: {starts} only"
    if True in same:
        return (f"disjoint random data subsets, or the same data where the subset covers the "
                f"split; {starts}")
    return f"disjoint random data subsets, {starts}"


def _fmt_g(mean: float, std: float, n: int) -> str:
    if n == 0 or not math.isfinite(mean):
        return "-"
    return f"{mean:.4g}" if n == 1 else f"{mean:.4g} ± {std:.2g}"
