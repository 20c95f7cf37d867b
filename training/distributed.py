"""Process-group set-up for `torchrun` (NCCL on GPUs, gloo on CPU) and the few collectives the trainer uses.

A plain `python train.py` is one process and never touches torch.distributed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def local_world_size(self) -> int:
        """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE): they share its cores."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.distributed else 1


def current() -> DistInfo:
    """Rank and world size of an initialised process group (else one process)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1), once."""
    if dist.is_available() and dist.is_initialized():
        return current()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return current()


def any_true(flag: bool, device) -> bool:
    """True when `flag` is true on any rank (a no-op with one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj) -> list:
    """Every rank's `obj` on every rank (a list of one with one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (torchrun warns when a process exits without doing so)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
