"""Who this process is in a data-parallel run, and the few collectives the streamed trainers use.

`torchrun` sets RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT; `init()` joins the process group with gloo on
CPU (nccl only matters on GPUs, which this CPU build does not train on). Without those variables the run is a
world of one and every collective is the identity, so the same code trains in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank r of world_size (r = 0 writes checkpoints and scores)."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def leader(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a `torchrun` worker (it always sets WORLD_SIZE and RANK)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def init(backend: str = "gloo") -> Ranks:
    """Join the process group `torchrun` describes (idempotent), or return a world of one outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    if not launched_by_torchrun():
        return Ranks()
    world = int(os.environ["WORLD_SIZE"])
    if world == 1:
        return Ranks()
    dist.init_process_group(backend=backend)
    return Ranks(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> Ranks:
    """The ranks of the joined process group, or a world of one."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def average(flat: torch.Tensor) -> torch.Tensor:
    """The mean of `flat` over ranks (a new tensor; the identity in a world of one)."""
    ranks = current()
    if not ranks.distributed:
        return flat
    out = flat.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ranks.world_size


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's (N, C) `rows` stacked in rank order: one collective (every rank must pass the same shape)."""
    ranks = current()
    if not ranks.distributed:
        return rows
    out = [torch.empty_like(rows) for _ in range(ranks.world_size)]
    dist.all_gather(out, rows.contiguous())
    return torch.cat(out)


def gather_objects(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order (a one-element list in a world of one)."""
    ranks = current()
    if not ranks.distributed:
        return [value]
    out: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(out, value)
    return out


def broadcast_object(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not current().distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_module(module: torch.nn.Module) -> None:
    """Overwrite every rank's parameters and buffers with rank 0's (in place)."""
    if not current().distributed:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def barrier() -> None:
    if current().distributed:
        dist.barrier()
