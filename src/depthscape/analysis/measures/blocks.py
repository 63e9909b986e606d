"""Per-block Hessians (``--blocks layer|stage|NAME,...``): where in depth the curvature is.

Each block's trace from the trace's own Hutchinson probes (no product beyond the trace's)
and its largest eigenvalue by Lanczos on its diagonal block ``H_bb`` (at most
``power_iters`` products per block, judged at ``power_tol``), :mod:`depthscape.analysis.
blocks`. The table shows the sharpest block; every block's row goes to
``<run>.blocks.json`` and ``<run>.blocks.csv`` beside the run's result.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from depthscape.analysis.blocks import (
    BlockHessian,
    BlockRow,
    block_hessian,
    by_name,
    parse_blocks,
    partition,
)
from depthscape.analysis.measures.base import Draw, Estimate, Measure, mark_unconverged
from depthscape.core.atomic import atomic_write_text
from depthscape.core.errors import UserError

_QUANTITIES = ("block_trace", "block_largest")


def blocks_argument(text: str) -> str:
    """An argparse type: ``layer``, ``stage`` or comma-separated names, as written back."""
    try:
        return by_name(parse_blocks(text))
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("--blocks ")) from None


class Blocks(Measure):
    name = "blocks"
    order = 40
    quantities = _QUANTITIES
    settings = {"blocks": (str, "")}  # layer, stage or names; "": off
    added = {"blocks": ""}
    shown_with = "block_largest"

    def enabled(self, config) -> bool:
        return bool(config.blocks)

    def check_model(self, config, model) -> None:
        partition(model, config.blocks)  # an unknown name, one block, ...: one line

    def add_arguments(self, parser) -> None:
        parser.add_argument("--blocks", type=blocks_argument, default=None, metavar="BY",
                            help="also per-block Hessians: layer (each parameterised layer), "
                                 "stage (stem, layer1..layer3, head) or comma-separated layer "
                                 "or stage names: each block's trace (the trace's own probes) "
                                 "and largest eigenvalue (Lanczos on its diagonal block, at "
                                 "most --power-iters steps each), in <run>.blocks.json/.csv; "
                                 "with --density also each block's density")

    def config_values(self, args) -> dict:
        return {"blocks": getattr(args, "blocks", None) or ""}

    def estimate(self, draw: Draw) -> dict[str, Estimate]:
        config, operator = draw.config, draw.operator
        blocks = partition(operator.model, config.blocks)
        _, parts = draw.trace()  # the trace's probes: the block traces cost no product
        found = block_hessian(operator, blocks, config.blocks, parts, config.power_iters,
                              config.power_tol, draw.seed)
        rows = found.rows
        return {"block_trace": Estimate(
                    [r.trace for r in rows],
                    [r.trace_se <= config.trace_tol * abs(r.trace) for r in rows],
                    details={"by": config.blocks, "names": [r.block for r in rows],
                             "stages": [r.stage for r in rows],
                             "sizes": [r.num_params for r in rows],
                             "stderr": [r.trace_se for r in rows], "samples": found.samples,
                             "products": found.products}),
                "block_largest": Estimate(
                    [r.lambda_max for r in rows], [r.lambda_max_converged for r in rows],
                    details={"steps": [r.lambda_max_steps for r in rows],
                             "residuals": [r.lambda_max_residual for r in rows]})}

    def to_flat(self, estimates) -> dict:
        if "block_trace" not in estimates:
            return {"blocks": None}
        trace, top = estimates["block_trace"], estimates["block_largest"]
        return {"blocks": {**trace.details, "trace": trace.value,
                           "trace_converged": trace.converged, "trace_ci": trace.ci,
                           "lambda_max": top.value, "lambda_max_converged": top.converged,
                           "lambda_max_ci": top.ci, **top.details}}

    def from_flat(self, data) -> dict[str, Estimate]:
        stored = data.get("blocks")
        if stored is None:
            return {}
        trace_details = {k: stored.get(k) for k in ("by", "names", "stages", "sizes", "stderr",
                                                    "samples", "products")}
        return {"block_trace": Estimate(stored["trace"], stored["trace_converged"],
                                        stored.get("trace_ci"), trace_details),
                "block_largest": Estimate(stored["lambda_max"], stored["lambda_max_converged"],
                                          stored.get("lambda_max_ci"),
                                          {"steps": stored.get("steps"),
                                           "residuals": stored.get("residuals")})}

    def headers(self, layout) -> list[str]:
        return ["Sharpest block (λmax)"]

    def cells(self, group, layout) -> list[str]:
        name, value = _sharpest(group)
        if name is None:
            return ["-"]
        return [mark_unconverged(f"{name}: {value:.4g}", all(group.flags("block_largest")))]

    def csv_fields(self, group, layout) -> dict:
        name, value = _sharpest(group)
        return {"blocks": group.one["block_trace"].details.get("by")
                if "block_trace" in group.one else None,
                "sharpest_block": name, "sharpest_block_lambda_max": value,
                "all_block_lambda_max_converged": all(group.flags("block_largest"))}

    def details(self, result, quantity: str) -> str | None:
        if quantity != "block_largest":  # a block trace is shown with its error, not marked
            return None
        estimate = result["block_largest"]
        names = result["block_trace"].details["names"]
        steps = estimate.details.get("steps") or []
        open_ = [i for i, ok in enumerate(estimate.converged or []) if not ok]
        if not open_:
            return None
        return "; ".join(f"{names[i]} ({steps[i] if i < len(steps) else '?'} Lanczos steps)"
                         for i in open_)

    def shown(self, quantity: str) -> str:
        return "block λmax" if quantity == "block_largest" else "block trace"

    def notes(self, layout) -> list[str]:
        return ["Sharpest block: the block whose diagonal Hessian block H_bb has the largest "
                "λmax (Lanczos on H_bb); every block's trace (± its standard error over the "
                "trace's own Hutchinson probes) and λmax are in <run>.blocks.csv and .json."]

    def write_files(self, result, stem) -> list:
        if "block_largest" not in result:
            return []
        found = result_blocks(result)
        stem = Path(stem)
        json_path, csv_path = (stem.with_name(f"{stem.name}.blocks.{s}") for s in ("json", "csv"))
        atomic_write_text(json_path, found.to_json())
        atomic_write_text(csv_path, found.to_csv())
        return [json_path, csv_path]


def result_blocks(result) -> BlockHessian:
    """The per-block rows of a sharpness result (means over its draws where it has several)."""
    trace, top = result["block_trace"], result["block_largest"]
    d, steps = trace.details, top.details.get("steps") or []
    residuals = top.details.get("residuals") or []
    rows = [BlockRow(name, stage, size, trace.value[i], d["stderr"][i], top.value[i],
                     bool(top.converged[i]), steps[i] if i < len(steps) else None,
                     residuals[i] if i < len(residuals) else None)
            for i, (name, stage, size) in enumerate(zip(d["names"], d["stages"], d["sizes"]))]
    return BlockHessian(d["by"], rows, d.get("samples"), d.get("products"))


def _sharpest(group) -> tuple[str | None, float]:
    """The block of the largest mean λmax over the group's seeds, and that mean."""
    if "block_trace" not in group.one:
        return None, math.nan
    names = group.one["block_trace"].details["names"]
    means = group.means("block_largest")
    finite = [(v, i) for i, v in enumerate(means) if math.isfinite(v)]
    if not finite:
        return None, math.nan
    value, i = max(finite)
    return names[i], value


MEASURE = Blocks()
