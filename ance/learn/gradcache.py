"""Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup"): a contrastive step over a large batch with
the activation memory of one chunk.

A contrastive loss couples every query with every passage, so the batch cannot
simply be split into accumulated micro-batches. GradCache splits the step
instead:

1. encode all queries and passages chunk by chunk **without** autograd,
   remembering each chunk's RNG state (:class:`RandContext`);
2. compute the loss on the concatenated representations (all-gathered across
   ranks) and backpropagate only to the representations: ``dL/dq``, ``dL/dp``;
3. re-encode each chunk **with** autograd, replaying its RNG state so dropout
   is the same as in step 1, and backpropagate ``(reps * dL/dreps).sum()``.

By the chain rule the parameter gradients are exactly those of one backward
through the whole batch encoded chunk by chunk. The optimizer step, gradient
clipping and scheduling stay with the caller.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from ance.learn.distributed import gather_with_grad, is_distributed, world_size

Inputs = dict[str, Tensor]


class RandContext:
    """Replays the RNG state of the moment it was made.

    Captures the CPU RNG state, and the CUDA RNG state of every GPU holding one
    of ``tensors``, at construction. ``with ctx:`` forks the RNGs (so the code
    outside the block does not see them move), restores the captured state and
    runs the block: the same random ops draw the same numbers, e.g. dropout in
    a re-forward. Re-entrant: each ``with`` replays from the same state.
    """

    def __init__(self, *tensors: Tensor):
        self.cpu_state = torch.get_rng_state()
        self.cuda_devices = sorted({t.device.index if t.device.index is not None else torch.cuda.current_device()
                                    for t in tensors if t.device.type == "cuda"})
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        self._fork: contextlib.AbstractContextManager | None = None

    def __enter__(self) -> "RandContext":
        if self._fork is not None:
            raise RuntimeError("RandContext is already entered; nesting the same context is not supported")
        self._fork = torch.random.fork_rng(devices=self.cuda_devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.cuda_devices, self.cuda_states):
            torch.cuda.set_rng_state(state, device)
        return self

    def __exit__(self, *exc) -> None:
        fork, self._fork = self._fork, None
        fork.__exit__(*exc)


# --------------------------------------------------------------------------- helpers


def _check_inputs(inputs: Inputs, name: str) -> int:
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(f"{name} must be a non-empty dict of tensors (input_ids, attention_mask, ...)")
    sizes = {k: v.shape[0] if isinstance(v, Tensor) and v.dim() > 0 else None for k, v in inputs.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"{name}: every value must be a tensor with the same first dimension, got {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"{name} is empty")
    return n


def _plan(inputs: Inputs, size: int, tokens: int | None = None) -> tuple[list[Inputs], Tensor | None]:
    """The rows in chunks, longest first, each chunk cut to its own widest row; and the
    permutation that restores the original row order (None when unchanged).

    A chunk holds ``size`` rows, or, with a ``tokens`` budget, as many rows as fit in
    ``rows * width <= tokens`` (at least one), so short sequences (queries, short
    passages) go in fewer, fuller chunks at no more activation memory than ``tokens``
    allows. A batch is padded to its longest sequence; chunks of similar lengths need not
    pay for that. Only trailing all-padding columns are cut, so token positions,
    and therefore the representations, are unchanged (left-padded rows are never
    cut). The plan is made from one host copy of the attention mask, so building
    the chunks costs a single device synchronisation, not one per chunk: the step
    is launch-bound for small encoders, and every sync stalls the launch queue.
    The caller restores the order of the representations with ``reps[inverse]``.
    """
    keys = list(inputs)
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        first = next(iter(inputs.values()))
        rows = _chunk_rows(size, tokens, first.shape[1] if first.dim() == 2 else 1)
        return [dict(zip(keys, parts)) for parts in zip(*(inputs[k].split(rows, dim=0) for k in keys))], None
    host = mask.detach().to("cpu")
    n, width = host.shape
    # extent of each row: one past its last non-padding column
    extent = ((host != 0).long() * torch.arange(1, width + 1)).amax(dim=1) if width else torch.zeros(n, dtype=torch.long)
    order = torch.sort(extent, descending=True, stable=True).indices
    identity = bool((order == torch.arange(n)).all())
    device = mask.device
    order_dev = None if identity else order.to(device, non_blocking=True)
    chunks = []
    lo = 0
    while lo < n:
        cut = int(extent[order[lo]]) or width   # sorted: the first row is the chunk's widest
        hi = min(n, lo + _chunk_rows(size, tokens, cut))
        rows = slice(lo, hi) if identity else order_dev[lo:hi]
        chunks.append({k: (v[rows, :cut] if v.dim() == 2 and v.shape[1] == width else v[rows])
                       for k, v in inputs.items()})
        lo = hi
    if identity:
        return chunks, None
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n)
    return chunks, inverse.to(device, non_blocking=True)


def _chunk_rows(size: int, tokens: int | None, width: int) -> int:
    """Rows a chunk of rows ``width`` wide holds: ``size``, or as many as the ``tokens`` budget allows (>= 1)."""
    return size if tokens is None else max(1, tokens // max(1, width))


def _check_count(name: str, value, *, optional: bool) -> None:
    """``value`` must be a positive int (or None when ``optional``); bools are refused."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


def _rows(chunks: list[Inputs]) -> list[int]:
    return [next(iter(c.values())).shape[0] for c in chunks]


def _unsort(reps: Tensor, inverse: Tensor | None) -> Tensor:
    return reps if inverse is None else reps[inverse]


def _autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def _no_autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast off inside an autocast region, keeping that region's cache of cast weights
    (the cache is cleared only when the outermost autocast region exits)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def _upcast(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _global_loss(model: nn.Module, loss_fn: Callable[..., Tensor], q: Tensor, p: Tensor,
                 loss_kwargs: dict) -> tuple[Tensor, Tensor]:
    """Loss over the whole (gathered) batch, and the tensor to backpropagate.

    Under DDP, which averages gradients over ranks, the backward tensor is
    ``loss * world_size``: each rank contributes the full loss's gradient with
    respect to its own representations, and the average of ``world_size`` such
    contributions times ``world_size`` is their sum, the full gradient. Without
    DDP each rank is left with its share, to be summed by the caller.
    """
    if is_distributed():
        q, p = gather_with_grad(q), gather_with_grad(p)
    loss = loss_fn(q, p, **loss_kwargs)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
    to_backward = loss * world_size() if isinstance(model, DistributedDataParallel) else loss
    return loss, to_backward


def _backward(t: Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(t) if scaler is not None else t).backward()


def plain_step(
    model: nn.Module,
    loss_fn: Callable[..., Tensor],
    queries: Inputs,
    passages: Inputs,
    *,
    chunk_size: int | None = None,
    chunk_tokens: int | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    device_type: str = "cpu",
    **loss_kwargs,
) -> Tensor:
    """One ordinary forward and backward of the whole batch; returns the detached loss.

    The reference GradCache must match, and the ``chunk_size=None`` path of the
    trainer. Queries are encoded first, then passages, as GradCache does, so with
    the same starting RNG state the dropout masks are the same. ``chunk_size``
    (default: none) encodes in chunks with autograd on, consuming the RNG
    exactly like GradCache with that chunk size (and ``chunk_tokens`` budget), so the
    two can be compared with dropout on; it saves no memory. Distributed and scaler handling as in
    :meth:`GradCache.step`.
    """
    _check_count("chunk_size", chunk_size, optional=True)
    _check_count("chunk_tokens", chunk_tokens, optional=True)
    nq, np_ = _check_inputs(queries, "queries"), _check_inputs(passages, "passages")
    (q_chunks, q_inv), (p_chunks, p_inv) = (_plan(queries, chunk_size or nq, chunk_tokens),
                                            _plan(passages, chunk_size or np_, chunk_tokens))
    with _autocast(device_type, autocast_dtype):
        q = _unsort(torch.cat([model(**c, kind="query") for c in q_chunks]), q_inv)
        p = _unsort(torch.cat([model(**c, kind="passage") for c in p_chunks]), p_inv)
    loss, to_backward = _global_loss(model, loss_fn, _upcast(q), _upcast(p), loss_kwargs)
    _backward(to_backward, scaler)
    return loss.detach()


class GradCache:
    """A contrastive training step whose activation memory is that of one chunk.

    Args:
        model: called as ``model(input_ids=..., attention_mask=..., [token_type_ids=...],
            kind="query" | "passage")`` and returning representations ``[n, d]``.
            May be wrapped in ``DistributedDataParallel``: then gradients are
            synchronised only in the very last re-forward chunk (``no_sync`` for
            the others), and every rank must hold the same number of queries and
            of passages (checked by the gather).
        loss_fn: ``loss_fn(q, p, **loss_kwargs) -> scalar``, e.g. :class:`ance.learn.losses.InfoNCE`.
            Under ``torch.distributed`` it receives the gathered ``q`` and ``p``
            (rank-major), so ``loss_kwargs`` (``pos_index``, masks) must describe
            the global batch. Called outside autocast, on representations of at least float32.
        chunk_size: sequences per forward pass (queries and passages alike).
        chunk_tokens: instead, a budget of rows x padded width per forward pass: short
            sequences are packed more per chunk (e.g. ``chunk_size * max_length``: no more
            activation memory than ``chunk_size`` full-length rows, fewer passes).
        scaler: a ``torch.amp.GradScaler`` for fp16; the parameter gradients come
            out scaled, the caller unscales, steps and updates the scaler.
        autocast_dtype: run the model under ``torch.autocast(device_type, dtype)``
            (``torch.bfloat16``, ``torch.float16``); None = no autocast.
        device_type: the autocast device type, ``"cuda"`` or ``"cpu"``.

    ``step`` accumulates into ``.grad`` (call ``zero_grad`` between steps) and
    leaves the global RNG as a plain forward of the same chunks would.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[..., Tensor],
        chunk_size: int,
        *,
        chunk_tokens: int | None = None,
        scaler: torch.amp.GradScaler | None = None,
        autocast_dtype: torch.dtype | None = None,
        device_type: str = "cpu",
    ):
        _check_count("chunk_size", chunk_size, optional=False)
        _check_count("chunk_tokens", chunk_tokens, optional=True)
        if autocast_dtype not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"autocast_dtype must be None, torch.float16 or torch.bfloat16, got {autocast_dtype}")
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.chunk_size = chunk_size
        self.chunk_tokens = chunk_tokens
        self.scaler = scaler
        self.autocast_dtype = autocast_dtype
        self.device_type = device_type

    def _forward_no_grad(self, jobs: list[tuple[Inputs, str]]) -> tuple[list[Tensor], list[RandContext]]:
        """Every chunk encoded without autograd in one autocast region (the weights are
        cast to the autocast dtype once, not once per chunk), recording each chunk's RNG state."""
        reps, states = [], []
        with torch.no_grad(), _autocast(self.device_type, self.autocast_dtype):
            for chunk, kind in jobs:
                states.append(RandContext(*chunk.values()))
                reps.append(self.model(**chunk, kind=kind))
        return reps, states

    def _sync_contexts(self, n: int) -> Iterator[contextlib.AbstractContextManager]:
        ddp = isinstance(self.model, DistributedDataParallel)
        for i in range(n):
            yield self.model.no_sync() if ddp and i < n - 1 else contextlib.nullcontext()

    def step(self, queries: Inputs, passages: Inputs, **loss_kwargs) -> Tensor:
        """Accumulate the gradient of ``loss_fn`` over the whole batch; returns the detached loss."""
        _check_inputs(queries, "queries")
        _check_inputs(passages, "passages")
        # longest first, so each chunk pads only to its own longest row
        (q_chunks, q_inv), (p_chunks, p_inv) = (_plan(queries, self.chunk_size, self.chunk_tokens),
                                                _plan(passages, self.chunk_size, self.chunk_tokens))
        jobs = [(c, "query") for c in q_chunks] + [(c, "passage") for c in p_chunks]

        # (a) graph-less forward, recording each chunk's RNG state; the leaves are in sorted
        #     row order and at least float32, so the cached gradients keep full precision
        reps, states = self._forward_no_grad(jobs)
        q = _upcast(torch.cat(reps[:len(q_chunks)])).requires_grad_()
        p = _upcast(torch.cat(reps[len(q_chunks):])).requires_grad_()
        del reps

        # (b) the loss over the whole batch in its original order, backpropagated to the
        #     representations only; the leaves' gradients stay in chunk order
        loss, to_backward = _global_loss(self.model, self.loss_fn, _unsort(q, q_inv), _unsort(p, p_inv),
                                         loss_kwargs)
        _backward(to_backward, self.scaler)
        grads = list(q.grad.split(_rows(q_chunks))) + list(p.grad.split(_rows(p_chunks)))

        # (c) re-forward with autograd under the recorded RNG state, chain in the cached gradient.
        #     One autocast region for all chunks, so each weight is cast once and every chunk's
        #     backward flows through the same cast; the backwards themselves run outside autocast.
        with _autocast(self.device_type, self.autocast_dtype):
            for (chunk, kind), state, grad, sync in zip(jobs, states, grads, self._sync_contexts(len(jobs))):
                with sync:
                    with state:
                        reps = self.model(**chunk, kind=kind)
                    with _no_autocast(self.device_type, self.autocast_dtype):
                        (_upcast(reps) * grad).sum().backward()
        return loss.detach()
