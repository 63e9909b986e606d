"""The training step alone: the loop is the step driven batch by batch; the step has no
branching; the single-process distribution object's collectives are identities."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import replace

import pytest
import torch

from depthscape.core.data import Dataset, Split
from depthscape.core.distributed import DistContext, GroupContext, setup
from depthscape.core.models import get_model, model_kwargs_for
from depthscape.core.recipes import preprocess_for, recipe_for
from depthscape.training.loop import BatchSchedule, TrainConfig, make_optimizer, train
from depthscape.training.state import TrainState
from depthscape.training.step import MetricSums, make_loss, make_train_step, set_learning_rate


def tiny_dataset(size: int = 16, train: int = 40, test: int = 12) -> Dataset:
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        labels = torch.randint(0, 3, (n,), generator=generator)
        noise = torch.randint(0, 60, (n, 3, size, size), generator=generator)
        return Split((noise + 60 * labels[:, None, None, None]).to(torch.uint8), labels)

    return Dataset("tiny", split(train), split(test), ["a", "b", "c"])


RECIPES = {
    # ResNet: iterations streamed over epochs, augmentation, momentum, a decay mid-run
    "resnet8": replace(recipe_for("resnet20"), batch_size=16, length=7, milestones=(4,), log_every=7),
    # CNN: epochs with a smaller last batch (40 = 16 + 16 + 8), dropout, Adam, cosine
    "cnn": replace(recipe_for("cnn"), batch_size=16, length=2, cosine_t_max=2),
}


def steps_by_hand(name: str, dataset: Dataset, seed: int) -> tuple[torch.nn.Module, MetricSums]:
    """The loop's updates written out: the same batches, learning rates and step, in order."""
    recipe = RECIPES[name]
    torch.manual_seed(seed)
    model = get_model(name, **model_kwargs_for(name, dataset)).train()
    optimizer = make_optimizer(recipe, model)
    preprocess = preprocess_for(recipe, dataset)
    schedule = BatchSchedule(len(dataset.train), recipe.batch_size, seed,
                             stream=recipe.unit == "iteration")
    augment = torch.Generator().manual_seed(seed + 1)
    sums = MetricSums.on("cpu")
    steps = {b: make_train_step(model, optimizer, make_loss(), sums) for b in schedule.batch_sizes()}
    total = recipe.length * (1 if recipe.unit == "iteration" else schedule.steps_per_epoch)
    for s in range(total):
        set_learning_rate(optimizer, recipe.lr_at(s, schedule.epoch_of(s)))
        index = schedule.indices(s)
        x = preprocess.train_batch(dataset.train.images[index], augment)
        steps[len(index)](x, dataset.train.labels[index])
    return model, sums


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_loop_is_the_step_driven_batch_by_batch(name, tmp_path, cache_dir):
    dataset = tiny_dataset()
    # the hand-driven steps below run in NCHW: the loop in the same layout (the CPU's default
    # is channels-last, the same arithmetic in another order of the last bits)
    result = train(TrainConfig(model=name, out_dir=str(tmp_path), recipe=RECIPES[name], seed=2,
                               progress=False, channels_last=False), dataset=dataset)
    model, sums = steps_by_hand(name, dataset, seed=2)
    trained = torch.load(result.paths.final, weights_only=True)["state_dict"]
    assert trained.keys() == model.state_dict().keys()
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[key]), key
    # the last log row's window is the step's on-device sums since the row before
    if name == "resnet8":  # one row, over every step
        assert result.rows[-1]["train_loss"] == float(sums.loss) / (7 * 16)
        assert result.rows[-1]["train_acc"] == 100.0 * int(sums.correct) / (7 * 16)


def test_the_step_has_no_python_branching_and_fits_a_screen():
    model = torch.nn.Linear(4, 3)
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loss(),
                           MetricSums.on("cpu"))
    source = textwrap.dedent(inspect.getsource(step))
    tree = ast.parse(source)
    branching = (ast.If, ast.IfExp, ast.For, ast.While, ast.Try, ast.Match, ast.BoolOp,
                 ast.ListComp, ast.GeneratorExp)
    assert [type(n).__name__ for n in ast.walk(tree) if isinstance(n, branching)] == []
    assert len(source.strip().splitlines()) <= 15


def test_one_step_adds_the_batch_to_the_device_sums_and_updates():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = model.weight.detach().clone()
    sums = MetricSums.on("cpu")
    step = make_train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loss(), sums)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    expected_loss = torch.nn.functional.cross_entropy(model(x), y).double() * 5
    expected_correct = (model(x).argmax(1) == y).sum()
    step(x, y)
    assert sums.loss.dtype == torch.float64 and sums.correct.dtype == torch.int64
    assert torch.equal(sums.loss, expected_loss.detach()) and torch.equal(sums.correct, expected_correct)
    assert not torch.equal(model.weight, before)


def test_distributed_loss_is_the_scaled_sum_of_the_shard():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    loss, total = make_loss(world_size=2, global_batch=8)(logits, labels)
    summed = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert torch.equal(loss, summed * (2 / 8)) and torch.equal(total, summed.double())
    mean, total = make_loss()(logits, labels)
    assert torch.equal(mean, torch.nn.functional.cross_entropy(logits, labels))
    assert torch.equal(total, mean.double() * 4)


def test_single_process_collectives_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    alone = setup("cpu")
    assert type(alone) is DistContext and not isinstance(alone, GroupContext)
    assert alone.is_main and not alone.enabled and (alone.rank, alone.world_size) == (0, 1)
    values = torch.tensor([1.5, 2.0], dtype=torch.float64)
    assert alone.all_sum(values) is values and values.tolist() == [1.5, 2.0]
    marker = object()
    assert alone.gather_objects(marker) == [marker]
    assert alone.barrier() is None
    assert alone.all_true(True) and not alone.all_true(False)
    model = torch.nn.BatchNorm1d(2)
    assert alone.wrap_model(model) is model
    assert alone.shard(7) == (0, 7)
    assert alone.signal_acts_alone(True) and not alone.signal_acts_alone(False)


def test_state_round_trips_through_its_state_dict():
    def fresh(seed: int) -> TrainState:
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 3)
        return TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                          torch.Generator().manual_seed(seed), DistContext(), MetricSums.on("cpu"))

    state = fresh(0)
    step = make_train_step(state.model, state.optimizer, make_loss(), state.sums)
    step(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1]))
    state.advance(5)
    saved = state.state_dict()
    assert saved["iteration"] == 1 and saved["window_seen"] == 5
    assert saved["window_loss_ranks"] == [saved["window_loss"]] == [float(state.sums.loss)]
    other = fresh(1)
    other.load_state_dict(saved)
    assert other.step == 1 and torch.equal(other.sums.loss, state.sums.loss)
    assert torch.equal(other.augment.get_state(), state.augment.get_state())
    for a, b in zip(other.model.parameters(), state.model.parameters()):
        assert torch.equal(a, b)
