"""What each Hessian measure costs, in Hessian-vector products and seconds, and the same
measures by a peer library (PyHessian) on the same checkpoint and data.

    python benchmarks/bench_hessian.py CHECKPOINT [CHECKPOINT ...] [--images 128]
        [--peer-models resnet20] [--threads N]
    python benchmarks/bench_hessian.py --products resnet20 resnet56 --images 128 512
        [--rounds 3] [--float64] [--threads 1]
    python benchmarks/bench_hessian.py CHECKPOINT --time-to-accuracy [--images 128]
        [--targets top1 top5 trace density] [--reference FILE.json] [--threads 1]

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

``--time-to-accuracy`` times each library to a stated accuracy on one checkpoint and its
``--images`` training images, each library at the cheapest setting found to reach it:

* ``top1`` / ``top5``: the largest / the five largest eigenvalues, each within 1e-3
  (relative) of a reference: a float64 Lanczos run written here (:func:`_reference_top`,
  the field's product on a float64 copy, full reorthogonalisation, until every residual
  bound is under ``--reference-tol`` of its value; ``--reference FILE`` keeps it, so it can
  be computed before the timed runs). depthscape: ``ds.hessian_top_k`` at its own rule
  (``tol`` 1e-3, tighter only if that misses); PyHessian: ``eigenvalues(top_n=1 or 5)``
  over its ``tol`` (1e-2 down to 1e-6, ``maxIter`` 100); hessian-eigenthings: ``lanczos``
  (``which="LA"``, reorthogonalised) over ``max_iter`` (10 up to 160);
* ``trace``: a standard error at most 5 % of the trace. depthscape: ``ds.hessian_trace``
  stopping itself at ``tol`` 0.05; PyHessian (``trace(maxIter=N, tol=0)``, its probe values'
  own SE) and hessian-eigenthings (``trace``, Hutchinson and Hutch++, its own SE) over the
  probe count N, and a Hutchinson run that reaches it is re-run at its fewest probes that do
  (a prefix of the same draws);
* ``density``: the fixed setting ``--density RUNS STEPS`` (3 x 80): depthscape's
  ``ds.hessian_density``, hessian-eigenthings' ``spectral_density``; PyHessian's
  ``density`` calls ``torch.eig``, removed from PyTorch: it is run at 1 x 3 to show it fails.

A ladder stops at its first setting within the target, and a setting between that one and
the last that missed is tried while the knob allows (halving), so the setting found is the
cheapest on a ladder, not below it. Each run is timed alone, from the model and the images
to the answer (each library's own set-up included), its products counted; the libraries'
runs interleave (one of each in turn) after one warm-up call each; ``--repeats R`` re-times
the settings found R times, interleaved, and reports the median. The table at the end
gives, per target, depthscape's seconds over the fastest peer's that reached it (the goal
for top-5: at most 1/3). The peers' settings are found with the reference in hand, which
a user does not have; depthscape's come from its own convergence rule.

The first line names the CPU (the machines this runs on differ by up to 2.7x).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import depthscape as ds  # noqa: E402
from depthscape.analysis.hessian import HessianOperator  # noqa: E402
from depthscape.analysis.spectrum import spectral_density  # noqa: E402
from depthscape.core.atomic import atomic_write_text, refuse_link  # noqa: E402
from depthscape.core.models import get_model  # noqa: E402
from depthscape.core.plugins import state_sha256  # noqa: E402
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


@contextlib.contextmanager
def _pyhessian_counted():
    """PyHessian's ``hessian`` class with its product function counted: ``(class, count)``,
    ``count["n"]`` the products since it was last set to 0. Raises what its import raises."""
    from pyhessian import hessian as peer_hessian

    module = sys.modules["pyhessian.hessian"]
    count = {"n": 0}
    original = module.hessian_vector_product

    def counted(*args, **kwargs):
        count["n"] += 1
        return original(*args, **kwargs)

    module.hessian_vector_product = counted
    try:
        yield peer_hessian, count
    finally:
        module.hessian_vector_product = original


def _pyhessian(run, x, y) -> list[str]:
    """PyHessian's own ``hessian`` class at its defaults (power iteration, Hutchinson, SLQ)."""
    failure = _peer_import_failure("pyhessian.hessian", "PyHessian")
    if failure:
        return [failure]
    with _pyhessian_counted() as (peer_hessian, count):
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


def _peer_import_failure(module: str, name: str) -> str | None:
    """None where the peer's ``module`` imports, else the one line that says why not."""
    try:
        importlib.import_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure is the finding
        return f"{name} does not import: {type(error).__name__}: {error}"
    return None


def _eigenthings_counted(he, model, x, y, count: dict | None = None):
    """hessian-eigenthings' own ``HessianOperator`` on ``model`` (eval mode) and one batch,
    its ``matvec`` counted into ``count["n"]`` (a new count where None): ``(operator, count)``."""
    operator = he.HessianOperator(model.eval(), [(x, y)], he.supervised_loss(F.cross_entropy))
    count = {"n": 0} if count is None else count
    original = operator.matvec

    def counted(v):
        count["n"] += 1
        return original(v)

    operator.matvec = counted
    return operator, count


def _eigenthings(run, x, y) -> list[str]:
    """hessian-eigenthings' own operator and algorithms (Lanczos, Hutchinson, SLQ)."""
    failure = _peer_import_failure("hessian_eigenthings", "hessian-eigenthings")
    if failure:
        return [failure]
    import hessian_eigenthings as he
    try:
        operator, count = _eigenthings_counted(he, run.model, x, y)
    except Exception as error:  # noqa: BLE001
        return [f"hessian-eigenthings' operator failed: {type(error).__name__}: {error}"]
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


# --- time to a stated accuracy (--time-to-accuracy) ----------------------------------------

#: The targets of ``--time-to-accuracy``, in the order they run.
TARGETS = ("top1", "top5", "trace", "density")
EIGEN_TOL = 1e-3  # top-1 and top-5: each value within this of the reference's, relative
TRACE_SE = 0.05  # the trace: its standard error at most this fraction of |trace|
MIN_PROBES = 5  # the trace's fewest probes (depthscape's min_samples, the peers' prefixes)


def _reference_top(model, x, y, k: int, steps: int, tol: float) -> dict:
    """The ``k`` largest eigenvalues by a long Lanczos run in float64, written here as the
    reference (no library's code): the field's product (:func:`_field_product`) on a float64
    copy of the model and images, the basis fully reorthogonalised (classical Gram-Schmidt,
    twice per step), until each of the ``k`` largest Ritz values has a residual bound
    ``|beta_m s_mi|`` at most ``tol`` times itself (each then lies within its bound of an
    eigenvalue) or after ``steps`` steps."""
    start = time.perf_counter()
    exact = copy.deepcopy(model).double().eval()
    product = _field_product(exact, x.double(), y)
    params = [p for p in exact.parameters() if p.requires_grad]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]
    steps = min(steps, sum(sizes))
    basis = torch.empty(steps, sum(sizes), dtype=torch.float64)
    q = torch.randn(sum(sizes), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    q /= q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        basis[j] = q
        parts = [t.reshape(shape) for t, shape in zip(torch.split(q, sizes), shapes)]
        w = torch.cat([t.reshape(-1) for t in product(parts)])
        alphas.append(float(q @ w))
        for _ in range(2):
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        theta, vectors = torch.linalg.eigh(tridiagonal)
        values = theta.flip(0)[:k].tolist()
        bounds = (beta * vectors[-1].flip(0)[:k].abs()).tolist()
        done = len(values) == k and all(b <= tol * abs(v) for v, b in zip(values, bounds))
        if done or beta == 0.0:
            break
        betas.append(beta)
        q = w / beta
    return {"values": values, "bounds": bounds, "steps": len(alphas), "converged": done,
            "seconds": time.perf_counter() - start}


def _cached_reference(path: Path | None, model, x, y, args) -> dict:
    """:func:`_reference_top` (k = 5), read from ``path`` where it holds the one of the same
    model state, images, labels and settings, else computed (and written there, atomically,
    when a ``path`` is given): the reference's time is no measure, so it can be computed once
    before the timed runs."""
    identity = {"model": state_sha256(model.state_dict()),
                "batch": state_sha256({"x": x, "y": y}), "k": 5,
                "steps": args.reference_steps, "tol": args.reference_tol}
    if path is not None and path.exists():
        refuse_link(path, "reference file")
        saved = json.loads(path.read_text())
        if saved.get("identity") == identity:
            return {**saved["reference"], "cached": str(path)}
        print(f"# {path} holds another reference (model, images or settings): computing anew",
              flush=True)
    reference = _reference_top(model, x, y, 5, args.reference_steps, args.reference_tol)
    if path is not None:
        atomic_write_text(path, json.dumps({"identity": identity, "reference": reference},
                                           indent=1) + "\n")
    return reference


def _worst_error(values, reference) -> float:
    """The largest relative distance of ``values`` (sorted descending) from the reference's
    values of the same rank (inf where fewer came back)."""
    got = sorted((float(v) for v in values), reverse=True)
    if len(got) < len(reference):
        return math.inf
    return max(abs(g - r) / abs(r) for g, r in zip(got, reference))


def _relative_se(probes) -> float:
    """The standard error of the mean of ``probes`` over |their mean|."""
    if len(probes) < 2:
        return math.inf
    return statistics.stdev(probes) / math.sqrt(len(probes)) / abs(statistics.mean(probes))


class _Library:
    """One library's calls: ``call(target, setting)`` gives a dict (its values, ``products``
    counted, ``seconds`` from the model and the images to the answer, the library's own
    set-up such as its gradient graph included) or the one line that says why it failed."""

    name = ""

    def __init__(self, model, x, y):
        self.model, self.x, self.y, self.count = model, x, y, {"n": 0}

    def offers(self, target: str) -> bool:
        return True

    def between(self, missed: dict, reached: dict) -> dict | None:
        """A setting between one that missed the target and one that reached it, or None
        where the ladder's own steps are the finest this library's search takes."""
        return None

    def timed(self, fn):
        self.count["n"] = 0
        try:
            value, seconds = _timed(fn)
        except Exception as error:  # noqa: BLE001 - a failing call is the finding
            return f"fails: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
        return {**value, "seconds": seconds, "products": self.count["n"]}


@contextlib.contextmanager
def _ours_counted(count: dict):
    """depthscape's products counted into ``count["n"]``: every :class:`HessianOperator`
    call, the ones inside the API's calls included."""
    original = HessianOperator.__call__

    def counted(self, vector):
        count["n"] += 1
        return original(self, vector)

    HessianOperator.__call__ = counted
    try:
        yield
    finally:
        HessianOperator.__call__ = original


class _Ours(_Library):
    """depthscape's API: ``hessian_top_k``, ``hessian_trace``, ``hessian_density``."""

    name = "depthscape"

    def timed(self, fn):
        with _ours_counted(self.count):
            return super().timed(fn)

    def warm_up(self):
        return self.call("top1", {"tol": EIGEN_TOL, "iters": 2})

    def ladder(self, target: str, args):
        if target in ("top1", "top5"):  # its own rule stops each run; a tighter tol if short
            return [{"tol": tol, "iters": args.max_steps}
                    for tol in (1e-3, 3e-4, 1e-4, 3e-5, 1e-5)]
        if target == "trace":  # its own rule: stop once the SE is under tol x |trace|
            return [{"tol": TRACE_SE, "samples": args.trace_cap, "min_samples": MIN_PROBES}]
        return [{"runs": args.density[0], "steps": args.density[1]}]

    def call(self, target: str, setting: dict):
        data, chunk = (self.x, self.y), len(self.y)
        if target in ("top1", "top5"):
            def run():
                top = ds.hessian_top_k(self.model, data, 1 if target == "top1" else 5,
                                       iters=setting["iters"], tol=setting["tol"],
                                       batch_size=chunk)
                return {"values": top.values, "flag": top.all_converged}
        elif target == "trace":
            def run():
                estimate = ds.hessian_trace(self.model, data, batch_size=chunk, **setting)
                return {"trace": estimate.trace, "se": estimate.stderr,
                        "flag": estimate.converged}
        else:
            def run():
                ds.hessian_density(self.model, data, batch_size=chunk, **setting)
                return {}
        return self.timed(run)


class _PyHessian(_Library):
    """PyHessian's ``hessian`` class, a new one (on a copy of the model) for every call."""

    name = "PyHessian"

    def __init__(self, model, x, y, peer, count):
        super().__init__(model, x, y)
        self.peer, self.count = peer, count

    def tool(self):
        with warnings.catch_warnings():  # its loss.backward(create_graph=True): a known cycle
            warnings.filterwarnings("ignore", message="Using backward")
            return self.peer(self.model, F.cross_entropy, data=(self.x, self.y), cuda=False)

    def warm_up(self):
        return self.call("top1", {"tol": 1.0, "maxIter": 2})

    def ladder(self, target: str, args):
        if target in ("top1", "top5"):  # its knob: the relative change between two steps
            return [{"tol": tol, "maxIter": 100}
                    for tol in (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)]
        if target == "trace":  # tol 0: every one of maxIter probes (its own rule is no SE)
            return "probes"
        return [{"iter": 3, "n_v": 1}]  # it fails at torch.eig whatever the setting

    def between(self, missed: dict, reached: dict) -> dict | None:
        if "tol" not in missed or missed["tol"] < 1.7 * reached["tol"]:
            return None
        return {**reached, "tol": float(f"{math.sqrt(missed['tol'] * reached['tol']):.2g}")}

    def call(self, target: str, setting: dict):
        self.model = copy.deepcopy(self.model)  # it keeps its graph in the model's .grad
        torch.manual_seed(0)  # its draws are torch's global ones
        if target in ("top1", "top5"):
            top_n = 1 if target == "top1" else 5
            return self.timed(lambda: {"values": self.tool().eigenvalues(top_n=top_n,
                                                                          **setting)[0]})
        if target == "trace":
            def run():
                probes = self.tool().trace(maxIter=setting["probes"], tol=0.0)
                return {"trace": statistics.mean(probes), "probes": probes,
                        "se": _relative_se(probes) * abs(statistics.mean(probes))}
            return self.timed(run)
        return self.timed(lambda: (self.tool().density(**setting), {})[1])


class _Eigenthings(_Library):
    """hessian-eigenthings' ``HessianOperator`` with ``lanczos``, ``trace`` (``method``:
    Hutchinson, or Hutch++ for the trace alone) and ``spectral_density``."""

    def __init__(self, model, x, y, he, method: str = "hutchinson"):
        super().__init__(model, x, y)
        self.he, self.method = he, method
        self.name = "hessian-eigenthings" + ("" if method == "hutchinson" else f" {method}")

    def offers(self, target: str) -> bool:
        return self.method == "hutchinson" or target == "trace"

    def between(self, missed: dict, reached: dict) -> dict | None:
        key = "max_iter" if "max_iter" in missed else "probes"
        low, high = missed[key], reached[key]
        if high - low <= max(1 if key == "max_iter" else 3, high // 20):
            return None
        return {**reached, key: (low + high) // 2}

    def operator(self):
        return _eigenthings_counted(self.he, self.model, self.x, self.y, self.count)[0]

    def warm_up(self):
        return self.call("top1", {"k": 1, "max_iter": 2})

    def ladder(self, target: str, args):
        if target in ("top1", "top5"):  # no stopping rule: max_iter steps, always
            k = 1 if target == "top1" else 5
            return [{"k": k, "max_iter": m} for m in (10, 15, 20, 30, 40, 60, 80, 120, 160)
                    if k <= m <= args.max_steps]
        if target == "trace":
            return "probes"
        return [{"num_runs": args.density[0], "lanczos_steps": args.density[1]}]

    def call(self, target: str, setting: dict):
        he = self.he
        if target in ("top1", "top5"):
            def run():  # reorthogonalised as its default is up to 50 steps, also beyond
                result = he.lanczos(self.operator(), which="LA", seed=0, tol=EIGEN_TOL,
                                    reorthogonalize=True, **setting)
                return {"values": result.eigenvalues.tolist(),
                        "flag": bool(result.converged.all())}
        elif target == "trace":
            def run():
                result = he.trace(self.operator(), num_matvecs=setting["probes"],
                                  method=self.method, seed=0)
                out = {"trace": result.estimate, "se": result.stderr}
                if self.method == "hutchinson":  # one probe a value: its prefixes are runs
                    out["probes"] = result.samples.tolist()
                return out
        else:
            def run():
                he.spectral_density(self.operator(), seed=0, **setting)
                return {}
        return self.timed(run)


def _error(target: str, out: dict, reference) -> float:
    """How far a result is from the target's measure: the worst relative eigenvalue error,
    or the trace's relative standard error (0 for the density's fixed setting)."""
    if target in ("top1", "top5"):
        return _worst_error(out["values"], reference["values"][: 1 if target == "top1" else 5])
    if target == "trace":
        return out["se"] / abs(out["trace"]) if math.isfinite(out["se"]) else math.inf
    return 0.0


def _limit(target: str) -> float:
    return TRACE_SE if target == "trace" else EIGEN_TOL if target != "density" else 0.0


def _shown(setting: dict) -> str:
    return " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in setting.items())


def _next_probes(last) -> int:
    """The trace's next probe count: at least 1.5x the last, or as many as its relative
    standard error says the target needs (SE falls as 1/sqrt(probes)), 10 % over."""
    if last is None:
        return 10
    probes, error = last
    need = probes * (error / TRACE_SE) ** 2 * 1.1 if math.isfinite(error) else 2 * probes
    return int(math.ceil(max(1.5 * probes, need)))


def _report(target: str, library, setting: dict, out, reached: bool) -> None:
    if isinstance(out, str):
        print(f"  {target:<7s} {library.name:<30s} {_shown(setting):<28s} {out}", flush=True)
        return
    measure = {"top1": "rel error", "top5": "worst rel error", "trace": "rel SE"}.get(target)
    error = f"  {measure} {out['error']:.1e}" if measure else ""
    flag = ("" if "flag" not in out else
            f"  own flag {'converged' if out['flag'] else 'not converged'}")
    value = f"  trace {out['trace']:.5g} +- {out['se']:.3g}" if target == "trace" else ""
    print(f"  {target:<7s} {library.name:<30s} {_shown(setting):<28s} {out['products']:5d} HVPs"
          f" {out['seconds']:8.1f} s{error}{value}{flag}"
          f"{'  within target' if reached and target != 'density' else ''}",
          flush=True)


def _search(lib, target: str, reference, args):
    """One library's search for its cheapest setting that reaches ``target`` (a generator:
    it yields after each timed run, so that the libraries' runs interleave, and returns the
    row): its ladder's settings in turn until one is within the target; then, between that
    setting and the last one that was not, halving (``lib.between``) while it can; a trace
    whose probes are its values one by one re-run at the fewest that reach the target (a
    prefix of the same draws). The ladder ends at a failure, at its last setting or after
    ``--ladder-budget`` seconds. Every run prints its line."""
    limit, spent, step, last = _limit(target), 0.0, 0, None
    rungs = lib.ladder(target, args)

    def attempt(setting):
        nonlocal spent
        out = lib.call(target, setting)
        if isinstance(out, str):
            _report(target, lib, setting, out, False)
            return out, False
        out["error"] = _error(target, out, reference)
        spent += out["seconds"]
        _report(target, lib, setting, out, out["error"] <= limit)
        return out, out["error"] <= limit

    while True:
        if rungs == "probes":
            if last is not None and last[0]["probes"] >= args.trace_cap:
                break
            known = last and (last[0]["probes"], last[1]["error"])
            setting = {"probes": min(_next_probes(known), args.trace_cap)}
        elif step < len(rungs):
            setting = rungs[step]
        else:
            break
        step += 1
        out, reached = attempt(setting)
        if isinstance(out, str):
            return {"setting": setting, "failed": out}
        if reached and "probes" in out:
            fewest = next(n for n in range(MIN_PROBES, len(out["probes"]) + 1)
                          if _relative_se(out["probes"][:n]) <= limit)
            if fewest < setting["probes"]:
                yield
                tried, ok = attempt({"probes": fewest})
                if isinstance(tried, str):
                    return {"setting": {"probes": fewest}, "failed": tried}
                setting, out, reached = {"probes": fewest}, tried, ok
        elif reached:
            missed = last and last[0]
            while missed is not None and spent <= args.ladder_budget:
                middle = lib.between(missed, setting)
                if middle is None:
                    break
                yield
                tried, ok = attempt(middle)
                if isinstance(tried, str):
                    break
                if ok:
                    setting, out = middle, tried
                else:
                    missed = middle
        if reached or spent > args.ladder_budget:
            return {"setting": setting, "out": out, "reached": reached}
        last = (setting, out)
        yield
    return {"setting": last[0], "out": last[1], "reached": False} if last else None


def _race(target: str, libraries, reference, args) -> list[dict]:
    """Every library's :func:`_search` for ``target``, their runs interleaved (one run of
    each in turn). Returns one row per library."""
    searches = {lib.name: _search(lib, target, reference, args)
                for lib in libraries if lib.offers(target)}
    rows = {}
    while len(rows) < len(searches):
        for name, search in searches.items():
            if name in rows:
                continue
            try:
                next(search)
            except StopIteration as end:
                rows[name] = end.value
    return [{"target": target, "library": name, **rows[name]}
            for name in searches if rows[name]]


def _retime(target: str, rows: list[dict], libraries, repeats: int) -> None:
    """Each library's setting found for ``target`` run ``repeats`` more times, interleaved
    (A B C A B C ...): its row's seconds become the median of them (the products, the same
    settings and seeds, stay)."""
    by_name = {lib.name: lib for lib in libraries}
    times = {row["library"]: [] for row in rows if "out" in row}
    for _ in range(repeats):
        for row in rows:
            if "out" in row:
                out = by_name[row["library"]].call(target, row["setting"])
                if not isinstance(out, str):
                    times[row["library"]].append(out["seconds"])
    for row in rows:
        if times.get(row["library"]):
            row["out"]["seconds"] = statistics.median(times[row["library"]])
            shown = ", ".join(f"{t:.1f}" for t in times[row["library"]])
            print(f"  {target:<7s} {row['library']:<30s} re-timed: {shown} s", flush=True)


def _summary(rows: list[dict]) -> list[str]:
    """The table of every target and library: the setting found, seconds, products, seconds
    per product, the error, and depthscape's time over the fastest peer's that reached the
    target (top-5: against the goal of 1/3)."""
    lines = ["| target | library | setting found | seconds | HVPs | s/HVP | error |"
             " depthscape / fastest peer |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for target in TARGETS:
        these = [row for row in rows if row["target"] == target]
        peers = [row["out"]["seconds"] for row in these
                 if row["library"] != "depthscape" and row.get("reached")]
        fastest = min(peers) if peers else None
        for row in these:
            if "failed" in row:
                lines.append(f"| {target} | {row['library']} | {_shown(row['setting'])} |"
                             f" | | | {row['failed']} | |")
                continue
            out = row["out"]
            ratio = ""
            if row["library"] == "depthscape" and fastest and row["reached"]:
                ratio = f"{out['seconds'] / fastest:.2f}"
                if target == "top5":
                    met = out["seconds"] <= fastest / 3
                    ratio += f" (goal <= 0.33: {'met' if met else 'not met'})"
            error = "" if target == "density" else f"{out['error']:.1e}"
            mark = "" if row["reached"] else " (not reached)"
            per = out["seconds"] / out["products"] if out["products"] else math.nan
            lines.append(f"| {target} | {row['library']} | {_shown(row['setting'])}{mark} |"
                         f" {out['seconds']:.1f} | {out['products']} | {per:.2f} | {error} |"
                         f" {ratio} |")
    return lines


def _main_accuracy(args) -> int:
    """``--time-to-accuracy``: see the module's doc."""
    if args.threads:
        torch.set_num_threads(args.threads)
    run = ds.load_run(args.checkpoints[0])
    x, y = _batch(run, args.images)
    model = run.model.eval()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"# {cpu_description()}; torch {torch.__version__}; {torch.get_num_threads()} threads;"
          f" {run.model_name} ({params:,} parameters), {args.images} training images; fp32;"
          f" time to a stated accuracy", flush=True)
    with contextlib.ExitStack() as stack:
        libraries = [_Ours(model, x, y)]
        failure = _peer_import_failure("pyhessian.hessian", "PyHessian")
        if failure:
            print(failure, flush=True)
        else:
            libraries.append(_PyHessian(model, x, y, *stack.enter_context(_pyhessian_counted())))
        failure = _peer_import_failure("hessian_eigenthings", "hessian-eigenthings")
        if failure:
            print(failure, flush=True)
        else:
            import hessian_eigenthings as he
            libraries += [_Eigenthings(model, x, y, he),
                          _Eigenthings(model, x, y, he, method="hutch++")]
        for lib in libraries if not args.reference_only else []:
            if lib.offers("top1"):
                out = lib.warm_up()
                print(f"warm-up {lib.name}: "
                      + (out if isinstance(out, str) else f"{out['seconds']:.1f} s"), flush=True)
        reference = None
        if {"top1", "top5"} & set(args.targets):
            reference = _cached_reference(args.reference, model, x, y, args)
            where = f", read from {reference['cached']}" if "cached" in reference else ""
            print(f"reference (float64 Lanczos, full reorthogonalisation, {reference['steps']}"
                  f" steps, {reference['seconds']:.0f} s{where}, "
                  f"{'converged' if reference['converged'] else 'NOT converged'} to residual"
                  f" {args.reference_tol:g} relative): top-5 "
                  + ", ".join(f"{v:.7g} (+-{b:.1e})"
                              for v, b in zip(reference["values"], reference["bounds"])),
                  flush=True)
        if args.reference_only:
            return 0
        rows = []
        for target in TARGETS:
            if target in args.targets:
                found = _race(target, libraries, reference, args)
                if args.repeats > 1:
                    _retime(target, found, libraries, args.repeats)
                rows += found
    print("\n".join(_summary(rows)), flush=True)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


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
    accuracy = parser.add_argument_group("time to a stated accuracy")
    accuracy.add_argument("--time-to-accuracy", action="store_true",
                          help="each library's cheapest setting that reaches each target,"
                               " on one CHECKPOINT")
    accuracy.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    accuracy.add_argument("--max-steps", type=_positive, default=300,
                          help="the Lanczos steps at most of a top-k run (default 300)")
    accuracy.add_argument("--trace-cap", type=_positive, default=2000,
                          help="the trace's probes at most (default 2000)")
    accuracy.add_argument("--density", type=_positive, nargs=2, default=[3, 80],
                          metavar=("RUNS", "STEPS"), help="the density's setting (3 80)")
    accuracy.add_argument("--reference-steps", type=_positive, default=300,
                          help="the float64 reference's Lanczos steps at most (default 300)")
    accuracy.add_argument("--reference-tol", type=float, default=1e-7,
                          help="its residual bounds' target, relative (default 1e-7)")
    accuracy.add_argument("--reference", type=Path, default=None, metavar="FILE.json",
                          help="keep the float64 reference here: read where it matches, else"
                               " computed and written")
    accuracy.add_argument("--reference-only", action="store_true",
                          help="compute (or check) the --reference FILE, then stop")
    accuracy.add_argument("--repeats", type=_positive, default=1,
                          help="re-time each setting found this many times, interleaved, and"
                               " report the median (default 1: the search's own run)")
    accuracy.add_argument("--ladder-budget", type=float, default=1800.0,
                          help="seconds one library may spend on one target's ladder")
    args = parser.parse_args(argv)
    if args.products:
        if args.time_to_accuracy:
            parser.error("--products and --time-to-accuracy are separate modes")
        return _main_products(args)
    if not args.checkpoints:
        parser.error("name a CHECKPOINT, or --products MODEL")
    if args.time_to_accuracy and len(args.checkpoints) != 1:
        parser.error("--time-to-accuracy measures one CHECKPOINT")
    if args.time_to_accuracy and len(args.images) != 1:
        parser.error("--time-to-accuracy takes one --images count")
    if not 0 < args.reference_tol < 1e-3 or args.ladder_budget <= 0:
        parser.error("--reference-tol must lie in (0, 1e-3), --ladder-budget be positive")
    if args.reference_only and not (args.time_to_accuracy and args.reference):
        parser.error("--reference-only needs --time-to-accuracy and --reference FILE")
    if args.reference is not None and not args.reference.parent.is_dir():
        parser.error(f"no folder {args.reference.parent} for --reference")
    args.images = args.images[0]
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        print(f"error: no checkpoint at {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.time_to_accuracy:
        return _main_accuracy(args)
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
