"""What each Hessian measure costs, in Hessian-vector products and seconds, and the same
measures by a peer library (PyHessian) on the same checkpoint and data.

    python benchmarks/bench_hessian.py CHECKPOINT [CHECKPOINT ...] [--images 128]
        [--peer-models resnet20] [--threads N]
    python benchmarks/bench_hessian.py --products resnet20 resnet56 --images 128 512
        [--rounds 3] [--float64] [--threads 1]

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

``--products MODEL ...`` measures the product alone on freshly initialised models (seeded;
BatchNorm's running statistics moved by two training-mode passes over the images), random
images and labels, every ``--images`` count: products per second of the field's way (the
reverse-over-reverse double backward of PyHessian, fp32, NCHW, its gradient graph built
once and reused: :func:`_field_product`, written here as the reference), of the same with
the graph built for every product (PyHessian's way with a data loader), of depthscape's
:class:`HessianOperator` (its default, NCHW) and of the operator on a channels-last copy of
the model and images; interleaved (A B C D A B C D ...) after one warm-up product each, the
median of ``--rounds``; every product's distance from the field's (``rel`` the norm of the
difference over the norm, ``max`` its largest entry over the largest entry) and, with
``--float64``, each one's distance from the float64 product.

The first line names the CPU (the machines this runs on differ by up to 2.7x).
"""

from __future__ import annotations

import argparse
import copy
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
from depthscape.core.models import get_model  # noqa: E402
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


def _field_product(model, x, y):
    """The field's Hessian-vector product, as PyHessian forms it (``hessian.__init__`` and
    ``hessian_vector_product``): the gradient graph once, then ``v -> d(g . v)/d theta``."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def product(vector):
        return torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True)

    return product


def _field_fresh_product(model, x, y):
    """The field's product with the gradient graph built for each (a data loader's way)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def product(vector):
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        return torch.autograd.grad(grads, params, grad_outputs=vector)

    return product


def _distance(a, b) -> tuple[float, float]:
    """(||a - b|| / ||b||, max |a - b| / max |b|) over all the parameters."""
    flat_a = torch.cat([t.reshape(-1) for t in a]).double()
    flat_b = torch.cat([t.reshape(-1) for t in b]).double()
    diff = flat_a - flat_b
    return float(diff.norm() / flat_b.norm()), float(diff.abs().max() / flat_b.abs().max())


def _random_model(name: str, images: int, seed: int = 0):
    """A freshly initialised ``name`` for 10 classes, random images and labels, BatchNorm's
    running statistics moved off their defaults by two training-mode passes."""
    torch.manual_seed(seed)
    model = get_model(name, num_classes=10)
    x = torch.randn(images, 3, 32, 32)
    y = torch.randint(0, 10, (images,))
    with torch.no_grad():
        model.train()
        for _ in range(2):
            model(x)
    return model.eval(), x, y


def _products(name: str, images: int, rounds: int, float64: bool) -> list[dict]:
    """The product by each way on one model and image count (see the module's doc)."""
    model, x, y = _random_model(name, images)
    layout = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_layout = x.contiguous(memory_format=torch.channels_last)
    ours = HessianOperator(model, x, y, batch_size=len(y))
    ours_layout = HessianOperator(layout, x_layout, y, batch_size=len(y))
    ways = {"field (double backward, fp32, NCHW)": _field_product(model, x, y),
            "field, graph per product": _field_fresh_product(model, x, y),
            "depthscape HessianOperator": ours,
            "depthscape, channels-last": ours_layout}
    generator = torch.Generator().manual_seed(1)
    vector = [torch.randn(p.shape, generator=generator) for p in ours.params]
    outputs = {way: [t.detach().clone() for t in fn(vector)] for way, fn in ways.items()}
    seconds = {way: [] for way in ways}
    for _ in range(rounds):  # interleaved: the machine's load falls on every way alike
        for way, fn in ways.items():
            seconds[way].append(_timed(lambda fn=fn: fn(vector))[1])
    truth = None
    if float64:
        exact = copy.deepcopy(model).double()
        truth = _field_product(exact, x.double(), y)([v.double() for v in vector])
    reference = outputs[next(iter(ways))]
    field_s = statistics.median(seconds[next(iter(ways))])
    rows = []
    for way in ways:
        median = statistics.median(seconds[way])
        rel, top = _distance(outputs[way], reference)
        row = {"way": way, "model": name, "images": images, "products_s": 1 / median,
               "speedup": field_s / median, "rel": rel, "max": top}
        if truth is not None:
            row["rel64"] = _distance(outputs[way], truth)[0]
        rows.append(row)
    return rows


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
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--images", type=int, nargs="+", default=[128],
                        help="images per model (several: each, with --products)")
    parser.add_argument("--products", nargs="+", metavar="MODEL", default=None,
                        help="measure the product alone on freshly initialised MODELs")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed products of each way, with --products (default 3)")
    parser.add_argument("--float64", action="store_true",
                        help="with --products: each way's distance from the float64 product")
    parser.add_argument("--peer-models", nargs="*", default=["resnet20"])
    parser.add_argument("--trace-samples", type=int, default=50,
                        help="depthscape's Hutchinson probes at most (default 50)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.products:
        return _main_products(args)
    if not args.checkpoints:
        parser.error("name a CHECKPOINT, or --products MODEL")
    args.images = args.images[0]
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


def _main_products(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads;"
          f" Hessian-vector products, fp32, freshly initialised models, random images;"
          f" median of {args.rounds} interleaved after a warm-up", flush=True)
    for name in args.products:
        for images in args.images:
            for row in _products(name, images, args.rounds, args.float64):
                exact = f"; vs float64 {row['rel64']:.1e}" if "rel64" in row else ""
                print(f"{row['model']} {row['images']} images  {row['way']:<36s}"
                      f" {row['products_s']:7.3f} products/s  x{row['speedup']:.2f}"
                      f"  rel {row['rel']:.1e} max {row['max']:.1e}{exact}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
