"""run_trainings: which runs go where, and concurrent runs equal to sequential ones."""

from __future__ import annotations

import pytest
import torch
from conftest import write_image_folder

from depthscape.core.checkpoint import load_checkpoint
from depthscape.core.data import load_dataset
from depthscape.core.errors import UserError
from depthscape.study.launcher import RUNS_PER_GPU_ENV, _gpu_env, plan_slots, run_trainings
from depthscape.training.loop import TrainConfig


@pytest.fixture
def one_thread(one_thread, monkeypatch):
    """conftest's one thread, here and in the spawned workers."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def configs(n: int, **kw) -> list[TrainConfig]:
    return [TrainConfig(model="resnet8", seed=s, **kw) for s in range(n)]


def test_plan_on_cpu_is_sequential_and_several_gpus_get_one_worker_each(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert plan_slots(configs(7)) == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert plan_slots(configs(7)) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert plan_slots(configs(2)) == ["cuda:0", "cuda:1"]  # no idle workers
    assert plan_slots(configs(7), runs_per_device=2)[:4] == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]
    monkeypatch.setenv(RUNS_PER_GPU_ENV, "3")
    assert plan_slots(configs(7), devices=["cuda:0"]) == ["cuda:0"] * 3  # packed on one GPU
    assert plan_slots(configs(7, device="cpu")) == []  # a config that names its device: in order
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert plan_slots(configs(7)) == []  # under torchrun every run is data-parallel instead
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv(RUNS_PER_GPU_ENV, "two")
    with pytest.raises(UserError, match=RUNS_PER_GPU_ENV):
        plan_slots(configs(7))


def test_workers_see_only_their_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert _gpu_env("cuda:3") == ("cuda", "3")
    assert _gpu_env("cpu") == ("cpu", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert _gpu_env("cuda:1") == ("cuda", "6")
    with pytest.raises(UserError, match="shows 2 GPU"):
        _gpu_env("cuda:2")


def test_concurrent_runs_equal_sequential_runs(tmp_path, cache_dir, one_thread):
    data = write_image_folder(tmp_path / "data", size=16, train_per_class=8, test_per_class=4)
    dataset = load_dataset(str(data), cache_dir=cache_dir)
    settings = dict(model="resnet8", scale=4 / 64_000, log_every=2, eval_every=2, progress=False)
    sequential = run_trainings([TrainConfig(**settings, seed=s, out_dir=str(tmp_path / "seq"))
                                for s in (0, 1)], dataset=dataset)
    concurrent = run_trainings([TrainConfig(**settings, seed=s, out_dir=str(tmp_path / "con"))
                                for s in (0, 1)], dataset=dataset, devices=["cpu", "cpu"])
    assert [r.paths.run_name for r in concurrent] == ["resnet8_data", "resnet8_data_seed1"]
    for a, b in zip(sequential, concurrent):
        assert b.finished and b.iteration == 4
        assert [r["train_loss"] for r in a.rows] == [r["train_loss"] for r in b.rows]
        state_a = load_checkpoint(a.paths.final)["state_dict"]
        state_b = load_checkpoint(b.paths.final)["state_dict"]
        assert all(torch.allclose(state_a[k].float(), state_b[k].float(), atol=1e-6) for k in state_a)


def test_a_failing_concurrent_run_raises_its_error_after_the_others(tmp_path, cache_dir,
                                                                   one_thread):
    data = write_image_folder(tmp_path / "data", size=16, train_per_class=8, test_per_class=4)
    settings = dict(model="resnet8", dataset=str(data), scale=2 / 64_000, progress=False,
                    out_dir=str(tmp_path / "out"))
    run_trainings([TrainConfig(**settings, seed=1)])  # a finished run that is not resumed
    with pytest.raises(UserError, match="already exists"):
        run_trainings([TrainConfig(**settings, seed=0), TrainConfig(**settings, seed=1)],
                      devices=["cpu", "cpu"])
    assert (tmp_path / "out" / "models" / "resnet-8_data.pth").exists()  # the other one ran
