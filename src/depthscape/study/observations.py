"""The report's observations: plain statements read off the results, in words.

Where a measure comes with confidence intervals (sharpness with several draws, the
flatness slices), a ResNet/PlainNet difference is called significant only where the two
intervals do not overlap, and "within noise" where they do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby

import numpy as np

from depthscape.analysis.curves import display_name
from depthscape.analysis.landscape.flatness import pooled_flatness
from depthscape.analysis.sharpness import UNCONVERGED_MARK
from depthscape.analysis.tables import group_by_model, mean_std
from depthscape.core.models import families, model_depth, model_family, pairs, present_pairs


def describe_trend(values: Sequence[float], digits: int = 2) -> str:
    """What a sequence of numbers does, in words: ``rises``, ``falls``, ``rises then falls``,
    ``falls then rises``, ``goes up and down`` or ``is unchanged``.

    Values equal when rounded to ``digits`` (as the report prints them) count as unchanged,
    so a step the reader cannot see is not called a rise.
    """
    rounded = [round(v, digits) for v in values]
    moves: list[str] = []
    for before, after in zip(rounded, rounded[1:]):
        if after == before:
            continue
        move = "rises" if after > before else "falls"
        if not moves or moves[-1] != move:
            moves.append(move)
    if not moves:
        return "is unchanged"
    if len(moves) == 1:
        return moves[0]
    if len(moves) == 2:
        return f"{moves[0]} then {moves[1]}"
    return "goes up and down"


def describe_change(first: float, last: float, unit: str = "points", digits: int = 2) -> str:
    """The net change end to end: ``up 3.20 points``, ``down 0.50 points`` or ``unchanged``."""
    change = round(last, digits) - round(first, digits)
    if change == 0:
        return "unchanged end to end"
    return f"{'up' if change > 0 else 'down'} {abs(change):.{digits}f} {unit} end to end"


def compare_intervals(first: tuple[float, float], second: tuple[float, float],
                      level: float = 0.95) -> str:
    """Whether two means with their confidence half-widths differ: ``"significant: the
    95% intervals do not overlap"`` only where they do not, ``"within noise: the 95%
    intervals overlap"`` where they do, ``""`` where either has no interval (one draw)."""
    (m1, h1), (m2, h2) = first, second
    if not all(math.isfinite(v) for v in (m1, h1, m2, h2)):
        return ""
    percent = round(100 * level)
    if m1 + h1 < m2 - h2 or m2 + h2 < m1 - h1:
        return f"significant: the {percent}% intervals do not overlap"
    return f"within noise: the {percent}% intervals overlap"


def _ci_text(mean: float, half: float) -> str:
    return f"{mean:.3g} ± {half:.2g}" if math.isfinite(half) else f"{mean:.3g}"


def flatness_observations(flatness, depths, first, second) -> list[str]:
    """ResNet vs PlainNet at each depth, per flatness measure, mean ± CI over the random
    directions: a difference is called significant only where the intervals do not
    overlap, "within noise" where they do."""
    if not flatness:
        return []
    pooled = pooled_flatness(flatness)
    level = flatness[0][1].confidence
    lines = []
    radius = next(iter(pooled.values()))["radius"]
    for measure, what in (("rise", f"Loss rise at radius {radius:g} along random 1-D slices "
                                   "(higher = sharper)"),
                          ("doubling", "Radius where the loss doubles along random 1-D slices "
                                       "(higher = flatter)")):
        pairs = []
        for depth in depths:
            a = pooled.get(f"{first.prefix}{depth}")
            b = pooled.get(f"{second.prefix}{depth}")
            if not (a and b):
                continue
            cells, intervals = [], []
            for values in (a, b):
                mean, half, n = values[measure]
                if measure == "doubling" and n < values["directions"]:
                    # some directions never doubled within the span: the mean of the
                    # others is a lower bound, no interval to compare
                    shown = (f"> {values['span']:g} in all {values['directions']} directions"
                             if n == 0 else f"{_ci_text(mean, half)} ({n} of "
                             f"{values['directions']} directions doubled)")
                    cells.append(shown)
                    intervals.append((math.nan, math.nan))
                    continue
                cells.append(_ci_text(mean, half))
                intervals.append((mean, half))
            verdict = compare_intervals(*intervals, level=level)
            if not verdict:
                verdict = "not comparable: not every direction doubled within the span" \
                    if measure == "doubling" else "no interval (one direction)"
            pairs.append(f"depth {depth}: {first.label} {cells[0]} vs {second.label} "
                         f"{cells[1]} ({verdict})")
        if pairs:
            lines.append(f"{what}, mean ± {round(100 * level)}% CI over the directions: "
                         + "; ".join(pairs) + ".")
    return lines


def observations(metrics, sharpness, flatness=None) -> list[str]:
    """Plain statements read off the results (no claim the numbers do not make).

    Where a measure comes with confidence intervals (sharpness with several draws, the
    flatness slices), a ResNet/PlainNet difference is called significant only where the
    two intervals do not overlap, and "within noise" where they do."""
    lines = []
    groups = group_by_model(metrics)
    depth_families = families(with_depth=True)
    for family in depth_families:
        chain = [(model_depth(m), mean_std([r.test_acc for r in g])[0])
                 for m, g in groups.items() if model_family(m) == family.prefix]
        if len(chain) >= 2:
            steps = " → ".join(f"{acc:.2f}% (depth {depth})" for depth, acc in chain)
            accs = [acc for _, acc in chain]
            lines.append(f"{family.label} test accuracy {describe_trend(accs)} from depth "
                         f"{chain[0][0]} to {chain[-1][0]} "
                         f"({describe_change(accs[0], accs[-1])}): {steps}.")
    depths = sorted({model_depth(m) for m in groups if model_depth(m)})
    # each family's pairing in the study (ResNet, PlainNet), its depths together
    for (first, second), found in groupby(present_pairs(groups), lambda p: (p.first, p.second)):
        gaps = []
        for pair in found:
            accs = [mean_std([r.test_acc for r in groups[n]])[0] for n in pair.names]
            gaps.append(f"{accs[0] - accs[1]:+.2f} at depth {pair.depth}")
        lines.append(f"{first.label} minus {second.label} test accuracy: " + ", ".join(gaps)
                     + " (points).")
    for model, group in groups.items():  # models of fixed depth: the baseline CNN
        if model_depth(model) is None:
            train_acc = mean_std([r.train_acc for r in group])[0]
            test_acc = mean_std([r.test_acc for r in group])[0]
            lines.append(f"The {display_name(model)} reaches {train_acc:.2f}% on its training "
                         f"data and {test_acc:.2f}% on test data (a gap of "
                         f"{train_acc - test_acc:.2f} points).")
    if sharpness:
        for first, second in pairs():
            lines += _sharpness_observations(sharpness, depths, first, second)
    if flatness:
        flat_depths = sorted(set(depths) | {model_depth(r.model) for r, _ in flatness
                                            if model_depth(r.model)})
        for first, second in pairs():
            lines += flatness_observations(flatness, flat_depths, first, second)
    return lines


def _sharpness_observations(sharpness, depths, first, second) -> list[str]:
    """``first`` vs ``second`` (ResNet vs PlainNet) at each depth, per end of the Hessian's
    spectrum, from converged numbers only: a pair with an end that did not converge is named
    as not resolved."""
    by_model: dict[str, list] = {}
    for run, result in sharpness:
        by_model.setdefault(run.model, []).append(result)
    lines = []
    for end, what in (("largest", "Largest Hessian eigenvalue (higher = sharper)"),
                      ("smallest", "Smallest Hessian eigenvalue (negative = the loss still "
                                   "descends along some direction)")):
        pairs, resolved, unresolved, steps = [], 0, [], set()
        for depth in depths:
            models = (f"{first.prefix}{depth}", f"{second.prefix}{depth}")
            r, p = by_model.get(models[0]), by_model.get(models[1])
            if not (r and p):
                continue
            open_ = [(m, g) for m, g in zip(models, (r, p))
                     if not all(x.end_converged(end) for x in g)]
            if open_:
                names = [display_name(m) for m, _ in open_]
                used = {x.eigen_steps for _, g in open_ for x in g if not x.end_converged(end)}
                unresolved += names
                steps |= used
                pairs.append(f"depth {depth}: not resolved ({' and '.join(names)} did not "
                             f"converge in {_steps(used)} Lanczos steps)")
                continue
            resolved += 1
            text = (f"depth {depth}: {first.label} "
                    f"{np.mean([getattr(x, f'{end}_eigenvalue') for x in r]):.3g} vs "
                    f"{second.label} "
                    f"{np.mean([getattr(x, f'{end}_eigenvalue') for x in p]):.3g}")
            if len(r) == 1 and len(p) == 1:  # one seed each: its draws' intervals, if any
                half = [getattr(g[0], f"{end}_ci") for g in (r, p)]
                if all(h is not None for h in half):
                    level = r[0].confidence or 0.95
                    verdict = compare_intervals(
                        (getattr(r[0], f"{end}_eigenvalue"), half[0]),
                        (getattr(p[0], f"{end}_eigenvalue"), half[1]), level)
                    if verdict:
                        text = (f"depth {depth}: {first.label} "
                                f"{_ci_text(getattr(r[0], f'{end}_eigenvalue'), half[0])} vs "
                                f"{second.label} "
                                f"{_ci_text(getattr(p[0], f'{end}_eigenvalue'), half[1])} "
                                f"({verdict})")
            pairs.append(text)
        mark = f"Numbers marked {UNCONVERGED_MARK} in the sharpness table did not converge."
        if resolved:
            lines.append(f"{what} at each depth: " + "; ".join(pairs) + "."
                         + (f" {mark}" if unresolved else ""))
        elif unresolved:
            lines.append(f"{what}: not resolved at any depth: {_steps(steps)} Lanczos steps did "
                         f"not converge for {', '.join(unresolved)}. {mark}")
    return lines


def _steps(steps: set[int]) -> str:
    ordered = sorted(steps)
    return str(ordered[0]) if len(ordered) == 1 else f"{ordered[0]}-{ordered[-1]}"

