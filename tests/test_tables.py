"""Tables 1 and 2: evaluation from final checkpoints, caching, mean ± std, Markdown and CSV."""

from __future__ import annotations

import csv
import io

import pytest
from _study_tools import write_fake_run

import depthscape.analysis.tables as tables
from depthscape.analysis.tables import RunMetrics, format_cell, mean_std, table1, table2
from depthscape.cli import main
from depthscape.core.data import Preprocess, load_dataset
from depthscape.core.errors import UserError
from depthscape.core.runs import find_runs
from depthscape.core.trained import load_trained_run
from depthscape.training.evaluation import evaluate


def metrics(model, seed=0, test_acc=80.0, train_acc=90.0, time_s=100.0):
    return RunMetrics(model=model, seed=seed, dataset="cifar10", run_name=f"{model}_{seed}",
                      train_loss=0.2, train_acc=train_acc, test_loss=0.5, test_acc=test_acc,
                      train_size=50000, test_size=10000, train_time_s=time_s, iterations=64000)


def test_mean_std_and_cells():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    assert mean_std([5.0]) == (5.0, 0.0, 1)
    assert mean_std([float("nan")])[2] == 0
    assert format_cell(91.8412, 0.0, 1) == "91.84"
    assert format_cell(91.8412, 0.2149, 3) == "91.84 ± 0.21"
    assert format_cell(float("nan"), 0.0, 0) == "-"


def test_table1_orders_models_and_aggregates_seeds():
    rows = [metrics("plain20", 0, 85.0), metrics("resnet20", 0, 90.0), metrics("resnet20", 1, 92.0),
            metrics("cnn", 0, 80.0)]
    table = table1(rows)
    assert [r[0] for r in table.rows] == ["CNN", "ResNet-20", "PlainNet-20"]
    assert table.header[-1] == "Seeds"
    resnet = table.rows[1]
    assert resnet[2] == "91.00 ± 1.41"  # test accuracy over two seeds
    assert resnet[4] == "9.00 ± 1.41"  # test error
    assert table.rows[0][2] == "80.00"  # one seed: no ±
    parsed = list(csv.DictReader(io.StringIO(table.csv())))
    assert parsed[1]["model"] == "resnet20" and parsed[1]["n_seeds"] == "2"
    assert float(parsed[1]["test_acc_mean"]) == pytest.approx(91.0)
    assert float(parsed[1]["test_acc_std"]) == pytest.approx(1.41421, rel=1e-4)
    markdown = table.markdown()
    assert markdown.splitlines()[0].startswith("| Model | Train Acc. (%) | Test Acc. (%)")


def test_table2_compares_depths_and_times():
    rows = [metrics("resnet20", test_acc=88.8, time_s=100.0),
            metrics("resnet56", test_acc=90.7, time_s=170.0),
            metrics("plain20", test_acc=86.3, time_s=90.0),
            metrics("plain56", test_acc=74.3, time_s=180.0), metrics("cnn")]
    table = table2(rows)
    assert [r[0] for r in table.rows] == ["20-layer", "56-layer"]
    head = table.header
    row56 = dict(zip(head, table.rows[1]))
    assert row56["ResNet Acc. (%)"] == "90.70" and row56["PlainNet Acc. (%)"] == "74.30"
    assert row56["ResNet time ratio"] == "1.70x" and row56["PlainNet time ratio"] == "2.00x"
    assert row56["ResNet gain (pp)"] == "+1.90" and row56["PlainNet gain (pp)"] == "-12.00"
    assert row56["ResNet time"] == "2.8 min"
    parsed = list(csv.DictReader(io.StringIO(table.csv())))
    assert float(parsed[1]["resnet_time_ratio"]) == pytest.approx(1.7)


@pytest.fixture
def tiny_runs(tmp_path, tiny_data, cache_dir):
    run_dir = tmp_path / "runs"
    write_fake_run(run_dir, "resnet8", train_subset=40, dataset="tinydata0")
    write_fake_run(run_dir, "cnn", dataset="tinydata0")
    dataset = load_dataset(str(tiny_data), cache_dir=cache_dir)
    return run_dir, dataset


def test_evaluate_run_uses_the_runs_split_without_augmentation(tiny_runs, tmp_path, monkeypatch):
    run_dir, dataset = tiny_runs
    run = next(r for r in find_runs(run_dir) if r.model == "resnet8")
    result = tables.evaluate_run(run, dataset, cache_dir=tmp_path / "cache")
    model = load_trained_run(run.paths.final).model
    pre = Preprocess(scale=255.0, mean=(125.0, 123.0, 114.0), augment=False)
    train_split = dataset.train.subset(40)
    assert result.train_size == 40 and result.test_size == len(dataset.test)
    assert (result.train_loss, result.train_acc) == pytest.approx(evaluate(model, train_split, pre))
    assert (result.test_loss, result.test_acc) == pytest.approx(evaluate(model, dataset.test, pre))
    assert result.train_time_s == 100.0 and result.iterations == 1200
    # cached: a second call does not evaluate again
    monkeypatch.setattr("depthscape.training.evaluation.evaluate",
                        lambda *a, **k: pytest.fail("evaluated again despite the cache"))
    assert tables.evaluate_run(run, dataset, cache_dir=tmp_path / "cache") == result
    # other limits are another evaluation
    with pytest.raises(pytest.fail.Exception):
        tables.evaluate_run(run, dataset, test_limit=5, cache_dir=tmp_path / "cache")


def test_tables_cli_writes_markdown_and_csv(tiny_runs, tiny_data, capsys):
    run_dir, _ = tiny_runs
    code = main(["tables", "--run-dir", str(run_dir), "--dataset", str(tiny_data),
                 "--no-progress"])
    assert code == 0
    out = run_dir / "tables"
    for name in ("table1.md", "table1.csv", "table2.md", "table2.csv", "runs.csv"):
        assert (out / name).stat().st_size > 0
    rows = list(csv.DictReader((out / "table1.csv").open()))
    assert [r["model"] for r in rows] == ["cnn", "resnet8"]
    assert (out / "table1.md").read_text().startswith("**Table 1")
    assert "ResNet-8" in capsys.readouterr().out


def test_tables_without_finished_runs_is_a_user_error(tmp_path, capsys):
    write_fake_run(tmp_path, "resnet8", checkpoint=False)
    with pytest.raises(UserError, match="no finished runs"):
        tables.make_tables(tmp_path)
    assert main(["tables", "--run-dir", str(tmp_path / "none")]) == 2
    assert "no finished runs" in capsys.readouterr().err
