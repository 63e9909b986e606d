"""The report's curvature per stage (analysis/block_profiles.py, study/stages/depth.py):
the intervals of block traces (over seeds, else over probes) and of block λmax (over
seeds, else none), and a difference stated only where the intervals separate the two
networks."""

from __future__ import annotations

import math

import pytest

from depthscape.analysis.block_profiles import BlockProfileRow, block_profile
from depthscape.analysis.gradient_flow import Interval
from depthscape.analysis.hessian import UNCONVERGED_MARK
from depthscape.analysis.measures import Estimate
from depthscape.study.stages.depth import PairBlocks, block_observations, block_table

STAGES = ["stem", "layer1", "layer2", "layer3", "head"]


def _result(traces, stderr, samples, tops):
    """A sharpness result's per-block estimates (the Blocks measure's layout)."""
    return {"block_trace": Estimate(list(traces), [True] * len(traces),
                                    details={"by": "stage", "names": STAGES, "stages": STAGES,
                                             "sizes": [1] * len(STAGES),
                                             "stderr": list(stderr), "samples": samples}),
            "block_largest": Estimate(list(tops), [True] * len(tops))}


def _rows(model, traces, trace_half, tops, top_half):
    return [BlockProfileRow(model, stage, Interval(t, trace_half, 3, "seeds"),
                            Interval(m, top_half, 3, "seeds"))
            for stage, t, m in zip(STAGES, traces, tops)]


def test_one_seed_traces_have_the_probe_interval_and_lambda_max_none():
    (row, *_) = block_profile("resnet8", [_result([2.0] * 5, [0.5] * 5, 4, [1.0] * 5)])
    assert row.trace.over == "probes" and row.trace.n == 4
    assert row.trace.half == pytest.approx(3.182446 * 0.5, rel=1e-5)  # t(0.975, 3) x stderr
    assert math.isnan(row.lambda_max.half) and row.lambda_max.over == "one seed"


def test_several_seeds_give_intervals_over_the_seeds():
    seeds = [_result([1.0 + s] * 5, [0.01] * 5, 9, [10.0 + s] * 5) for s in range(3)]
    rows = block_profile("plain8", seeds)
    assert [r.block for r in rows] == STAGES
    assert all(r.trace.over == r.lambda_max.over == "seeds" and r.trace.n == 3 for r in rows)
    assert rows[0].trace.mean == pytest.approx(2.0) and rows[0].lambda_max.mean == 11.0
    assert rows[0].trace.half == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-5)


def test_separated_intervals_are_stated_with_the_stage_and_factor():
    res = _rows("resnet20", [1, 1, 1, 1, 1], 0.1, [2, 2, 2, 2, 2], 0.1)
    plain = _rows("plain20", [5, 1.05, 1, 1, 0.2], 0.1, [2, 2, 2, 8, 2], 0.1)
    pair = PairBlocks(20, ("ResNet-20", "PlainNet-20"), None, (res, plain))
    lines = block_observations([pair])
    stated = [line for line in lines if "significant" in line]
    assert len(stated) == 3
    assert any("block trace in stem is larger" in line and "5x" in line for line in stated)
    assert any("block trace in head is smaller" in line and "0.2x" in line for line in stated)
    assert any("block λmax in layer3 is larger" in line and "4x" in line for line in stated)
    # the overlapping ones are said to be within noise, not stated as a difference
    assert any("do not differ beyond noise in layer1, layer2, layer3" in line for line in lines)
    table = block_table([pair])
    assert [row[1] for row in table.rows] == STAGES
    assert table.rows[0][5].startswith("significant") and table.rows[1][5].startswith("within")
    assert table.csv_rows[0][4:8] == [1, 0.1, 5, 0.1]


def test_overlapping_or_missing_intervals_state_no_difference():
    res = _rows("resnet20", [1, 1, 1, 1, 1], 0.5, [2, 2, 2, 2, 2], math.nan)
    plain = _rows("plain20", [1.4, 0.7, 1, 1, 1.2], 0.5, [20, 20, 20, 20, 20], math.nan)
    lines = block_observations([PairBlocks(20, ("ResNet-20", "PlainNet-20"), None,
                                           (res, plain))])
    assert not any("significant" in line for line in lines)
    assert any("block traces do not differ beyond noise" in line for line in lines)
    # a tenfold λmax with one seed has no interval: not called a difference
    assert any("block λmax in stem, layer1, layer2, layer3, head are not compared" in line
               for line in lines)


def test_the_study_measures_blocks_of_paired_models_only_while_depth_is_on(tmp_path):
    from depthscape.study.runner import StudyConfig, get_budget
    from depthscape.study.stages import Study
    from depthscape.study.stages.sharpness import measurement, run_measurement

    models = ["resnet8", "plain8", "resnet14", "cnn"]

    def study(skip):
        config = StudyConfig(budget="smoke", out_dir=str(tmp_path), models=models, skip=skip)
        return Study(config, get_budget("smoke"), tmp_path, models, {}, None)

    on = study(())
    assert [run_measurement(on, m).blocks for m in models] == ["stage", "stage", "", ""]
    off = study(("depth",))  # --no-depth: the sharpness of before, under its old cache key
    assert all(run_measurement(off, m) == measurement(off) for m in models)
    assert measurement(on).blocks == ""  # the density reads these settings: no stage densities


def test_an_unconverged_lambda_max_is_marked_and_not_compared():
    res = _rows("resnet20", [1] * 5, 0.1, [2] * 5, 0.1)
    plain = [BlockProfileRow(r.model, r.block, r.trace, r.lambda_max, r.block != "layer3")
             for r in _rows("plain20", [1] * 5, 0.1, [2, 2, 2, 8, 2], 0.1)]
    pair = PairBlocks(20, ("ResNet-20", "PlainNet-20"), None, (res, plain))
    lines = block_observations([pair])
    # separated intervals, but layer3's Lanczos did not converge: no difference stated
    assert not any("significant" in line for line in lines)
    assert any("λmax in layer3 are not compared: Lanczos" in line for line in lines)
    table = block_table([pair])
    assert table.rows[3][9] == "not converged" and table.rows[3][7].endswith(UNCONVERGED_MARK)
    assert table.notes and table.csv_rows[3][-1] is False
    # the flags come from every seed's Lanczos
    one = _result([1.0] * 5, [0.1] * 5, 4, [1.0] * 5)
    one["block_largest"].converged = [True, True, True, False, True]
    assert [r.lambda_max_converged for r in block_profile("plain20", [one])] == [
        True, True, True, False, True]
