"""The one grid sweep (analysis/landscape/sweep.py) on a toy grid: every point once, resume,
an interruption's save, the pool's threads. The real grids (surfaces, curvature maps,
trajectory contours, torchrun) are tested through them in test_landscape*.py,
test_curvature.py and test_trajectory.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _threads import torch_threads

from depthscape.analysis.landscape.sweep import WorkerPool, rank_share, sweep
from depthscape.core.distributed import DistContext


def _grid(shape=(3, 4)):
    return np.zeros(shape, dtype=bool), np.full(shape, np.nan)


@pytest.mark.parametrize("workers", [1, 3])
def test_every_missing_point_is_computed_once_and_saved(workers):
    done, values = _grid()
    done.flat[[1, 5]] = True
    values.flat[[1, 5]] = -1.0
    calls, saves = [], []

    def evaluate(replica, index):
        calls.append((replica, index))
        return index * 10.0

    def store(index, value):
        values.flat[index] = value

    pool = WorkerPool(list(range(workers)), one_thread=workers > 1)
    sweep(done, pool, evaluate, store, DistContext(), save=lambda: saves.append(done.sum()),
          save_every=3600.0, progress=False)
    assert done.all() and sorted(i for _, i in calls) == [i for i in range(12) if i not in (1, 5)]
    assert {r for r, _ in calls} == set(range(workers))  # every replica took points
    assert values.flat[1] == -1.0 and values.flat[0] == 0.0 and values.flat[11] == 110.0
    assert saves == [12]  # the timer never fired: one save at the end
    calls.clear()
    sweep(done, pool, evaluate, store, DistContext(), save=lambda: saves.append(-1),
          progress=False)
    assert calls == [] and saves == [12]  # nothing missing: nothing computed or written


def test_an_interruption_saves_what_was_recorded():
    done, values = _grid()

    class Stop(Exception):
        pass

    def stop_at(index):
        if index == 4:
            raise Stop

    saved = []
    with pytest.raises(Stop):
        sweep(done, WorkerPool([None], one_thread=False), lambda _, i: float(i),
              lambda i, v: values.flat.__setitem__(i, v), DistContext(),
              save=lambda: saved.append(done.copy()), save_every=0.0, progress=False,
              on_point=stop_at)
    assert int(done.sum()) == 5 and saved[-1].sum() == 5  # points 0..4, the last one saved
    assert rank_share(done, DistContext()).tolist() == list(range(5, 12))


def test_the_pool_holds_torch_to_one_thread_and_gives_them_back(one_thread_free):
    before = torch.get_num_threads()
    with WorkerPool([0, 1], one_thread=True) as pool:
        assert pool.map(lambda r, i: torch.get_num_threads(), [0, 1]) == [1, 1]
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="3 points for 2 workers"):
            pool.map(lambda r, i: None, [0, 1, 2])
    assert torch.get_num_threads() == before
    with WorkerPool([0, 1], one_thread=False) as pool:  # one after another, threads as they are
        assert pool.map(lambda r, i: (r, i), ["a", "b"]) == [(0, "a"), (1, "b")]
        assert torch.get_num_threads() == before


@pytest.fixture
def one_thread_free():
    """Two intra-op threads, so the pool's hold to one is visible."""
    with torch_threads(2):
        yield
