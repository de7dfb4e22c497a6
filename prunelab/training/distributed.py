"""One run on several GPUs or machines: torch.distributed with DistributedDataParallel, under ``torchrun``.

Every rank draws the same global batch (same data seed) and trains on its contiguous shard of it, and
DDP averages the gradients, so an update equals single-process training with the same global batch
(exactly so for networks without BatchNorm; BatchNorm statistics are per rank). SNIP and GraSP share
their scoring batch out over the ranks and all-reduce (``prunelab.scores.batching``); other criteria run
on rank 0; the mask is broadcast; only rank 0 writes to the run store.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def init_from_env(device: str = "auto") -> str:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Returns the device this rank should use: ``cuda:<local rank>`` with NCCL on GPUs (whatever GPU index
    was asked for: torchrun gives each rank its own), else the CPU with gloo.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--distributed needs the environment of torchrun, e.g. torchrun --nproc_per_node 8 -m "
                         "prunelab.cli run ... --distributed")
    use_cuda = torch.cuda.is_available() and str(device).split(":")[0] in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu" if device == "auto" else device


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop together, e.g. on divergence)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks, in place (a no-op in a single process)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank, as DDP itself does before each forward
    pass; so that an evaluation split across the ranks is that of rank 0's network."""
    if active():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
