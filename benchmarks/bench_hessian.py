"""What each Hessian measure costs, in Hessian-vector products and seconds, and the same
measures by a peer library (PyHessian) on the same checkpoint and data.

    python benchmarks/bench_hessian.py CHECKPOINT [CHECKPOINT ...] [--images 128]
        [--peer-models resnet20] [--threads N]

For each trained run (a depthscape checkpoint), on the same ``--images`` training images
(a seeded draw from the run's own training split, preprocessed as it was evaluated):

* one Hessian-vector product (the unit of cost; median of three after a warm-up);
* depthscape's largest/smallest eigenvalue (``ds.hessian_extremes``, Lanczos, 20 steps at
  most, tol 1e-3), the trace (``ds.hessian_trace``, Hutchinson, 5..``--trace-samples``
  probes, tol 1e-2), and the eigenvalue density
  (:func:`depthscape.analysis.spectrum.spectral_density`, the quick budget's 2 runs x 8
  steps), each with the products it used and its seconds.

For the runs named by ``--peer-models`` the same model and the same tensors go to two peer
libraries, called as their own code: PyHessian (``pyhessian.hessian``: ``eigenvalues`` by
power iteration, ``trace`` by Hutchinson, ``density`` by SLQ, at its default tolerances) and
hessian-eigenthings (its ``HessianOperator`` with ``lanczos``, ``trace`` and
``spectral_density``), imported from wherever they are installed (``pip install --no-deps
--target DIR pyhessian hessian-eigenthings`` then ``PYTHONPATH=DIR``). Their products are
counted by wrapping their own product function. A peer call that fails prints why on its
line; depthscape's numbers stand alone.

The first line names the CPU (the machines this runs on differ by up to 2.7x).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import depthscape as ds  # noqa: E402
from depthscape.analysis.hessian import HessianOperator  # noqa: E402
from depthscape.analysis.spectrum import spectral_density  # noqa: E402
from depthscape.core.runtime import cpu_description  # noqa: E402


def _batch(run, images: int, seed: int = 0):
    split = run.train
    order = torch.randperm(len(split.labels), generator=torch.Generator().manual_seed(seed))
    pick = order[:images]
    return run.preprocess.normalize(split.images[pick]), split.labels[pick]


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _ours(run, x, y, trace_samples: int) -> dict:
    operator = HessianOperator(run.model, x, y, batch_size=len(y))
    vector = [torch.randn_like(p) for p in operator.params]
    operator(vector)  # warm-up (builds the cached gradient graph)
    times = [_timed(lambda: operator(vector))[1] for _ in range(3)]
    ends, t_ends = _timed(lambda: ds.hessian_extremes(run.model, (x, y), iters=20, tol=1e-3,
                                                      batch_size=len(y)))
    trace, t_trace = _timed(lambda: ds.hessian_trace(run.model, (x, y), samples=trace_samples,
                                                     tol=1e-2, min_samples=5,
                                                     batch_size=len(y)))
    fresh = HessianOperator(run.model, x, y, batch_size=len(y))
    density, t_density = _timed(lambda: spectral_density(fresh, fresh.params, runs=2, steps=8))
    return {"hvp_s": statistics.median(times), "params": operator.num_parameters,
            "largest": ends.largest, "smallest": ends.smallest, "ends_hvps": ends.iterations,
            "ends_s": t_ends, "trace": trace.trace, "trace_se": trace.stderr,
            "trace_hvps": trace.samples, "trace_s": t_trace, "density_hvps": density.products,
            "density_s": t_density}


def _attempt(name: str, fn, count) -> str:
    """One peer measure: its value, products and seconds, or why it failed (one line)."""
    count["n"] = 0
    try:
        text, seconds = _timed(fn)
    except Exception as error:  # noqa: BLE001 - a failing peer call is the finding
        return f"{name} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return f"{name} {text} ({count['n']} HVPs, {seconds:.1f} s)"


def _pyhessian(run, x, y) -> list[str]:
    """PyHessian's own ``hessian`` class at its defaults (power iteration, Hutchinson, SLQ)."""
    try:
        from pyhessian import hessian as peer_hessian
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return [f"PyHessian does not import: {type(error).__name__}: {error}"]
    module = sys.modules["pyhessian.hessian"]
    count = {"n": 0}
    original = module.hessian_vector_product

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        torch.manual_seed(0)
        tool = peer_hessian(run.model, F.cross_entropy, data=(x, y), cuda=False)
        return [
            _attempt("largest", lambda: f"{tool.eigenvalues(maxIter=100, tol=1e-3)[0][0]:.4g}",
                     count),
            _attempt("trace", lambda: f"{statistics.mean(tool.trace(maxIter=100, tol=1e-3)):.4g}",
                     count),
            _attempt("density 2x8", lambda: f"nodes {_range(tool.density(iter=8, n_v=2)[0])}",
                     count),
        ]
    finally:
        module.hessian_vector_product = original


def _eigenthings(run, x, y) -> list[str]:
    """hessian-eigenthings' own operator and algorithms (Lanczos, Hutchinson, SLQ)."""
    try:
        import hessian_eigenthings as he
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return [f"hessian-eigenthings does not import: {type(error).__name__}: {error}"]
    try:
        operator = he.HessianOperator(run.model.eval(), [(x, y)],
                                      he.supervised_loss(F.cross_entropy))
    except Exception as error:  # noqa: BLE001
        return [f"hessian-eigenthings' operator failed: {type(error).__name__}: {error}"]
    count = {"n": 0}
    original = operator.matvec

    def counted(v):
        count["n"] += 1
        return original(v)

    operator.matvec = counted
    ends = {}

    def extremes():
        top = he.lanczos(operator, k=1, max_iter=20, which="LA", seed=0).eigenvalues[0]
        bottom = he.lanczos(operator, k=1, max_iter=20, which="SA", seed=0).eigenvalues[0]
        ends.update(top=float(top))
        return f"{float(top):.4g} / {float(bottom):.4g}"

    def trace():
        result = he.trace(operator, num_matvecs=50, method="hutchinson", seed=0)
        return f"{result.estimate:.4g} +- {result.stderr:.2g}"

    def density():
        result = he.spectral_density(operator, num_runs=2, lanczos_steps=8, seed=0)
        return f"nodes {_range(result.raw_eigenvalues.tolist())}"

    return [_attempt("extremes (two runs of 20)", extremes, count),
            _attempt("trace (Hutchinson, 50)", trace, count),
            _attempt("density 2x8", density, count)]


def _range(nodes) -> str:
    flat = [float(v) for run in nodes for v in run]
    return f"{min(flat):.4g}..{max(flat):.4g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--peer-models", nargs="*", default=["resnet20"])
    parser.add_argument("--trace-samples", type=int, default=50,
                        help="depthscape's Hutchinson probes at most (default 50)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        print(f"error: no checkpoint at {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads;"
          f" {args.images} training images per model", flush=True)
    for path in args.checkpoints:
        run = ds.load_run(path)
        x, y = _batch(run, args.images)
        ours = _ours(run, x, y, args.trace_samples)
        print(f"{run.model_name}: {ours['params']:,} parameters; one HVP {ours['hvp_s']:.3f} s",
              flush=True)
        print(f"  depthscape  extremes {ours['largest']:.4g} / {ours['smallest']:.4g}"
              f" ({ours['ends_hvps']} HVPs, {ours['ends_s']:.1f} s); trace {ours['trace']:.4g}"
              f" +- {ours['trace_se']:.2g} ({ours['trace_hvps']} HVPs, {ours['trace_s']:.1f} s);"
              f" density 2x8 ({ours['density_hvps']} HVPs, {ours['density_s']:.1f} s)",
              flush=True)
        if run.model_name not in args.peer_models:
            continue
        print("  PyHessian:           " + "; ".join(_pyhessian(run, x, y)), flush=True)
        print("  hessian-eigenthings: " + "; ".join(_eigenthings(run, x, y)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
