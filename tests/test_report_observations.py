"""The report's observations say what the numbers do, not a fixed verb."""

from __future__ import annotations

import pytest

from depthscape.analysis.sharpness import SharpnessResult
from depthscape.analysis.tables import RunMetrics
from depthscape.core.runs import RunInfo, run_paths
from depthscape.study.report import describe_change, describe_trend, observations


@pytest.mark.parametrize("values,expected", [
    ([1.0, 2.0, 3.0], "rises"),
    ([3.0, 2.0, 1.0], "falls"),
    ([7.81, 14.06, 7.81], "rises then falls"),
    ([5.0, 1.0, 4.0], "falls then rises"),
    ([1.0, 2.0, 1.0, 2.0], "goes up and down"),
    ([4.0, 4.0, 4.0], "is unchanged"),
    ([4.0, 4.001, 5.0], "rises"),  # a step too small to print is no step
    ([1.0, 1.0, 2.0, 2.0], "rises"),
])
def test_describe_trend(values, expected):
    assert describe_trend(values) == expected


def test_describe_change():
    assert describe_change(7.81, 7.81) == "unchanged end to end"
    assert describe_change(10.0, 13.2) == "up 3.20 points end to end"
    assert describe_change(10.0, 9.5) == "down 0.50 points end to end"


def metrics(model: str, test_acc: float) -> RunMetrics:
    return RunMetrics(model, 0, "cifar10", model, 0.1, 90.0, 0.5, test_acc, 100, 100, 10.0, 10)


def test_observations_describe_what_the_accuracies_do():
    runs = [metrics("resnet20", 7.81), metrics("resnet56", 14.06), metrics("resnet110", 7.81),
            metrics("plain20", 30.0), metrics("plain56", 20.0), metrics("plain110", 10.0),
            metrics("cnn", 60.0)]
    lines = observations(runs, [])
    resnet = next(line for line in lines if line.startswith("ResNet test accuracy"))
    plain = next(line for line in lines if line.startswith("PlainNet test accuracy"))
    assert "rises then falls" in resnet and "unchanged end to end" in resnet
    assert "rises by" not in resnet and "falls by" not in resnet
    assert "falls from depth 20 to 110" in plain and "down 20.00 points" in plain
    assert any(line.startswith("The CNN reaches 90.00%") for line in lines)


def test_observations_name_both_ends_of_the_hessian_spectrum():
    def result(largest, smallest):
        return SharpnessResult(largest, smallest, 5, True, 1.0, 0.1, 5, True, 8, 100)

    sharp = [(RunInfo("resnet20", 0, "cifar10", run_paths(".", "resnet20")), result(5.0, -0.5)),
             (RunInfo("plain20", 0, "cifar10", run_paths(".", "plain20")), result(9.0, -7.0))]
    lines = observations([metrics("resnet20", 50.0), metrics("plain20", 40.0)], sharp)
    assert "Largest Hessian eigenvalue (higher = sharper) at each depth: depth 20: ResNet 5 vs " \
           "PlainNet 9." in lines
    smallest = next(line for line in lines if line.startswith("Smallest Hessian eigenvalue"))
    assert "ResNet -0.5 vs PlainNet -7" in smallest
