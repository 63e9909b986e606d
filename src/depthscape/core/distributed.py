"""Processes of one ``torchrun`` job (training, evaluation, landscapes): set-up, shards, collectives.

``torchrun --nproc_per_node=N depthscape train ...`` starts N processes with ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`setup` reads them, picks the device
(``cuda:LOCAL_RANK`` with NCCL, or the CPU with gloo) and joins the process group; a plain
``python``/``depthscape`` start gives a :class:`DistContext` with ``world_size == 1``
whose collectives are identities, so single-process code has no rank branches and runs
untouched. Training, its evaluation and loss landscapes share this one object.

The global batch stays the recipe's: every rank reads the same seeded batch of indices
and keeps its contiguous slice (:func:`shard_bounds`), so the ranks together see exactly
the samples a single process would, in the same order.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from depthscape.core.device import get_device
from depthscape.core.errors import UserError


def env_rank() -> int:
    """This process's global rank as torchrun set it (0 outside torchrun)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 outside torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True on rank 0 (and in every plain single-process start): the one that prints and writes."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return env_rank() == 0


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of the ``rank``-th of ``world_size`` contiguous, near-equal slices of ``n`` items.

    The slices cover ``0..n`` in order without overlap, so concatenating every rank's slice
    of a batch gives the batch back. Sizes differ by at most one (equal when divisible).
    """
    return (n * rank) // world_size, (n * (rank + 1)) // world_size


@dataclass
class DistContext:
    """Where this process stands among the processes of one job: alone, or under torchrun.

    This class is the single-process case (``world_size == 1``): every collective is the
    identity or a no-op (``all_sum`` returns its input, ``gather_objects`` returns
    ``[obj]``, ``barrier`` returns at once), so code written against it reads the same
    alone and under torchrun, where :func:`setup` returns a :class:`GroupContext` instead.
    Training, its evaluation and landscapes all take one of these.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0: the process that prints and writes files."""
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """``[lo, hi)`` of this process's contiguous slice of ``n`` items (see :func:`shard_bounds`)."""
        return shard_bounds(n, self.rank, self.world_size)

    def barrier(self) -> None:
        """Wait until every process reaches this point."""

    def all_true(self, flag: bool) -> bool:
        """True only where ``flag`` is true on every rank (a collective: every rank calls it)."""
        return flag

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of ``values`` (a float64 tensor on the device) over every rank, in place."""
        return values

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics)."""

    def gather_objects(self, obj) -> list:
        """Every rank's ``obj`` (any picklable object), indexed by rank (a collective)."""
        return [obj]

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module a training step calls: ``model`` itself, or its DistributedDataParallel."""
        return model

    def signal_acts_alone(self, signalled: bool) -> bool:
        """Whether a stop signal this process received can act at once, without the others.

        Alone it can; under torchrun it waits for the next point where the ranks agree.
        """
        return signalled

    def close(self) -> None:
        """End of one computation. The process group stays: torchrun's rendezvous cannot be
        joined a second time, and the next run of this process (a study, a landscape after
        a training) reuses it; it is destroyed when the process exits."""


@dataclass
class GroupContext(DistContext):
    """One of ``world_size > 1`` processes of a torchrun job: the collectives are real."""

    def barrier(self) -> None:
        dist.barrier()

    def all_true(self, flag: bool) -> bool:
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)

    def gather_objects(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return DistributedDataParallel(model, device_ids=[self.device.index]
                                       if self.device.type == "cuda" else None)

    def signal_acts_alone(self, signalled: bool) -> bool:
        return False


def setup(device_name: str | None = None) -> DistContext:
    """The device and process group of this process; joins the group under torchrun.

    Outside torchrun (``WORLD_SIZE`` unset or 1) this is a :class:`DistContext` on
    :func:`get_device` and nothing else. Under torchrun the device is ``cuda:LOCAL_RANK``
    (backend NCCL) when CUDA is the device asked for or found, else the CPU (backend gloo);
    the group is joined once for the life of the process (see :meth:`DistContext.close`).
    """
    world = env_world_size()
    if world == 1:
        return DistContext(device=get_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = get_device(device_name)
    if device.type == "cuda":
        if device_name and ":" in device_name:
            raise UserError(f"--device {device_name} names one GPU, but under torchrun each "
                            "process takes cuda:LOCAL_RANK: pass --device cuda (or nothing), "
                            "and choose GPUs with CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise UserError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes "
                            f"on this machine but only {count} GPU(s) are visible: use "
                            f"--nproc_per_node={count} or fewer")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise UserError(f"under torchrun depthscape runs on CUDA (NCCL) or the CPU (gloo), not on "
                        f"{device.type}: pass --device cpu or start without torchrun")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
        keep_group_until_exit()
    if dist.get_world_size() != world:
        raise UserError(f"WORLD_SIZE says {world} processes but the process group has "
                        f"{dist.get_world_size()}")
    return GroupContext(rank=dist.get_rank(), local_rank=local_rank, world_size=world,
                        device=device)


def keep_group_until_exit() -> None:
    """Destroy the process group when the process exits, not before (see setup)."""
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
