"""Per-block Hessians: where in depth the curvature sits.

The parameters are cut into blocks by :func:`~depthscape.core.layers.parameterised_layers`
(the rows of the gradient-flow file): ``"layer"`` (each parameterised layer), ``"stage"``
(``stem``, ``layer1``..``layer3``, ``head``: the layers' stage column) or a list of names
(a stage, a layer or any module holding parameterised layers). For a block ``b``:

* its **trace** ``tr(H_bb)`` from the whole trace's own Hutchinson probes: for a Rademacher
  ``v``, ``E[(H v)_b . v_b] = tr(H_bb)``, so every block's trace (with its standard error
  over the probes) costs no product beyond the trace's, and the block traces of a partition
  sum to the whole trace estimate probe by probe;
* its **largest eigenvalue**, by Lanczos (:func:`~depthscape.analysis.spectrum.
  top_eigenvalues`, k = 1) on the diagonal block ``H_bb`` (:class:`BlockOperator`);
* its **eigenvalue density** (SLQ, :func:`~depthscape.analysis.density.spectral_density`)
  on ``H_bb`` (:func:`block_densities`).

:class:`BlockOperator` wraps a :class:`~depthscape.analysis.hessian.HessianOperator`, so
under torchrun the block products are the same data-parallel, all-reduced products.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from depthscape.analysis.density import SpectralDensity, spectral_density
from depthscape.analysis.hessian import UNCONVERGED_MARK
from depthscape.analysis.spectrum import top_eigenvalues
from depthscape.analysis.stats import mean_stderr
from depthscape.core.errors import UserError
from depthscape.core.layers import Layer, parameterised_layers, stages

#: The partitions by name (anything else is a list of names).
PARTITIONS = ("layer", "stage")

#: The columns of a block file's CSV, one row per block.
BLOCK_FIELDS = ("block", "stage", "num_params", "trace", "trace_se", "lambda_max",
                "lambda_max_converged", "lambda_max_steps", "lambda_max_residual")


@dataclass(frozen=True)
class Block:
    """One block of parameters: its name, stage and its tensors' places among the model's
    trainable parameters (``[p for p in model.parameters() if p.requires_grad]``)."""

    name: str
    stage: str
    indices: tuple[int, ...]
    size: int


def parse_blocks(text: str) -> str | tuple[str, ...]:
    """``"layer"``, ``"stage"``, or the names of a comma-separated list (UserError where
    one is empty)."""
    text = text.strip()
    if text in PARTITIONS:
        return text
    names = tuple(name.strip() for name in text.split(","))
    if not text or not all(names):
        raise UserError(f"--blocks takes layer, stage or comma-separated names, got {text!r}")
    return names


def _named(name: str, layers: list[Layer], modules: dict) -> list[Layer]:
    """The layers of the block ``name``: a stage, or a module and the layers inside it."""
    if name in stages(layers):
        return [layer for layer in layers if layer.stage == name]
    if name not in modules:
        raise UserError(f"the model has no layer or stage named {name!r} (stages: "
                        f"{', '.join(stages(layers))}; layers: e.g. {layers[0].name})")
    inside = [layer for layer in layers if layer.name == name or layer.name.startswith(name + ".")]
    if not inside:
        raise UserError(f"block {name!r} has no trainable parameters")
    return inside


def partition(model: nn.Module, by: str | Sequence[str]) -> list[Block]:
    """``model``'s blocks: ``"layer"``, ``"stage"`` or a list of names (see the module).

    One line (:class:`UserError`), before any product: an unknown name, a name whose module
    holds no trainable parameter, two blocks sharing parameters, or a model with one block
    (its block Hessian is the whole Hessian)."""
    by = parse_blocks(by) if isinstance(by, str) else tuple(by)
    layers = parameterised_layers(model)
    trainable = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    if len(layers) < 2:
        raise UserError(f"the model has {len(layers)} parameterised layer(s), so one block: "
                        "its block Hessian is the whole Hessian (use the whole-network measures)")
    if by == "layer":
        groups = [(layer.name, [layer]) for layer in layers]
    elif by == "stage":
        groups = [(stage, [layer for layer in layers if layer.stage == stage])
                  for stage in stages(layers)]
    else:
        modules = dict(model.named_modules())
        groups = [(name, _named(name, layers, modules)) for name in dict.fromkeys(by)]
    blocks, owner = [], {}
    for name, members in groups:
        indices = tuple(dict.fromkeys(trainable[id(p)] for layer in members for p in layer.params))
        for i in indices:
            if i in owner:
                raise UserError(f"blocks {owner[i]!r} and {name!r} share parameters: "
                                "each parameter may be in one block")
            owner[i] = name
        size = sum(sum(p.numel() for p in layer.params) for layer in members)
        blocks.append(Block(name, "+".join(dict.fromkeys(m.stage for m in members)), indices,
                            size))
    if len(blocks) < 2 and len(owner) == len(trainable):
        raise UserError(f"--blocks {','.join(by) if not isinstance(by, str) else by} gives "
                        "one block holding every parameter: the whole Hessian")
    return blocks


class BlockOperator:
    """``v_b -> H_bb v_b``: the diagonal block of ``operator``'s Hessian (the other blocks'
    parts of ``v`` zero, the block's part of ``H v`` kept). One product of ``operator``
    each (under torchrun its data-parallel product), counted in ``operator.products``."""

    def __init__(self, operator, block: Block):
        self.operator, self.block = operator, block
        self.params = [operator.params[i] for i in block.indices]

    def __call__(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        full = [torch.zeros_like(p) for p in self.operator.params]
        for i, v in zip(self.block.indices, vector):
            full[i] = v
        product = self.operator(full)
        return [product[i] for i in self.block.indices]


def block_traces(blocks: Sequence[Block], parts: Sequence[Sequence[float]]
                 ) -> list[tuple[float, float]]:
    """Each block's ``(trace, standard error)`` over the probes whose per-tensor values
    ``v_p . (H v)_p`` are ``parts`` (:func:`~depthscape.analysis.hessian.hessian_trace`'s)."""
    return [mean_stderr([sum(probe[i] for i in block.indices) for probe in parts])
            for block in blocks]


def block_largest(operator, blocks: Sequence[Block], iters: int, tol: float, seed: int):
    """Each block's largest eigenvalue: a :class:`~depthscape.analysis.spectrum.
    TopEigenvalues` of k = 1 by Lanczos on ``H_bb`` (at most ``iters`` products each)."""
    found = []
    for block in blocks:
        restricted = BlockOperator(operator, block)
        found.append(top_eigenvalues(restricted, restricted.params, 1, iters, tol, seed))
    return found


def block_densities(operator, blocks: Sequence[Block], runs: int, steps: int,
                    width: float | None, points: int, seed: int, tol: float
                    ) -> dict[str, SpectralDensity]:
    """Each block's eigenvalue density by SLQ on ``H_bb`` (``runs * steps`` products each)."""
    found = {}
    for block in blocks:
        restricted = BlockOperator(operator, block)
        found[block.name] = spectral_density(restricted, restricted.params, runs, steps, width,
                                             points, seed=seed, tol=tol)
    return found


@dataclass(frozen=True)
class BlockRow:
    """One block's numbers (None: not measured)."""

    block: str
    stage: str
    num_params: int
    trace: float | None = None  # tr(H_bb), Hutchinson, the whole trace's probes
    trace_se: float | None = None  # its standard error over the probes
    lambda_max: float | None = None  # the largest eigenvalue of H_bb, Lanczos
    lambda_max_converged: bool | None = None
    lambda_max_steps: int | None = None
    lambda_max_residual: float | None = None


@dataclass
class BlockHessian:
    """Per-block Hessian numbers of one model: ``rows`` (one :class:`BlockRow` per block),
    the partition (``by``), the probes of the traces (``samples``), the products spent in
    all (``products``: the whole trace's and extremes' included) and ``whole``: the
    whole network's estimate they came with (a ``TraceEstimate`` or an ``EigenExtremes``)."""

    by: str
    rows: list[BlockRow]
    samples: int | None = None
    products: int | None = None
    whole: Any = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {"by": self.by, "samples": self.samples, "products": self.products,
                "rows": [asdict(row) for row in self.rows]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> BlockHessian:
        return cls(data["by"], [BlockRow(**row) for row in data["rows"]], data.get("samples"),
                   data.get("products"))

    def to_csv(self) -> str:
        """One row per block (:data:`BLOCK_FIELDS`)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(BLOCK_FIELDS)
        writer.writerows([getattr(row, name) for name in BLOCK_FIELDS] for row in self.rows)
        return out.getvalue()

    def __repr__(self) -> str:
        def shown(row: BlockRow) -> str:
            parts = [row.block]
            if row.trace is not None:
                parts.append(f"trace {row.trace:.4g} ± {row.trace_se:.2g}")
            if row.lambda_max is not None:
                mark = "" if row.lambda_max_converged else UNCONVERGED_MARK
                parts.append(f"λmax {row.lambda_max:.4g}{mark}")
            return " ".join(parts)

        return (f"BlockHessian(by={self.by}, samples={self.samples}, products={self.products}, "
                f"rows=[{'; '.join(shown(r) for r in self.rows)}])")


def block_hessian(operator, blocks: Sequence[Block], by: str, parts=None, iters: int = 0,
                  tol: float = 1e-3, seed: int = 0, whole=None) -> BlockHessian:
    """The rows of ``blocks``: traces from the Hutchinson ``parts`` (None: not measured),
    and with ``iters`` > 0 each block's largest eigenvalue (at most ``iters`` products)."""
    traces = block_traces(blocks, parts) if parts else [(None, None)] * len(blocks)
    tops = block_largest(operator, blocks, iters, tol, seed) if iters > 0 else [None] * len(blocks)
    rows = [BlockRow(b.name, b.stage, b.size, *trace, *_top(top))
            for b, trace, top in zip(blocks, traces, tops)]
    return BlockHessian(by, rows, len(parts) if parts else None, operator.products, whole)


def _top(top) -> tuple:
    if top is None:
        return (None, None, None, None)
    value = top.values[0] if top.values else math.nan
    return (value, bool(top.converged[0]) if top.converged else False, top.iterations,
            top.residuals[0] if top.residuals else None)


def by_name(by: str | Sequence[str]) -> str:
    """The partition as written: ``layer``, ``stage`` or the names joined by commas."""
    return by if isinstance(by, str) else ",".join(by)
