"""Data-parallel training under ``torchrun`` (one process per accelerator).

Run as ``torchrun --nproc_per_node=G -m trainer.cli LAYOUT ...`` (or the ``fae-train``
script in place of ``-m trainer.cli``); :func:`init_from_env` reads torchrun's
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` and joins the process group (NCCL on CUDA, gloo on
CPU).

What is replicated and how replicas stay equal:

- Every rank runs the same seeded scheduler, so all ranks agree on the minibatch order and
  on the phase (hot or cold) of every step. One data-parallel step takes up to ``world``
  consecutive minibatches of one kind; rank ``r`` trains the ``r``-th (a rank without one
  in a short step contributes zero gradients). The loss of each rank is its sum of
  per-sample losses divided by the step's total rows, so the summed gradients equal those
  of one big minibatch (the reference the tests compare with).
- MLPs are replicated; their gradients are all-reduced (summed) every step.
- Hot tables (``fae``) are replicated on every accelerator; cold tables are full copies in
  each process's CPU memory. Either way, a step's touched rows and their gradients are
  all-gathered from every rank (ids and rows, not the whole table), merged, and every rank
  applies the same sparse update, so all copies stay identical without broadcasting
  tables. CPU tensors travel over a gloo group even when the main backend is NCCL.
- Evaluation splits the validation/test minibatches over the ranks and gathers the
  scores on rank 0; adaptive-schedule probes are computed by every rank and averaged.
  Only rank 0 logs and writes checkpoints; all ranks resume from the same file.

Verified: the logic above with the gloo backend on two CPU processes (tests/trainer),
equal to single-process training on the concatenated minibatches.

Not verified here (no multi-GPU machine): NCCL itself, CUDA-side all-gathers of hot rows,
multi-node runs, and throughput scaling. Known limits: each process holds its own copy of
the full CPU tables (a node with G GPUs holds G copies; a shared-memory table per node
would remove that), and every rank verifies every shard checksum at start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from trainer.embedding import coalesce
from trainer.errors import TrainerError

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device  # this rank's accelerator (the CPU without CUDA)
    backend: str
    cpu_group: Any = None  # gloo group for CPU tensors; None: the default group is gloo

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def group_for(self, t: torch.Tensor) -> Any:
        return self.cpu_group if t.device.type == "cpu" else None


def init_from_env(device: str = "auto") -> DistContext | None:
    """Join the process group torchrun describes; None when not launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda, but torch sees no CUDA device")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return context(torch.device("cuda", local) if use_cuda else torch.device("cpu"), local)


def context(device: torch.device, local_rank: int | None = None) -> DistContext:
    """A context over an already initialised default process group."""
    backend = str(dist.get_backend())
    cpu_group = dist.new_group(backend="gloo") if backend != "gloo" else None
    rank = dist.get_rank()
    return DistContext(rank, dist.get_world_size(), rank if local_rank is None else local_rank,
                       device, backend, cpu_group)


def all_reduce_grads(ctx: DistContext, params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over all ranks (one flat all-reduce)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=ctx.group_for(flat))
    pos = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[pos:pos + n].view_as(p).clone()
        pos += n


def all_gather_rows(ctx: DistContext, uniq: torch.Tensor, grad: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every rank's touched rows and gradients, merged (same result on every rank)."""
    group = ctx.group_for(uniq)
    n = torch.tensor([uniq.numel()], dtype=torch.int64, device=uniq.device)
    sizes = [torch.zeros_like(n) for _ in range(ctx.world)]
    dist.all_gather(sizes, n, group=group)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    if top == 0:
        return uniq, grad
    pad_u = torch.zeros(top, dtype=uniq.dtype, device=uniq.device)
    pad_g = torch.zeros(top, grad.shape[1], dtype=grad.dtype, device=grad.device)
    pad_u[:uniq.numel()] = uniq
    pad_g[:uniq.numel()] = grad
    all_u = [torch.empty_like(pad_u) for _ in range(ctx.world)]
    all_g = [torch.empty_like(pad_g) for _ in range(ctx.world)]
    dist.all_gather(all_u, pad_u, group=group)
    dist.all_gather(all_g, pad_g, group=group)
    return coalesce(torch.cat([u[:c] for u, c in zip(all_u, counts)]),
                    torch.cat([g[:c] for g, c in zip(all_g, counts)]))


def all_reduce_sum(ctx: DistContext, value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=ctx.cpu_group)
    return float(t.item())


def all_gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj, group=ctx.cpu_group)
    return out


def barrier(ctx: DistContext) -> None:
    dist.barrier(group=ctx.cpu_group)


def shutdown(ctx: DistContext | None) -> None:
    """Leave the process group (all ranks, at the end of a run)."""
    if ctx is not None and dist.is_initialized():
        dist.barrier(group=ctx.cpu_group)
        dist.destroy_process_group()
