"""torch.distributed helpers that degrade to single-process no-ops.

Every function here works without an initialised process group: ``rank()`` is
0, ``world_size()`` is 1 and the gathers return their input, so the training
code has one path for one process and for many.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True when a default process group is initialised (any world size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 when not distributed."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the default group; 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def gather_with_grad(t: Tensor) -> Tensor:
    """All-gather ``t`` along dim 0 from every rank, in rank order.

    The slice of this rank *is* ``t`` (the same autograd node), so gradients of
    anything computed from the result flow back to ``t``; the other ranks'
    slices are detached copies. This is what a contrastive loss over the global
    batch needs: every rank computes the same loss and backpropagates only into
    its own representations (under DDP scale the loss by ``world_size()``,
    since DDP averages gradients; ``ance.learn.gradcache`` does it).

    Every rank must pass a tensor of the same shape (drop or pad the last
    batch), else ``ValueError`` on every rank. Identity when not distributed.
    """
    if not is_distributed() or world_size() == 1:
        return t
    if t.dim() > 8:
        raise ValueError(f"gather_with_grad supports tensors of at most 8 dimensions, got {t.dim()}")
    n = world_size()
    # Shapes first, so a mismatch is a clear error on every rank instead of a hang or garbage.
    shape = torch.tensor([t.dim(), *t.shape, *([0] * (8 - t.dim()))], dtype=torch.long, device=t.device)
    shapes = [torch.empty_like(shape) for _ in range(n)]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        got = [tuple(s[1:1 + int(s[0])].tolist()) for s in shapes]
        raise ValueError(f"gather_with_grad needs the same shape on every rank, got {got} (rank order): "
                         "give every rank the same number of rows (drop or pad the last batch)")
    parts = [torch.empty_like(t) for _ in range(n)]
    dist.all_gather(parts, t.detach().contiguous())
    parts[rank()] = t
    return torch.cat(parts, dim=0)


def gather_object(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank; ``obj`` itself when not distributed."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
