"""One resumable, sharded pass over the unfinished points of a grid.

Loss surfaces (:mod:`~depthscape.analysis.landscape.surface`), curvature maps
(:mod:`~depthscape.analysis.landscape.curvature`) and trajectory contours (a surface along
a run's principal directions) all fill a grid the same way, through :func:`sweep`:

* the points not yet done are dealt out to the torchrun ranks (every ``world_size``-th,
  from the rank's own index), and each rank's share in rounds of one point per worker
  (or, ``together``, every rank computes every point with the others, each point's work
  split over the ranks by the caller's own collectives);
* a :class:`WorkerPool` evaluates a round: on the CPU one point per thread, each thread
  running torch single-threaded, so every value is computed by the same one-thread code
  whatever the worker or rank count (a resumed or sharded grid is bit-identical);
* after each round every rank gathers every rank's values (so all hold the whole grid),
  records them and marks the points done; rank 0 saves (atomically, at most every
  ``save_every`` seconds, and when the sweep ends or is interrupted);
* every rank runs the same number of rounds (the largest share decides; a rank with
  fewer points takes part in the gathers with none) and meets the others at a barrier.

A rerun finds the saved mask and computes only what is missing: resume is the caller
reading its file back before it calls :func:`sweep`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depthscape.core.distributed import DistContext


class WorkerPool:
    """Runs one call per replica at once: the one pool every grid sweep evaluates with.

    ``replicas`` are independent copies of what a point is computed with (an evaluator, a
    model): call ``i`` of a :meth:`map` gets replica ``i``. With ``one_thread`` (the CPU's
    way) the calls run in parallel, one thread each, while torch is held to one intra-op
    thread; without it they run one after another on torch's threads as they are. The
    arithmetic is each replica's own (its precision sets the TF32 switches around each of
    its calls: :meth:`~depthscape.core.runtime.Precision.scope`).
    """

    def __init__(self, replicas: Sequence, *, one_thread: bool, name: str = "grid"):
        self.replicas = list(replicas)
        self.workers = len(self.replicas)
        self.one_thread, self.name = one_thread, name
        self._executor = None
        self._threads = None

    def __enter__(self) -> WorkerPool:
        if self.one_thread:
            self._threads = torch.get_num_threads()
            torch.set_num_threads(1)
            if self.workers > 1:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=self.name)
        return self

    def __exit__(self, *exc) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    def map(self, fn: Callable[[Any, Any], Any], items: Sequence) -> list:
        """``[fn(replica_i, item_i)]`` for up to :attr:`workers` items."""
        if len(items) > self.workers:
            raise ValueError(f"{len(items)} points for {self.workers} workers")
        if self._executor is None:
            return [fn(replica, item) for replica, item in zip(self.replicas, items)]
        futures = [self._executor.submit(fn, r, item) for r, item in zip(self.replicas, items)]
        return [future.result() for future in futures]


def default_workers(workers: int | None, device: torch.device) -> int:
    """The workers of a sweep: ``workers`` where given, else on the CPU one per intra-op
    thread (each point then single-threaded: see :class:`WorkerPool`), else one."""
    return workers or (torch.get_num_threads() if device.type == "cpu" else 1)


def rank_share(done: np.ndarray, dist: DistContext, together: bool = False) -> np.ndarray:
    """The flat indices of the points not ``done`` that this rank computes: every
    ``world_size``-th, or all of them where the ranks compute each point ``together``."""
    missing = np.flatnonzero(~done.ravel())
    return missing if together else missing[dist.rank::dist.world_size]


def sweep(done: np.ndarray, pool: WorkerPool, evaluate: Callable[[Any, int], Any],
          store: Callable[[int, Any], None], dist: DistContext, *,
          save: Callable[[], None] | None = None, save_every: float = 5.0,
          progress: bool = True, desc: str = "grid",
          on_point: Callable[[int], None] | None = None, together: bool = False) -> None:
    """Compute every point of the grid not yet ``done`` (a bool mask, set in place).

    ``evaluate(replica, flat_index)`` computes one point with one of the ``pool``'s
    replicas and returns its value (picklable: it travels between ranks);
    ``store(flat_index, value)`` records it (on every rank, for every point). ``save``
    (rank 0 only; None: nothing is written) writes the grid atomically, at most every
    ``save_every`` seconds, and once more when the sweep ends or is interrupted with
    points recorded since the last save. ``on_point(flat_index)`` is called after each
    point is recorded (tests use it to interrupt). Every rank calls this collectively.

    ``together``: the points are not dealt out; every rank computes every point with the
    others, ``evaluate`` itself splitting the point's work over the ranks (its own
    collectives: a curvature map's Hessian-vector products all-reduced), so every rank
    returns the same value and nothing is gathered. One worker then: collectives from
    concurrent threads would meet in a different order on each rank.
    """
    mine = rank_share(done, dist, together)
    workers = pool.workers
    if together and dist.enabled and workers > 1:
        raise ValueError("points computed by every rank together run one worker at a time")
    # Every rank takes part in every round (the gather is collective), some with no points.
    rounds = math.ceil(len(mine) / workers)
    if not together:
        rounds = max(dist.gather_objects(rounds))
    bar = tqdm(total=done.size, initial=int(done.sum()), unit="point", desc=desc,
               disable=not progress or not dist.is_main, dynamic_ncols=True)
    writes = save is not None and dist.is_main
    last_save, unsaved = time.monotonic(), 0
    try:
        with pool:
            for round_index in range(rounds):
                chunk = [int(k) for k in mine[round_index * workers:(round_index + 1) * workers]]
                values = list(zip(chunk, pool.map(evaluate, chunk)))
                for part in [values] if together else dist.gather_objects(values):
                    for index, value in part:
                        store(index, value)
                        done.flat[index] = True
                        unsaved += 1
                        bar.update(1)
                        if on_point is not None:
                            on_point(index)
                if writes and unsaved and time.monotonic() - last_save >= save_every:
                    save()
                    last_save, unsaved = time.monotonic(), 0
    finally:
        bar.close()
        if writes and unsaved:
            save()
    dist.barrier()
