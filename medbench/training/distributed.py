"""Distributed data parallel training under `torchrun`.

`torchrun --nproc_per_node N -m medbench train ...` starts N processes and sets `RANK`,
`LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` in each. `process_group`
joins them into one process group (NCCL on CUDA, Gloo on the CPU). Each rank trains on
its shard of the training set through a `DistributedSampler`, and DDP averages the
gradients. Rank 0 alone evaluates, writes checkpoints and talks to MLflow; it broadcasts
its early-stopping decision, so that every rank leaves the epoch loop together.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from medbench.errors import MedbenchError

__all__ = ["DistributedContext", "context", "main_rank_first", "process_group", "shard_loader"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Position of this process in the process group that `process_group` started."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """Wrap `model` (already on `self.device`) in DDP, which averages gradients over the ranks."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # NOTE: DDP runs with find_unused_parameters=False, so a model with a parameter that
        # receives no gradient in a step makes DDP raise. Only swinunet was run under torchrun.
        return DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: float) -> float:
        """Return the mean of `value` over all ranks (a float on each)."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self._collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return float(tensor.item()) / self.world_size

    def broadcast_flag(self, flag: bool) -> bool:
        """Return rank 0's `flag` on every rank."""
        tensor = torch.tensor([int(flag)], dtype=torch.int32, device=self._collective_device)
        dist.broadcast(tensor, src=0)
        return bool(tensor.item())

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    @property
    def _collective_device(self) -> torch.device:
        # NCCL only moves CUDA tensors; Gloo moves CPU tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device_type: str) -> Iterator[DistributedContext | None]:
    """Join the process group of a `torchrun` launch for the body, then leave it.

    Yields `None` in a process that `torchrun` did not start with more than one rank.
    `device_type` is `cuda` (backend NCCL, one GPU per local rank) or `cpu` (backend Gloo).
    """
    if not _launched_by_torchrun():
        yield None
        return
    if device_type not in ("cuda", "cpu"):
        raise MedbenchError(
            f"Distributed training runs on CUDA or the CPU, not on {device_type!r}. Pass --device cuda or --device cpu."
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if device_type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise MedbenchError(
                f"Local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}. Start torchrun "
                "with --nproc_per_node at most the number of GPUs."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    ctx = DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), device)
    log.info("Rank %d of %d joined the process group on %s", ctx.rank, ctx.world_size, device)
    try:
        yield ctx
    finally:
        dist.destroy_process_group()


def context() -> DistributedContext | None:
    """Return this process's place in the running process group, or `None` outside one."""
    if not dist.is_available() or not dist.is_initialized():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), device)


@contextlib.contextmanager
def main_rank_first(ctx: DistributedContext | None) -> Iterator[None]:
    """Run the body on rank 0 first and on the other ranks after it, e.g. to fill a shared cache once."""
    if ctx is not None and not ctx.is_main:
        ctx.barrier()
    yield
    if ctx is not None and ctx.is_main:
        ctx.barrier()


def shard_loader(loader: DataLoader, ctx: DistributedContext, seed: int) -> DataLoader:
    """Return a loader like the shuffled training `loader` that reads only this rank's share of each epoch.

    `DistributedSampler` shuffles with `seed + epoch`; call `loader.sampler.set_epoch(epoch)`
    before each epoch. Each rank keeps the batch size, so one optimizer step averages over `batch_size * world_size` images.
    """
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=loader.drop_last)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator)
