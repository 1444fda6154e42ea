"""Exact top-k with the score tile never written: one kernel computes a tile's products and keeps only
the scores above each query's running floor (its ``k``-th best so far).

:func:`ance.search.knn.block_search` writes every float16 score of a tile (2 GB for 262,144 passages x
4,096 queries) and reads it again for the group maxima; at the MS MARCO shape that is 8.8 TB each way,
as long as the GEMM itself. Here, once a query block holds its ``k`` best (after the first tile, which
goes through :func:`ance.search.knn.tile_topk`), each later tile is one launch of :func:`filter_above`:
products accumulated in float32 in registers, compared with the floor, and only the winners appended
to a per-query candidate list (an atomic counter per query gives each its slot). After a tile or two
of 262,144 passages a query has a few hundred such candidates per tile, then fewer; they are merged
into the running top-k and the floor rises.

* **Exact** up to ties at the floor (a score equal to the floor is left out, as in ``tile_above``):
  the candidates' scores are the float32 accumulations of the float16 products; the first tile's are
  float16-rounded, so the ``k`` winners are rescored at the end as in ``block_search``.
* **Overflow**: a query with more than ``cap`` candidates in one tile (clustered data, a query equal to
  many passages) is searched again by ``block_search``, so the result never depends on ``cap``.
* The kernel is Triton's (a CUDA GPU with Triton, as torch's CUDA builds ship); :func:`filter_above_torch`
  is the same contract in torch, which the CPU tests run through the same driver, and the GPU tests
  hold the kernel to it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ance.search.knn import GROUP, exact_scores, merge_running, tile_topk

CAP = 1024          # candidate slots per query and tile
BLOCK_ROWS = 128    # corpus rows per program
BLOCK_QUERIES = 128  # queries per program
BLOCK_DIM = 64       # the reduction's step
NUM_WARPS = 8
NUM_STAGES = 3

FilterFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor, torch.Tensor], None]


def filter_above_torch(block: torch.Tensor, queries: torch.Tensor, floor: torch.Tensor, offset: int,
                       counts: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> None:
    """The kernel's contract in torch: every score ``block[r] . queries[q] > floor[q]`` is appended to
    query ``q``'s list (``values[q, counts[q]]``, ``rows[q, counts[q]] = offset + r``; ``counts[q]`` += 1);
    ``counts`` goes on counting past the ``cap = values.shape[1]`` slots, which stay as they are."""
    s = (block.float() @ queries.float().T)                     # [B, Q]
    hit = s > floor.unsqueeze(0)
    r, q = hit.nonzero(as_tuple=True)
    if q.numel() == 0:
        return
    order = q.argsort(stable=True)
    r, q = r[order], q[order]
    n = torch.bincount(q, minlength=queries.shape[0]).to(counts.dtype)
    slot = counts[q] + torch.arange(q.numel(), device=q.device) - (n.cumsum(0) - n)[q]
    ok = slot < values.shape[1]
    values[q[ok], slot[ok]] = s[r[ok], q[ok]]
    rows[q[ok], slot[ok]] = (r[ok] + offset).to(rows.dtype)
    counts += n


def _triton_filter() -> FilterFn | None:
    """The Triton kernel behind :func:`filter_above`, or None where Triton or a GPU is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001  (CPU builds of torch ship no Triton)
        return None

    @triton.jit
    def _kernel(c_ptr, q_ptr, floor_ptr, count_ptr, val_ptr, row_ptr, n_rows, n_queries, dim, cap, offset,
                stride_c, stride_q, n_qblocks,
                BR: tl.constexpr, BQ: tl.constexpr, BD: tl.constexpr):
        pid = tl.program_id(0)
        pid_q = pid % n_qblocks            # neighbouring programs share a corpus block (it stays in L2)
        pid_r = pid // n_qblocks
        rr = pid_r * BR + tl.arange(0, BR)
        rq = pid_q * BQ + tl.arange(0, BQ)
        acc = tl.zeros((BR, BQ), dtype=tl.float32)
        for d0 in range(0, dim, BD):
            rd = d0 + tl.arange(0, BD)
            a = tl.load(c_ptr + rr[:, None].to(tl.int64) * stride_c + rd[None, :],
                        mask=(rr[:, None] < n_rows) & (rd[None, :] < dim), other=0.0)
            b = tl.load(q_ptr + rq[:, None].to(tl.int64) * stride_q + rd[None, :],
                        mask=(rq[:, None] < n_queries) & (rd[None, :] < dim), other=0.0)
            acc += tl.dot(a, tl.trans(b))
        floor = tl.load(floor_ptr + rq, mask=rq < n_queries, other=float("inf"))
        hit = (acc > floor[None, :]) & (rr[:, None] < n_rows)
        if tl.sum(hit.to(tl.int32)) > 0:
            qidx = tl.broadcast_to(rq[None, :], (BR, BQ))
            slot = tl.atomic_add(count_ptr + qidx, tl.full((BR, BQ), 1, tl.int32), mask=hit, sem="relaxed")
            ok = hit & (slot < cap)
            dst = qidx.to(tl.int64) * cap + slot
            tl.store(val_ptr + dst, acc, mask=ok)
            tl.store(row_ptr + dst, tl.broadcast_to(rr[:, None] + offset, (BR, BQ)), mask=ok)

    def launch(block, queries, floor, offset, counts, values, rows):
        n_rows, dim = block.shape
        nq = queries.shape[0]
        n_qblocks = triton.cdiv(nq, BLOCK_QUERIES)
        grid = (triton.cdiv(n_rows, BLOCK_ROWS) * n_qblocks,)
        _kernel[grid](block, queries, floor, counts, values, rows, n_rows, nq, dim, values.shape[1], offset,
                      block.stride(0), queries.stride(0), n_qblocks,
                      BR=BLOCK_ROWS, BQ=BLOCK_QUERIES, BD=BLOCK_DIM, num_warps=NUM_WARPS, num_stages=NUM_STAGES)

    return launch


_KERNEL: list = []  # [FilterFn | None], built on first use


def filter_above(block, queries, floor, offset, counts, values, rows) -> None:
    """:func:`filter_above_torch`'s contract, by the Triton kernel on a CUDA tensor where it exists."""
    if block.is_cuda:
        if not _KERNEL:
            _KERNEL.append(_triton_filter())
        if _KERNEL[0] is not None:
            return _KERNEL[0](block, queries, floor, offset, counts, values, rows)
    return filter_above_torch(block, queries, floor, offset, counts, values, rows)


def fused_available(device: torch.device | str) -> bool:
    """Whether :func:`filter_above` runs the Triton kernel on ``device``."""
    if torch.device(device).type != "cuda":
        return False
    if not _KERNEL:
        _KERNEL.append(_triton_filter())
    return _KERNEL[0] is not None


def fused_search(queries: torch.Tensor, blocks: Sequence[torch.Tensor], k: int, *, cap: int = CAP,
                 group: int = GROUP, filter_fn: FilterFn | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries [Q, d]`` over row ``blocks`` (as :func:`ance.search.knn.block_search`,
    with ``rescore``): ``(scores float32 [Q, k'], ids int64 [Q, k'])`` sorted descending. The first
    blocks go through ``tile_topk`` until ``k'`` scores are held, the rest through ``filter_fn``
    (default :func:`filter_above`); queries that overflowed ``cap`` are searched again by ``block_search``."""
    from ance.search.knn import block_search

    filter_fn = filter_fn or filter_above
    k = min(int(k), sum(int(b.shape[0]) for b in blocks))
    nq, dev = queries.shape[0], queries.device
    best = None
    offset = 0
    counts = torch.zeros(nq, dtype=torch.int32, device=dev)
    values = torch.empty((nq, cap), dtype=torch.float32, device=dev)
    n_rows = sum(int(b.shape[0]) for b in blocks)
    rows = torch.empty((nq, cap), dtype=torch.int32 if n_rows < 2**31 else torch.int64, device=dev)
    overflow = torch.zeros(nq, dtype=torch.bool, device=dev)
    for block in blocks:
        if best is None or best[0].shape[1] < k:
            s = block @ queries.T
            found = tile_topk(s, k, group)
            del s
            best = merge_running(best, found[0].float(), found[1] + offset, k)
        else:
            counts.zero_()
            values.fill_(float("-inf"))
            filter_fn(block, queries, best[0][:, -1].contiguous(), offset, counts, values, rows)
            overflow |= counts > cap
            best = merge_running(best, values, rows.long(), k)
        offset += block.shape[0]
    ids = best[1]
    scores = exact_scores(queries, blocks, ids)
    redo = overflow.nonzero(as_tuple=True)[0]
    if redo.numel():
        s2, i2 = block_search(queries[redo], blocks, k, group=group, rescore=True)
        scores[redo], ids[redo] = s2, i2
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores, ids.gather(1, order)
