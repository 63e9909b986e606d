"""The report's observations say what the numbers do, not a fixed verb."""

from __future__ import annotations

import math

import pytest

from depthscape.analysis.sharpness import SharpnessResult
from depthscape.analysis.stats import student_t_quantile
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
        return SharpnessResult.from_fields(largest, smallest, 5, True, 1.0, 0.1, 5, True, 8, 100)

    sharp = [(RunInfo("resnet20", 0, "cifar10", run_paths(".", "resnet20")), result(5.0, -0.5)),
             (RunInfo("plain20", 0, "cifar10", run_paths(".", "plain20")), result(9.0, -7.0))]
    lines = observations([metrics("resnet20", 50.0), metrics("plain20", 40.0)], sharp)
    assert "Largest Hessian eigenvalue (higher = sharper) at each depth: depth 20: ResNet 5 vs " \
           "PlainNet 9." in lines
    smallest = next(line for line in lines if line.startswith("Smallest Hessian eigenvalue"))
    assert "ResNet -0.5 vs PlainNet -7" in smallest


def _run(model: str, seed: int = 0) -> RunInfo:
    return RunInfo(model, seed, "cifar10", run_paths(".", model, seed))


def _unconverged(largest: float, smallest: float, steps: int = 8) -> SharpnessResult:
    """Lanczos stopped at its step limit: the largest end settled, the smallest did not."""
    return SharpnessResult.from_fields(largest, smallest, steps, False, 1.0, 0.1, 5, True, 128, 100,
                           largest_converged=True, smallest_converged=False,
                           largest_change=0.01, smallest_change=3.25, largest_residual=0.5,
                           smallest_residual=12.5)


def test_unconverged_eigenvalues_are_no_observation():
    """The quick study said "smallest Hessian eigenvalue 0.000992" for ResNet-20 from 8
    Lanczos steps that had not converged (23 converged steps give -11.76)."""
    sharp = [(_run("resnet20"), _unconverged(591.7, 0.000992)),
             (_run("plain20"), _unconverged(330.0, -0.25))]
    lines = observations([metrics("resnet20", 50.0), metrics("plain20", 40.0)], sharp)
    assert not any("0.000992" in line or "-0.25" in line for line in lines)
    smallest = next(line for line in lines if line.startswith("Smallest Hessian eigenvalue"))
    assert "not resolved at any depth" in smallest and "8 Lanczos steps" in smallest
    assert "ResNet-20, PlainNet-20" in smallest and "†" in smallest
    largest = next(line for line in lines if line.startswith("Largest Hessian eigenvalue"))
    assert "ResNet 592 vs PlainNet 330" in largest  # its own end converged: stated
    assert "†" not in largest and "not resolved" not in largest


def test_one_unconverged_side_leaves_that_depth_unresolved():
    converged = SharpnessResult.from_fields(5.0, -0.5, 5, True, 1.0, 0.1, 5, True, 8, 100)
    sharp = [(_run("resnet20"), converged), (_run("plain20"), converged),
             (_run("resnet56"), converged), (_run("plain56"), _unconverged(9.0, 0.003, 6))]
    runs = [metrics(m, 50.0) for m in ("resnet20", "plain20", "resnet56", "plain56")]
    smallest = next(line for line in observations(runs, sharp)
                    if line.startswith("Smallest Hessian eigenvalue"))
    assert "depth 20: ResNet -0.5 vs PlainNet -0.5" in smallest
    assert "depth 56: not resolved (PlainNet-56 did not converge in 6 Lanczos steps)" \
        in smallest
    assert "0.003" not in smallest and "marked † in the sharpness table" in smallest


def test_results_stored_without_per_end_flags_count_as_the_run_ended():
    """Results cached before each end had its own flag: an unconverged run marks both."""
    old = SharpnessResult.from_fields(591.7, 0.000992, 8, False, 1.0, 0.1, 5, True, 128, 100)
    assert not old.end_converged("largest") and not old.end_converged("smallest")
    sharp = [(_run("resnet20"), old), (_run("plain20"), old)]
    lines = observations([metrics("resnet20", 50.0), metrics("plain20", 40.0)], sharp)
    assert not any("592" in line or "0.000992" in line for line in lines)


def test_report_marks_unconverged_numbers_in_both_formats(tmp_path):
    from depthscape.study.report import build_blocks, render_html, render_markdown
    from depthscape.study.runner import StudyResult, get_budget

    sharp = [(_run("resnet20"), _unconverged(591.7, 0.000992)),
             (_run("plain20"), SharpnessResult.from_fields(330.0, -7.0, 12, True, 50.0, 1.0, 6, True, 128,
                                               100))]
    result = StudyResult(tmp_path, tmp_path / "report.md", tmp_path / "report.html",
                         [metrics("resnet20", 50.0), metrics("plain20", 40.0)], sharpness=sharp)
    blocks = build_blocks(result, get_budget("quick"), {"seeds": 1, "dataset": "cifar10"})
    markdown = render_markdown(blocks, tmp_path)
    # one draw: the trace's ± is over its probes (t_{0.975, n-1} x its standard error)
    t4, t5 = student_t_quantile(0.975, 4), student_t_quantile(0.975, 5)
    assert (f"| ResNet-20 | 591.7 | 0.000992† | 1 ± {0.1 * t4:.2g} | 0.01 ± {0.001 * t4:.2g} |"
            in markdown)
    assert f"| PlainNet-20 | 330 | -7 | 50 ± {t5:.2g} | 0.5 ± {t5 / 100:.2g} |" in markdown
    note = next(line for line in markdown.splitlines() if line.startswith("† "))
    assert "ResNet-20 smallest eigenvalue (8 Lanczos steps, last change 3.25, residual 12.5)" \
        in note
    assert "PlainNet-20" not in note and "largest eigenvalue" not in note
    page = render_html(blocks)
    assert "<td>0.000992†</td>" in page and "<td>-7</td>" in page
    assert '<p class="note">† Did not converge' in page and "last change 3.25" in page
    observed = markdown[markdown.index("## Observations"):markdown.index("## Table 1")]
    assert "0.000992" not in observed and "-7" not in observed


def _flat(rise, doubling, radius=0.25):
    from depthscape.analysis.landscape.flatness import summarize

    coordinates = [-1.0, -radius, 0.0, radius, 1.0]
    losses = []
    for r, d in zip(rise, doubling):
        far = 3.0 if d is not None else 1.5  # reaches twice the base (1) within the span or not
        losses.append([far, 1.0 + r, 1.0, 1.0 + r, far])
    return summarize(coordinates, losses, radius, {"span": 1.0})


def test_compare_intervals_says_significant_only_without_overlap():
    from depthscape.study.report import compare_intervals

    assert compare_intervals((1.0, 0.2), (2.0, 0.3)).startswith("significant")
    assert compare_intervals((1.0, 0.6), (2.0, 0.5)).startswith("within noise")
    assert compare_intervals((1.0, math.nan), (2.0, 0.1)) == ""


def test_flatness_observations_call_a_difference_significant_only_when_intervals_part():
    flat = [(_run("resnet20"), _flat([0.10, 0.11, 0.12, 0.10, 0.11], [None] * 5)),
            (_run("plain20"), _flat([0.50, 0.52, 0.55, 0.51, 0.50], [0.6] * 5)),
            (_run("resnet56"), _flat([0.10, 0.30, 0.20, 0.15, 0.25], [0.6] * 5)),
            (_run("plain56"), _flat([0.12, 0.35, 0.18, 0.22, 0.28], [0.6] * 5))]
    runs = [metrics(m, 50.0) for m in ("resnet20", "plain20", "resnet56", "plain56")]
    lines = observations(runs, [], flat)
    rise = next(line for line in lines if line.startswith("Loss rise at radius 0.25"))
    depth20, depth56 = rise.split("; ")
    assert "ResNet 0.108 ± 0.01 vs PlainNet 0.516 ± 0.026" in depth20
    assert "(significant: the 95% intervals do not overlap)" in depth20
    assert "(within noise: the 95% intervals overlap)" in depth56
    doubling = next(line for line in lines if line.startswith("Radius where the loss doubles"))
    assert "ResNet > 1 in all 5 directions" in doubling and "not comparable" in doubling


def test_sharpness_draws_give_the_observation_its_verdict():
    def drawn(largest, half):
        return SharpnessResult.from_fields(largest, -0.5, 5, True, 1.0, 0.1, 5, True, 8, 100, draws=3,
                               confidence=0.95, largest_ci=half, smallest_ci=0.1, trace_ci=0.1)

    sharp = [(_run("resnet20"), drawn(5.0, 1.0)), (_run("plain20"), drawn(9.0, 1.0)),
             (_run("resnet56"), drawn(5.0, 3.0)), (_run("plain56"), drawn(9.0, 3.0))]
    runs = [metrics(m, 50.0) for m in ("resnet20", "plain20", "resnet56", "plain56")]
    largest = next(line for line in observations(runs, sharp)
                   if line.startswith("Largest Hessian eigenvalue"))
    assert "depth 20: ResNet 5 ± 1 vs PlainNet 9 ± 1 (significant" in largest
    assert "depth 56: ResNet 5 ± 3 vs PlainNet 9 ± 3 (within noise" in largest


def test_report_shows_the_density_and_flatness(tmp_path):
    import matplotlib

    from depthscape.study.report import build_blocks, render_html, render_markdown
    from depthscape.study.runner import StudyResult, get_budget

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = tmp_path / "density.png"
    plt.figure(figsize=(1, 1))
    plt.savefig(png)
    plt.close("all")
    flat = [(_run("resnet20"), _flat([0.1, 0.12, 0.11], [0.6] * 3)),
            (_run("plain20"), _flat([0.5, 0.52, 0.55], [0.4] * 3))]
    result = StudyResult(tmp_path, tmp_path / "report.md", tmp_path / "report.html",
                         [metrics("resnet20", 50.0), metrics("plain20", 40.0)],
                         density_pairs=[(20, png)], flatness=flat, flatness_figure=png)
    blocks = build_blocks(result, get_budget("quick"), {"seeds": 1, "dataset": "cifar10"})
    markdown = render_markdown(blocks, tmp_path)
    quick = get_budget("quick")
    assert "## Hessian eigenvalue density" in markdown
    assert f"{quick.density.runs} Lanczos run(s) of {quick.density.steps} steps" in markdown
    assert "*ResNet-20 vs PlainNet-20*" in markdown
    assert "## Flatness with error bars" in markdown and "| ResNet-20 |" in markdown
    assert "Loss rise at radius 0.25" in markdown and "within noise" not in markdown
    assert (f"| eigenvalue density | {quick.density.runs} Lanczos runs x "
            f"{quick.density.steps} steps") in markdown
    assert (f"| flatness | {quick.flatness.directions} random 1-D slices x "
            f"{quick.flatness.points} points on {quick.flatness.subset} test images |") in markdown
    assert render_html(blocks).count("data:image/png;base64,") == 2
