"""The registry of Hessian measures: a new measure is one module, old files still read,
draws combine by one rule."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from dataclasses import fields
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import depthscape.analysis.measures as measures
from depthscape.analysis.measures import Estimate, all_measures, measure_of
from depthscape.analysis.sharpness import (
    SharpnessConfig,
    SharpnessResult,
    combine_draws,
    model_sharpness,
    sharpness_table,
)
from depthscape.analysis.sharpness_estimate import FILE_FIELDS
from depthscape.analysis.sharpness_table import CSV_HEADER
from depthscape.cli import build_parser
from depthscape.core.errors import UserError


def _old_file_result(**changes) -> dict:
    """A sharpness file's ``result`` as the versions before the registry wrote it: every
    field of FILE_FIELDS, in that order, top-k and draws included."""
    values = dict(largest_eigenvalue=591.7, smallest_eigenvalue=-2.5, eigen_steps=20,
                  eigen_converged=False, trace=40.0, trace_stderr=9.5, trace_samples=6,
                  trace_converged=True, subset_size=128, num_parameters=1000,
                  largest_converged=True, smallest_converged=False, largest_change=1e-4,
                  smallest_change=0.3, largest_residual=0.01, smallest_residual=2.0,
                  top_eigenvalues=[591.7, 300.0], top_converged=[True, False], top_steps=20,
                  draws=2, confidence=0.95, largest_ci=3.0, smallest_ci=0.5, trace_ci=4.0,
                  top_ci=[3.0, 9.0], draw_values=[{"largest": 590.0, "smallest": -2.0,
                                                   "trace": 38.0, "top": [590.0, 299.0],
                                                   "seed": 0}],
                  top_residuals=[0.01, 7.0])
    values.update(changes)
    return {name: values[name] for name in FILE_FIELDS}


def test_an_old_file_reads_and_writes_back_the_same_bytes():
    for old in (_old_file_result(),
                # one draw, no top-k, no per-end flags: the first versions' files
                _old_file_result(top_eigenvalues=None, top_converged=None, top_steps=None,
                                 top_ci=None, top_residuals=None, draws=1, confidence=None,
                                 largest_ci=None, smallest_ci=None, trace_ci=None,
                                 draw_values=None, largest_converged=None,
                                 smallest_converged=None)):
        result = SharpnessResult.from_dict(old)
        assert json.dumps(result.to_dict()) == json.dumps(old)  # keys in the same order too
    old = _old_file_result()
    result = SharpnessResult.from_dict(old)
    assert set(result) == {"largest", "smallest", "trace", "top"}
    assert result["largest"].value == 591.7 and result["top"].converged == [True, False]
    assert result.largest_eigenvalue == 591.7 and result.trace_ci == 4.0  # the file's names
    assert result.end_converged("largest") and not result.end_converged("smallest")
    # an end whose own flag was not recorded reads its run's
    older = SharpnessResult.from_dict(_old_file_result(largest_converged=None,
                                                       eigen_converged=True))
    assert older.end_converged("largest")
    with pytest.raises(AttributeError):
        result.not_a_field  # noqa: B018


def test_draws_combine_by_one_rule():
    a = Estimate(1.0, True, details={"steps": 5, "residual": 0.1, "ok": True})
    b = Estimate(3.0, False, details={"steps": 9, "residual": None, "ok": True})
    combined = Estimate.combine([a, b], 0.95)
    assert combined.value == 2.0 and combined.converged is False
    assert combined.ci == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-3)
    assert combined.details == {"steps": 9, "residual": 0.1, "ok": True}
    # a flag one draw did not record is unknown for the whole
    assert Estimate.combine([a, Estimate(2.0, None)], 0.95).converged is None
    # per value for a list quantity: the draws that have each value
    top = Estimate.combine([Estimate([5.0, 2.0], [True, True]), Estimate([7.0], [False])],
                           0.95)
    assert top.value == [6.0, 2.0] and top.converged == [False, True]
    assert math.isnan(top.ci[1])  # one draw has the second value: no spread known


_DUMMY = '''
from depthscape.analysis.measures.base import Estimate, Measure


class Products(Measure):
    """A test measure: the Hessian's parameter count, never converged."""

    name = "products"
    order = 25
    quantities = ("products",)

    def add_arguments(self, parser):
        parser.add_argument("--products-shown", action="store_true")

    def estimate(self, draw):
        value = draw.operator.num_parameters
        return {"products": Estimate(value, False, details={"steps": 1})}

    def to_flat(self, estimates):
        e = estimates.get("products")
        return {"products": None if e is None else e.value}

    def from_flat(self, data):
        value = data.get("products")
        return {} if value is None else {"products": Estimate(value, False,
                                                              details={"steps": 1})}

    def headers(self, layout):
        return ["Products"]

    def cells(self, group, layout):
        return [group.cell("products")]

    def csv_fields(self, group, layout):
        return {"products_mean": group.mean_std("products")[0]}

    def details(self, result, quantity):
        return "1 product"


MEASURE = Products()
'''


@pytest.fixture
def with_a_new_measure(tmp_path, monkeypatch):
    """A measure added as one more module of the registry's package (and no other edit)."""
    (tmp_path / "products.py").write_text(textwrap.dedent(_DUMMY))
    monkeypatch.setattr(measures, "__path__", [*measures.__path__, str(tmp_path)])
    all_measures.cache_clear()
    yield measure_of("products")
    all_measures.cache_clear()
    sys.modules.pop("depthscape.analysis.measures.products", None)


def test_a_new_measure_is_one_module(with_a_new_measure):
    assert [m.name for m in all_measures()] == ["extremes", "trace", "products", "top_k",
                                            "blocks"]
    # its option in the command (the parser asks the registry)
    parser = build_parser("sharpness")
    assert parser.parse_args(["sharpness", "--products-shown"]).products_shown
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    inputs, labels = torch.randn(6, 1, 2, 2), torch.randint(0, 3, (6,))
    config = SharpnessConfig(power_iters=4, trace_samples=2, min_trace_samples=2)
    result = model_sharpness(model, inputs, labels, config)
    assert result["products"].value == 15  # 4 x 3 weights + 3 biases
    # through the file, the combination of draws and the table
    again = SharpnessResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again["products"].value == 15 and again.to_dict()["products"] == 15
    both = combine_draws([result, again], [0, 1])
    assert both["products"].value == 15 and both.draw_values[0]["products"] == 15
    table = sharpness_table([(SimpleNamespace(model="resnet8", seed=0), result)])
    assert table.header[:6] == ["Model", "Largest eigenvalue", "Smallest eigenvalue",
                                 "Trace", "Trace / parameters", "Products"]
    assert table.rows[0][5].endswith("†")  # never converged: marked ...
    assert "products (1 product)" in " ".join(table.notes)  # ... and explained
    assert table.csv_header[:len(CSV_HEADER)] == CSV_HEADER  # the old columns first
    assert table.csv_header[-1] == "products_mean" and table.csv_rows[0][-1] == 15


def test_the_config_is_the_common_settings_and_every_measures_own():
    own = {name for m in all_measures() for name in m.settings}
    assert own >= {"power_iters", "power_tol", "trace_samples", "trace_tol", "top_k"}
    assert {f.name for f in fields(SharpnessConfig)} == own | {
        "split", "subset", "batch_size", "seed", "device", "precision", "draws"}
    for measure in all_measures():
        for name, (_, default) in measure.settings.items():
            assert getattr(SharpnessConfig(), name) == default


@pytest.mark.parametrize("config, absent, present", [
    (SharpnessConfig(), {"top_k", "draws", "device"}, {"power_iters", "trace_tol"}),
    (SharpnessConfig(top_k=3, draws=2), {"device"}, {"top_k", "draws"})])
def test_settings_added_later_keep_the_stored_results_valid(config, absent, present,
                                                            monkeypatch, tmp_path):
    """A stored result's cache key has no setting added after it, where that setting has
    the value the result was measured at (so the old results are reused)."""
    from depthscape.analysis import sharpness

    seen = {}

    def key_then_stop(checkpoint, settings):
        seen.update(settings)
        raise UserError("stop")

    monkeypatch.setattr(sharpness, "_cache_key", key_then_stop)
    checkpoint = tmp_path / "run.pth"
    checkpoint.write_bytes(b"")
    with pytest.raises(UserError, match="stop"):
        sharpness.measure_sharpness(checkpoint, config)
    assert not absent & set(seen) and present <= set(seen)
