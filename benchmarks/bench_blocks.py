"""What the per-block Hessian costs against the whole-network measures, in Hessian-vector
products and seconds.

    python benchmarks/bench_blocks.py [--model resnet20] [--images 256] [--iters 20]
        [--trace-samples 50] [--threads 1] [--skip-layer]

On a freshly initialised ``--model`` (seeded; BatchNorm's running statistics moved by two
training-mode passes) and ``--images`` random CIFAR-shaped images and labels, after one
untimed warm-up product, each of these runs the library path ``depthscape sharpness``
runs (:func:`~depthscape.analysis.sharpness.model_sharpness`: the extremes by Lanczos, at
most ``--iters`` steps, tol 1e-3; the trace by Hutchinson, 5..``--trace-samples`` probes,
tol 1e-2; one chunk of all the images):

* ``whole``: the whole-network trace + extremes (the baseline, measured in the same run);
* ``--blocks stage``: the same, and each stage's trace (the trace's own probes) and
  largest eigenvalue (Lanczos on its diagonal block, at most ``--iters`` steps each);
* ``--blocks layer``: the same per parameterised layer (``--skip-layer``: not run);

and the block traces alone: ``ds.hessian_trace(..., blocks="layer")`` against
``ds.hessian_trace`` (the same probes, so the same products: only the per-tensor dots).
Prints the CPU first, then per line the products, seconds and both as a ratio to the
baseline's.

    python benchmarks/bench_blocks.py --checkpoint RUN_final.pt [--budget quick]
        [--cache-dir DIR]

instead measures what the study's sharpness stage costs on one trained checkpoint, on its
own training data, with the ``--budget``'s settings (``study/stages/sharpness.py``), without
and with the per-stage block profiles of its "Where in depth" section (``blocks="stage"``),
after one untimed whole-network run (the data loaded, the graph built).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_hessian import _random_model  # noqa: E402  (the same seeded model and data)

import depthscape as ds  # noqa: E402
from depthscape.analysis.hessian import HessianOperator  # noqa: E402
from depthscape.analysis.sharpness import SharpnessConfig, model_sharpness  # noqa: E402
from depthscape.core.runtime import cpu_description  # noqa: E402


def measure(model, x, y, blocks: str, iters: int, samples: int) -> dict:
    """One ``model_sharpness`` call: its products (in all), seconds and blocks."""
    config = SharpnessConfig(power_iters=iters, trace_samples=samples, batch_size=len(y),
                             blocks=blocks)
    start = time.perf_counter()
    result = model_sharpness(model, x, y, config)
    seconds = time.perf_counter() - start
    whole = result["largest"].details["steps"] + result["trace"].details["samples"]
    products = result["block_trace"].details["products"] if blocks else whole
    count = len(result["block_trace"].value) if blocks else 0
    return {"products": products, "seconds": seconds, "blocks": count,
            "probes": result["trace"].details["samples"]}


def line(name: str, row: dict, base: dict) -> str:
    return (f"{name:<22} {row['blocks']:>3} blocks  {row['products']:>5} HVPs "
            f"({row['products'] / base['products']:.2f}x)  {row['seconds']:8.1f} s "
            f"({row['seconds'] / base['seconds']:.2f}x)  probes {row['probes']}")


def study_cost(checkpoint: str, budget: str, cache_dir: str | None) -> int:
    """The study's sharpness of ``checkpoint`` under ``budget``, without and with blocks."""
    from dataclasses import replace

    from depthscape.analysis.sharpness import measure_sharpness
    from depthscape.study.stages.sharpness import STAGE

    config = replace(STAGE.budgets[budget], device="cpu")
    source, datasets = {"cache_dir": cache_dir}, {}
    print(f"cpu: {cpu_description()}, {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}; {checkpoint}, the {budget} budget's sharpness "
          f"({config.subset} images, <= {config.power_iters} Lanczos steps, <= "
          f"{config.trace_samples} probes)", flush=True)
    measure_sharpness(checkpoint, config, data_source=source, datasets=datasets)  # warm-up
    rows = {}
    for name, blocks in (("whole (the study without blocks)", ""), ("blocks stage", "stage")):
        start = time.perf_counter()
        result = measure_sharpness(checkpoint, replace(config, blocks=blocks),
                                   data_source=source, datasets=datasets)
        seconds = time.perf_counter() - start
        whole = result["largest"].details["steps"] + result["trace"].details["samples"]
        rows[name] = {"products": result["block_trace"].details["products"] if blocks
                      else whole, "seconds": seconds,
                      "blocks": len(result["block_trace"].value) if blocks else 0,
                      "probes": result["trace"].details["samples"]}
        if blocks:
            steps = result["block_largest"].details["steps"]
            print(f"block Lanczos steps: {dict(zip(result['block_trace'].details['names'], steps))}")
    base = next(iter(rows.values()))
    for name, row in rows.items():
        print(line(name, row, base), flush=True)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--trace-samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-layer", action="store_true")
    parser.add_argument("--checkpoint", default=None,
                        help="a trained run's final checkpoint: the study's sharpness cost")
    parser.add_argument("--budget", default="quick", choices=("paper", "quick", "smoke"))
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        return study_cost(args.checkpoint, args.budget, args.cache_dir)
    print(f"cpu: {cpu_description()}, {torch.get_num_threads()} threads; torch "
          f"{torch.__version__}; {args.model}, {args.images} images", flush=True)
    model, x, y = _random_model(args.model, args.images)
    warm = HessianOperator(model, x, y, batch_size=len(y))
    start = time.perf_counter()
    warm([torch.ones_like(p) for p in warm.params])
    print(f"one product (warm-up, graph built): {time.perf_counter() - start:.2f} s", flush=True)
    base = measure(model, x, y, "", args.iters, args.trace_samples)
    print(line("whole trace + extremes", base, base), flush=True)
    for blocks in ("stage",) + (() if args.skip_layer else ("layer",)):
        print(line(f"--blocks {blocks}", measure(model, x, y, blocks, args.iters,
                                                 args.trace_samples), base), flush=True)
    data = (x, y)
    timed = {}
    for name, blocks in (("trace", None), ("trace, layer blocks", "layer")):
        start = time.perf_counter()
        found = ds.hessian_trace(model, data, samples=args.trace_samples, tol=1e-2,
                                 batch_size=len(y), blocks=blocks)
        whole = found if blocks is None else found.whole
        timed[name] = (whole.samples, time.perf_counter() - start)
    (n0, t0), (n1, t1) = timed.values()
    print(f"block traces alone: {n1} HVPs vs {n0} ({n1 / n0:.2f}x), {t1:.1f} s vs {t0:.1f} s "
          f"({t1 / t0:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
