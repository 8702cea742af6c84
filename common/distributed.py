"""torchrun support: one process per rank, gloo on CPU and NCCL on GPUs, results gathered on rank 0.

Without torchrun (no ``WORLD_SIZE`` or ``WORLD_SIZE=1``) everything is a no-op single process.
Work is split by unit: unit j goes to rank ``j % world_size``. Used by ``eval/fid.py`` (shards of
latents) and ``app/sample.py`` (images or npz chunks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def owns(self, shard_index: int) -> bool:
        return shard_index % self.world_size == self.rank

    def all_errors(self, error: str | None) -> list[str]:
        """Every rank's error message (None entries dropped), known to all ranks so they stop together."""
        if not self.active:
            return [error] if error else []
        errors: list[str | None] = [None] * self.world_size
        dist.all_gather_object(errors, error)
        return [e for e in errors if e]

    def gather(self, obj: Any) -> list[Any] | None:
        """Rank 0 receives every rank's ``obj`` in rank order; other ranks get None."""
        if not self.active:
            return [obj]
        received: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, received, dst=0)
        return received

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.active:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def init_distributed(device: str | None) -> DistContext:
    """Join the torchrun process group if there is one; pick this rank's device.

    ``device`` None means cuda when available. Under torchrun, ``cuda`` without an index means
    ``cuda:LOCAL_RANK`` for each rank.
    """
    from common.devices import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = resolve_device(device)
    if wanted.type == "cuda" and wanted.index is None and world > 1:
        wanted = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if wanted.type == "cuda":
        torch.cuda.set_device(wanted)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if wanted.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, device=wanted)


def shutdown(ctx: DistContext) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
