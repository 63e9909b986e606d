"""How many Lanczos steps each end of the Hessian's spectrum needs on a study's checkpoints.

For every finished run of a study folder (default: the quick budget's), on the data the
study's sharpness step uses (the run's training split, the budget's subset and seed), one
Lanczos run of ``--steps`` Hessian-vector products with no early stop. Lanczos with a fixed
start is a prefix process, so the run's products are recorded once and replayed to read
:func:`~depthscape.analysis.hessian.extreme_eigenvalues`' answer after every k <= steps
(the real function, not a copy). Printed per run: the largest and smallest Ritz value
after the budget's step count and after ``--steps``, where the budget's stopping rule
stopped and what it called converged, and the first step from which each end stays within
``--within`` of its ``--steps`` value, relative to that value's own magnitude.

    python benchmarks/lanczos_steps.py --run-dir study-quick [--steps 60] [--budget quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from depthscape.analysis.hessian import HessianOperator, extreme_eigenvalues
from depthscape.analysis.sharpness import draw_subsets
from depthscape.core.trained import load_trained_run
from depthscape.study.budgets import get_budget


class _Recorded:
    """The operator, with every product kept in call order (for :class:`_Replayed`)."""

    def __init__(self, operator):
        self.operator, self.products = operator, []

    def __call__(self, vector):
        product = self.operator(vector)
        self.products.append([h.clone() for h in product])
        return product


class _Replayed:
    """The recorded products, returned in call order: the same Lanczos steps again."""

    def __init__(self, products):
        self.products, self.calls = products, 0

    def __call__(self, vector):
        self.calls += 1
        return self.products[self.calls - 1]


def settled_from(values: list[float], final: float, scale: float, within: float) -> int | None:
    """The first step (1-based) from which every later value is within ``within * scale``
    of ``final``."""
    first = None
    for k, value in enumerate(values, 1):
        if abs(value - final) <= within * scale:
            first = k if first is None else first
        else:
            first = None
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a study folder (logs/, models/)")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--within", type=float, default=1e-2)
    parser.add_argument("--models", nargs="+", default=None)
    args = parser.parse_args()

    budget = get_budget(args.budget)
    config = budget.sharpness
    if args.steps < config.power_iters:  # the budget's rule is replayed from the recorded steps
        parser.error(f"--steps must be at least the {budget.name} budget's {config.power_iters} "
                     f"Lanczos steps, got {args.steps}")
    torch.set_num_threads(torch.get_num_threads())
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; budget {budget.name}: {config.power_iters} "
          f"steps, tol {config.power_tol}, {config.subset} {config.split} images, seed "
          f"{config.seed}; replayed up to {args.steps} steps")
    print("model | steps: budget rule (converged?) | largest @budget -> @max (settled from) "
          "| smallest @budget -> @max (settled from) | s per product")
    from pathlib import Path

    for checkpoint in sorted((Path(args.run_dir) / "models").glob("*.pth")):
        if checkpoint.name.endswith((".resume.pth",)):
            continue
        run = load_trained_run(checkpoint)
        if args.models and run.model_name not in args.models:
            continue
        split = run.train if config.split == "train" else run.dataset.test
        subset = draw_subsets(split, config.subset, 1, config.seed)[0]
        operator = HessianOperator(run.model, run.preprocess.normalize(subset.images),
                                   subset.labels, config.batch_size, precision=config.precision)
        recorded = _Recorded(operator)
        start = time.perf_counter()
        last = extreme_eigenvalues(recorded, operator.params, args.steps, 0.0, config.seed)
        per_product = (time.perf_counter() - start) / len(recorded.products)
        steps = len(recorded.products)  # fewer where the Krylov space closed (exact)
        ends = [extreme_eigenvalues(_Replayed(recorded.products), operator.params, k, 0.0,
                                    config.seed) for k in range(1, steps + 1)]
        rule = extreme_eigenvalues(_Replayed(recorded.products), operator.params,
                                   config.power_iters, config.power_tol, config.seed)
        big = settled_from([e.largest for e in ends], last.largest, abs(last.largest),
                           args.within)
        small = settled_from([e.smallest for e in ends], last.smallest, abs(last.smallest),
                             args.within)
        at = ends[min(config.power_iters, steps) - 1]
        print(f"{run.model_name} | {rule.iterations} ({rule.largest_converged}/"
              f"{rule.smallest_converged}) | {at.largest:.4g} -> {last.largest:.4g} ({big}) | "
              f"{at.smallest:.4g} -> {last.smallest:.4g} ({small}) | {per_product:.2f}",
              flush=True)


if __name__ == "__main__":
    main()
