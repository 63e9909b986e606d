"""The Hessian of a model's loss, by Hessian-vector products: its extreme eigenvalues and trace.

Every quantity comes from products ``v -> H v`` (Pearlmutter's trick: the gradient of
``g . v``), never from the Hessian itself, so they work for any model size:

* :func:`hessian_extremes` / :func:`extreme_eigenvalues`: the largest and the smallest
  (algebraic) eigenvalue, by the Lanczos method. Used by sharpness (at a trained minimum)
  and by curvature maps (at every point of a landscape grid).
* :func:`dominant_eigenvalue`: power iteration, the eigenvalue of largest magnitude
  (which may be the most negative one: it is not "the largest").
* :func:`hessian_trace`: Hutchinson's estimator ``E[v^T H v]`` with Rademacher ``v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from depthscape.analysis.hessian_products import fast_layers
from depthscape.analysis.lanczos import flat_operator, tridiagonal
from depthscape.analysis.stats import mean_stderr
from depthscape.core.errors import UserError
from depthscape.core.limits import check_basis_fits
from depthscape.core.runtime import Precision, precision_named


class HessianOperator:
    """``v -> H v`` for the mean loss of ``model`` over ``(inputs, labels)``, model in eval mode.

    The data is cut into chunks of ``batch_size``; each product sums the chunks' Hessian-
    vector products weighted by their share of the samples. ``precision`` (a resolved
    :class:`~depthscape.core.runtime.Precision`; None: fp32) is the forward pass's autocast
    (bf16: the loss and the products stay float32) and the TF32 switches of every product,
    set as it says inside the product and restored after it, whatever the process had
    (fp32: TF32 off). With a single chunk the gradient graph is built once and reused by
    every product.

    Data parallel (``dist`` a :class:`~depthscape.core.distributed.DistContext` of
    ``world_size > 1``, every rank passing the same ``inputs``/``labels``): each rank keeps
    its contiguous share (:meth:`DistContext.shard`), forms the products on it with the
    loss still divided by the *whole* sample count (so each share counts by its number of
    samples) and the ranks' products are summed (all-reduced in float64). Every rank then
    holds the same product, bit for bit, so seeded Lanczos and Hutchinson runs on every rank
    take the same steps and agree; each must call the operator the same number of times.

    ``fast`` (default): the gradient graph uses :mod:`~depthscape.analysis.hessian_products`'
    layers where the model has them (same products to float32 rounding: docs/spectrum.md);
    False, or a precision with autocast (bf16), uses the modules' own forward passes.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 500,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 precision: Precision | str | None = None, dist=None, fast: bool = True):
        self.model = model
        self.dist = dist if dist is not None and dist.enabled else None
        device_type = next(iter(model.parameters()), torch.empty(0)).device.type
        self.precision = (precision if isinstance(precision, Precision) else  # a name: as resolved
                          precision_named(precision, device_type)).check_backward()
        self.model.eval()
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise UserError("the model has no trainable parameters (none requires grad): "
                            "the Hessian is taken with respect to them")
        self.loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y, reduction="sum"))
        self.total = len(labels)  # the whole data's: each rank's share weighs by its size
        if self.dist is not None:
            lo, hi = self.dist.shard(len(labels))
            inputs, labels = inputs[lo:hi], labels[lo:hi]
        self.local = len(labels)
        self.chunks = [(inputs[i:i + batch_size], labels[i:i + batch_size])
                       for i in range(0, len(labels), batch_size)]
        if self.total == 0:
            raise ValueError("no data to measure the Hessian on")
        # the faster layers are float32 kernels: under autocast the modules' own run
        self.fast = bool(fast) and self.precision.autocast_dtype is None
        self._cached_grads: list[torch.Tensor] | None = None
        self.products = 0

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def check_curved(self) -> None:
        """One line (:class:`UserError`), before any product, where the loss or its gradient
        (on the first chunk: the products reuse its graph) does not depend on the parameters."""
        try:
            grads = self._grads(*self.chunks[0]) if self.chunks else None
        except RuntimeError as error:  # autograd's words for a loss with no graph
            if "does not require grad" not in str(error):
                raise
            grads = []
        if grads is not None and not any(g.requires_grad for g in grads):
            raise UserError("the loss has no second derivative with respect to the model's "
                            "trainable parameters (it or its gradient does not depend on them)")
        self._cached_grads = grads if len(self.chunks) == 1 else None

    def _grads(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        with fast_layers(self.model, self.fast), self.precision.forward():
            logits = self.model(x)
        logits = self.precision.float_output(logits)  # the loss in float32
        loss = self.loss_fn(logits, y) / self.total
        return list(torch.autograd.grad(loss, self.params, create_graph=True))

    def __call__(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.products += 1
        with self.precision.scope():
            if self.dist is None:
                return self._local(vector)
            return self._all_sum(self._local(vector))

    def _local(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The product on this process's data (its share under torchrun)."""
        if len(self.chunks) == 1:
            if self._cached_grads is None:
                self._cached_grads = self._grads(*self.chunks[0])
            return self._product(self._cached_grads, vector, retain=True)
        result = [torch.zeros_like(p) for p in self.params]
        for x, y in self.chunks:  # none where a rank's share is empty: it adds zero
            part = self._product(self._grads(x, y), vector, retain=False)
            for r, h in zip(result, part):
                r += h
        return result

    def _all_sum(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """The sum over the ranks of each rank's product, in float64, as every rank's."""
        flat = torch.cat([h.reshape(-1).double() for h in parts])
        flat = self.dist.all_sum(flat)
        sizes = [h.numel() for h in parts]
        return [t.view(h.shape).to(h.dtype) for t, h in zip(flat.split(sizes), parts)]

    def _product(self, grads, vector, retain: bool) -> list[torch.Tensor]:
        dot = sum((g * v).sum() for g, v in zip(grads, vector))
        hv = torch.autograd.grad(dot, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.params, hv)]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def _normalized(vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    norm = math.sqrt(_dot(vector, vector))
    if norm == 0:
        raise ArithmeticError("zero vector in power iteration")
    return [v / norm for v in vector]


def dominant_eigenvalue(operator: Callable, params: Sequence[torch.Tensor], iters: int = 20,
                        tol: float = 1e-3, seed: int = 0) -> tuple[float, int, bool]:
    """Power iteration on ``operator`` (a Hessian-vector product over ``params``' shapes).

    Returns (the eigenvalue of largest *magnitude*, which may be negative; iterations used;
    converged). Converged means the Rayleigh quotient moved by less than
    ``tol * |eigenvalue|`` in the last iteration. For the largest and the smallest
    eigenvalue use :func:`extreme_eigenvalues`.
    """
    generator = torch.Generator().manual_seed(seed)
    vector = _normalized([torch.randn(p.shape, generator=generator).to(p) for p in params])
    eigenvalue = math.nan
    for iteration in range(1, iters + 1):
        product = operator(vector)
        new = _dot(vector, product)  # Rayleigh quotient of the unit vector
        try:
            vector = _normalized(product)
        except ArithmeticError:
            return 0.0, iteration, True  # H v = 0: v lies in the null space
        if math.isfinite(eigenvalue) and abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new, iteration, True
        eigenvalue = new
    return eigenvalue, iters, False


#: The convergence rule of every Lanczos value (:func:`extreme_eigenvalues`, the top-k and the
#: density's outer nodes, :func:`ritz_converged`), named in the key of every stored result
#: that depends on it (sharpness results, curvature maps), so results of an older rule are
#: measured again: a Ritz value is converged when its residual bound is under ``tol`` times
#: its own magnitude and it held its place for :func:`hold_steps` steps. The older rules
#: judged how far a value moved in one step (against the largest magnitude, then against
#: each end's own), and called values settled that were 10-146 % off while they crept
#: (issue 31).
STOP_RULE = "ritz-residual-own-magnitude-held"

#: The floor of :func:`ritz_converged` for values near 0, as a fraction of the largest Ritz
#: magnitude: a value of ``|theta| < RESIDUAL_FLOOR * |theta_max|`` is converged once its
#: residual is under ``tol * RESIDUAL_FLOOR * |theta_max|`` (an absolute accuracy of
#: ``tol`` x 1e-3 of the spectral radius), since ``tol * |theta|`` vanishes at 0.
RESIDUAL_FLOOR = 1e-3


def ritz_converged(value: float, residual: float, tol: float, scale: float) -> bool:
    """Whether a Ritz value has converged: its residual bound ``|beta_j s_ij|`` (``beta_j``
    the Lanczos tridiagonal's last off-diagonal, ``s_ij`` the last component of the value's
    eigenvector of the tridiagonal; with a fully reorthogonalised basis it is the residual
    ``||H u - theta u||`` of the Ritz pair) is at most ``tol * max(|value|, RESIDUAL_FLOOR *
    scale)``, ``scale`` the largest Ritz magnitude. Some eigenvalue of ``H`` then lies within
    ``tol`` of the value, relative to its magnitude (or to the floor). NaN never converges."""
    return bool(residual <= tol * max(abs(value), RESIDUAL_FLOOR * scale))


#: The fewest steps a Ritz value must hold its place before it counts as converged: it
#: passed :func:`ritz_converged` that many steps before too and moved by less than its
#: tolerance since. The residual bound proves an eigenvalue near the value, not which one:
#: where the start vector holds little of an eigenvector, its eigenvalue enters the Ritz
#: values late and every value beyond it moves one place inwards. On a 308-parameter
#: BatchNorm network (exact Hessian, 40 Lanczos seeds, tol 1e-2) the residual alone called
#: the smallest end converged 2-4 % above the exact one (it had found the second smallest)
#: in 3 seeds at 40 steps, and the 20th of a top-20 2-7 % under the exact 20th in 5; held
#: 5 steps (the ends) and 10 (the top-20), in none. Costs that many products more.
HOLD_STEPS = 5


def hold_steps(k: int = 1) -> int:
    """The steps a value must hold its place in a run that judges the ``k`` values at an end
    of the spectrum: :data:`HOLD_STEPS` for an end alone, twice that for a top-k (values
    inside the spectrum, where eigenvalues crowd, are found out of order more often)."""
    return HOLD_STEPS if k <= 1 else 2 * HOLD_STEPS


def held(value: float, before: float, tol: float, scale: float) -> bool:
    """Whether a value moved by at most its tolerance (as :func:`ritz_converged` scales it)
    since ``before``, its value :func:`hold_steps` steps earlier."""
    return bool(abs(value - before) <= tol * max(abs(value), RESIDUAL_FLOOR * scale))


#: Marks a value that did not converge within its budget (every table and ``repr``).
UNCONVERGED_MARK = "†"  # a dagger


def _g(value: float | None) -> str:
    return "None" if value is None else f"{value:.3g}"


@dataclass(frozen=True)
class EigenExtremes:
    """The two ends of a Hessian's spectrum and how their Lanczos run ended.

    The per-end fields say which end converged where the run as a whole did not (the
    largest end usually converges in few steps, the smallest does not): ``*_converged`` is
    that end's own flag by :func:`ritz_converged` (``None``: not recorded, read
    ``converged``), ``*_residual`` the residual bound ``||H v - theta v||`` of its Ritz
    pair that the flag judges: some eigenvalue of the Hessian lies within it of the value
    (a small residual alone does not prove it is the extreme one), and ``*_change`` how much
    the last step moved it (absolute; ``None``: unknown, e.g. after one step; shown, not
    judged). The ``repr`` marks an end that did not converge with a dagger.
    """

    largest: float  # largest (algebraic) eigenvalue: the sharpest upward curvature
    smallest: float  # smallest (algebraic) eigenvalue: negative where the loss curves down
    iterations: int  # Hessian-vector products (Lanczos steps) used
    converged: bool  # both ends met the tolerance (or are exact)
    largest_converged: bool | None = None
    smallest_converged: bool | None = None
    largest_change: float | None = None
    smallest_change: float | None = None
    largest_residual: float | None = None
    smallest_residual: float | None = None

    @property
    def ratio(self) -> float:
        """``|smallest / largest|`` (Li et al.'s convexity measure; nan where largest is 0)."""
        return abs(self.smallest / self.largest) if self.largest else math.nan

    def end_converged(self, end: str) -> bool:
        """Whether the ``"largest"`` or ``"smallest"`` end converged (the run's flag where
        the end's own was not recorded)."""
        own = getattr(self, f"{end}_converged")
        return self.converged if own is None else bool(own)

    def __repr__(self) -> str:
        def shown(end):
            return f"{getattr(self, end):.6g}" + ("" if self.end_converged(end) else UNCONVERGED_MARK)

        return (f"EigenExtremes(largest={shown('largest')}, smallest={shown('smallest')}, "
                f"iterations={self.iterations}, converged={self.converged}, residuals="
                f"{_g(self.largest_residual)}/{_g(self.smallest_residual)})")


def _ritz_ends(alphas: list[float], betas: list[float], beta: float):
    """The smallest and the largest Ritz value of the Lanczos :func:`tridiagonal` and their
    residual bounds (``beta``, the next off-diagonal, times the last entry of each one's
    eigenvector); None where LAPACK cannot diagonalise it."""
    try:
        ritz, vectors = torch.linalg.eigh(tridiagonal(alphas, betas))
    except torch.linalg.LinAlgError:
        return None
    return ((float(ritz[0]), float(ritz[-1])),
            (beta * abs(float(vectors[-1, 0])), beta * abs(float(vectors[-1, -1]))))


def extreme_eigenvalues(operator: Callable, params: Sequence[torch.Tensor], iters: int = 20,
                        tol: float = 1e-3, seed: int = 0) -> EigenExtremes:
    """Largest and smallest eigenvalue of the symmetric ``operator`` (``v -> H v``), by Lanczos.

    At most ``iters`` Hessian-vector products build an orthonormal Krylov basis (fully
    reorthogonalised, so no eigenvalue repeats); the extreme eigenvalues of the small
    tridiagonal matrix it yields (the Ritz values) approach both ends of the spectrum from
    inside, far faster than power iteration where eigenvalues crowd near the ends. Stops
    when both ends pass :func:`ritz_converged` (residual bound under ``tol`` times their
    own magnitude, floored near 0) and passed it :func:`hold_steps` steps before, within
    that tolerance of their value now; when the basis spans an invariant subspace (exact);
    or after ``iters`` steps (an end that did not pass is flagged). Keeps ``iters`` vectors.
    """
    apply, size = flat_operator(operator, params)
    like = params[0]
    generator = torch.Generator().manual_seed(seed)
    check_basis_fits(iters, size, like)
    start = torch.randn(size, generator=generator, dtype=torch.float64)
    basis = torch.zeros(iters, size, dtype=like.dtype, device=like.device)
    basis[0] = (start / start.norm()).to(basis)
    alphas, betas = [], []  # the tridiagonal's diagonal and off-diagonal
    ends = (math.nan, math.nan)
    history: list[tuple[tuple[float, float], tuple[bool, bool]]] = []  # per step
    hold = hold_steps()

    def failed(steps: int) -> EigenExtremes:
        # Far from a minimum a deep PlainNet's loss reaches 1e20 and its curvature
        # overflows float32: no eigenvalue is defined there (nan, not converged).
        return EigenExtremes(math.nan, math.nan, steps, False, False, False)

    for step in range(iters):
        w = apply(basis[step])
        alphas.append(float(w.double() @ basis[step].double()))
        if not math.isfinite(alphas[-1]) or not bool(torch.isfinite(w).all()):
            return failed(step + 1)
        done = basis[:step + 1]
        for _ in range(2):  # twice is enough to keep the basis orthogonal in floating point
            w = w - done.T @ (done @ w)
        beta = float(w.norm())
        found = _ritz_ends(alphas, betas, beta)
        if found is None:  # a tridiagonal LAPACK cannot diagonalise: as above
            return failed(step + 1)
        new, residual = found
        scale = max(abs(new[0]), abs(new[1]), 1e-30)
        change = (abs(new[0] - ends[0]), abs(new[1] - ends[1])) if step else (None, None)
        # each end by its residual bound against its own magnitude (an eigenvalue lies
        # within it; a small change in one step proves nothing: docs/spectrum.md)
        passed = tuple(ritz_converged(v, r, tol, scale) for v, r in zip(new, residual))
        history.append((new, passed))
        # ... and held its place: a missed eigenvalue beyond it would have moved it
        before = history[step - hold] if step >= hold else None
        settled = tuple(p and before is not None and before[1][end]
                        and held(new[end], before[0][end], tol, scale)
                        for end, p in enumerate(passed))
        exact = beta <= 1e-10 * scale  # an invariant subspace: its Ritz values are exact
        if all(settled) or exact or step + 1 == iters:
            ok = (True, True) if all(settled) or exact else settled
            return EigenExtremes(new[1], new[0], step + 1, all(ok), ok[1], ok[0], change[1],
                                 change[0], residual[1], residual[0])
        ends = new
        betas.append(beta)
        basis[step + 1] = w / beta
    raise AssertionError("unreachable: the loop returns at its last step")  # pragma: no cover


def hessian_extremes(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *,
                     batch_size: int = 500,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     iters: int = 20, tol: float = 1e-3, seed: int = 0,
                     dist=None) -> EigenExtremes:
    """Largest and smallest Hessian eigenvalue of ``model``'s mean loss on ``(inputs, labels)``.

    The model is put in eval mode (BatchNorm uses its running statistics); every trainable
    parameter counts; ``loss_fn(logits, labels)`` must return the *summed* loss (default:
    summed cross-entropy). ``batch_size`` cuts the data into chunks of that many samples.
    For a point of a landscape, set the model's weights to the point first. Under torchrun
    pass ``dist`` (every rank the same data): the products are split over the ranks (see
    :class:`HessianOperator`) and every rank returns the same values.
    """
    operator = HessianOperator(model, inputs, labels, batch_size, loss_fn, dist=dist)
    return extreme_eigenvalues(operator, operator.params, iters, tol, seed)


def hessian_trace(operator: Callable, params: Sequence[torch.Tensor], samples: int = 50,
                  tol: float = 1e-2, min_samples: int = 5, seed: int = 0,
                  parts: list | None = None) -> tuple[float, float, int, bool]:
    """Hutchinson's estimate of the trace: the mean of ``v^T H v`` over Rademacher ``v``.

    Returns (trace, its standard error, probes used, converged): stops once ``min_samples``
    or more probes give a standard error under ``tol * |trace|``. ``parts`` (a list) gets
    each probe's ``v_p . (H v)_p`` per tensor of ``params`` (block traces, same probes)."""
    generator = torch.Generator().manual_seed(seed + 7919)
    values: list[float] = []
    for _ in range(samples):
        probe = [(torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p)
                 for p in params]
        dots = torch.stack([(x.double() * y.double()).sum()
                            for x, y in zip(probe, operator(probe))]).tolist()
        if parts is not None:
            parts.append(dots)
        values.append(sum(dots))
        mean, stderr = mean_stderr(values)
        if len(values) >= max(2, min_samples) and stderr <= tol * abs(mean):
            return mean, stderr, len(values), True
    return mean, stderr, len(values), False
