"""Exact inner-product top-k with torch, tiled: the kernel behind :class:`ance.search.index.TorchIndex`.

A tile is ``Q`` queries against ``B`` corpus rows: one GEMM gives the scores (corpus-major,
``[B, Q]``), and the tile's top-k is found in two cheap stages instead of one ``topk`` over ``B``:

1. **group maxima.** The corpus rows are cut into groups of ``G`` neighbours and each group's
   maximum taken per query (one read of the score tile, ``[B / G, Q]`` out);
2. **top groups, then top rows.** The ``k`` groups with the largest maxima hold every one of the
   tile's top ``k`` scores (a score outside them would be beaten by ``k`` group maxima, each a
   distinct larger score), so ``topk`` runs over ``B / G`` maxima and then over the ``k x G``
   scores of the chosen groups.

Exact up to ties (a tie between groups' maxima may pick either group; both hold equal scores).
A running top-k per query block merges the tiles, and once it holds ``k`` scores a tile needs no
``topk`` at all: only groups whose maximum beats the running ``k``-th score can enter
(:func:`tile_above`), and after a tile or two those are few. On a GPU the tile's scores are float16 (the
products accumulate in float32 inside the GEMM), which halves the bytes the two stages read; the
``k`` winners of each query block are then rescored in float32 from the stored vectors, so the
scores returned are not rounded to float16 (the choice at the k-th place is, ties within 2^-11).
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

# Corpus rows per group for the group-maxima stage (see the module docstring): 16, 32 and 64 ran
# within 10% of each other at the MS MARCO shape on an H200 (benchmarks/bench_knn.py); 32 keeps the
# first tile's candidate set (k x G) small.
GROUP = 32


def _plain_topk(scores_t: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return scores_t.t().contiguous().topk(min(k, scores_t.shape[0]), dim=1)


def _grouped(scores_t: torch.Tensor, k: int, group: int) -> torch.Tensor | None:
    """``scores_t [B, Q]`` as ``[B / G, G, Q]``, or None where the group stage does not pay."""
    b, q = scores_t.shape
    if group <= 1 or b % group or b < 4 * k * group:
        return None
    return scores_t.view(b // group, group, q)


def tile_topk(scores_t: torch.Tensor, k: int, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of each query of a tile given corpus-major, ``scores_t [B, Q]``: ``(values [Q, k'],
    rows int64 [Q, k'])``, ``k' = min(k, B)``, values descending. Corpus-major because the group
    maxima then reduce over a middle dimension, which reads memory at full width (a reduction over
    16 adjacent columns of a query-major tile ran at a tenth of that)."""
    k = min(int(k), scores_t.shape[0])
    grouped = _grouped(scores_t, k, group)
    if grouped is None:
        return _plain_topk(scores_t, k)
    q = scores_t.shape[1]
    _, top_groups = grouped.amax(dim=1).t().contiguous().topk(k, dim=1)      # [Q, k]
    cand = grouped[top_groups, :, torch.arange(q, device=scores_t.device).unsqueeze(1)]  # [Q, k, G]
    values, pos = cand.reshape(q, k * group).topk(k, dim=1)
    rows = top_groups.gather(1, pos // group) * group + pos % group
    return values, rows


def tile_above(scores_t: torch.Tensor, floor: torch.Tensor, k: int, group: int = GROUP
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The scores of a tile (``scores_t [B, Q]``, corpus-major) that may enter a running top-``k``
    whose ``k``-th value per query is ``floor [Q]``: every group whose maximum is above the floor,
    as ``(values [Q, m G], rows [Q, m G])`` padded with ``-inf`` (``m`` the most such groups of a
    query), or None when no query has one. Once a query block has seen a tile or two, few groups
    beat its floor, so a comparison replaces the ``topk`` over all group maxima. Falls back to
    :func:`tile_topk` where groups do not apply or a query has more than ``k`` such groups."""
    grouped = _grouped(scores_t, k, group)
    if grouped is None:
        return tile_topk(scores_t, k, group)
    q = scores_t.shape[1]
    hit = grouped.amax(dim=1) > floor.to(scores_t.dtype).unsqueeze(0)   # [B / G, Q]; a tie is left out
    counts = hit.sum(dim=0)
    m = int(counts.max())
    if m == 0:
        return None
    if m > k:
        return tile_topk(scores_t, k, group)
    groups, queries = hit.nonzero(as_tuple=True)        # few pairs: order them by query here
    order = queries.argsort(stable=True)
    queries, groups = queries[order], groups[order]
    slot = torch.arange(queries.numel(), device=scores_t.device) - (counts.cumsum(0) - counts)[queries]
    values = scores_t.new_full((q, m, group), float("-inf"))
    values[queries, slot] = grouped[groups, :, queries]
    rows = torch.zeros((q, m, group), dtype=torch.int64, device=scores_t.device)
    rows[queries, slot] = groups.unsqueeze(1) * group + torch.arange(group, device=scores_t.device)
    return values.view(q, m * group), rows.view(q, m * group)


def merge_running(best: tuple[torch.Tensor, torch.Tensor] | None, values: torch.Tensor, ids: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-``k`` of a query block after one more tile (values descending)."""
    if best is not None:
        values = torch.cat([best[0], values], dim=1)
        ids = torch.cat([best[1], ids], dim=1)
    if values.shape[1] > k:
        values, sel = values.topk(k, dim=1)
        ids = ids.gather(1, sel)
    return values, ids


def block_search(queries: torch.Tensor, blocks: Sequence[torch.Tensor], k: int, *,
                 group: int = GROUP, rescore: bool = False, overlap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries [Q, d]`` over the corpus held as row ``blocks`` (ids continue from
    block to block; every block but the last the same size): ``(scores float32 [Q, k'], ids int64
    [Q, k'])`` sorted descending, ``k'`` = ``min(k, rows)``. The first tiles go through
    :func:`tile_topk`; once ``k'`` scores are held, :func:`tile_above` keeps only what beats the
    running ``k'``-th. ``rescore``: recompute the winners' scores in float32 (low-precision tiles).

    ``overlap``: each tile's GEMM is queued before the previous tile's selection, which runs on a second
    CUDA stream (:class:`_Streams`). The selection waits on the host twice a tile (how many groups beat
    the floor; ``nonzero``'s size); on one stream the GPU idles while the host then queues the rest, and
    with the next GEMM already queued on another stream it has work meanwhile. Two score tiles are alive
    at once. Same results (tests/test_knn.py); on a CPU the same order of work without streams."""
    k = min(int(k), sum(int(b.shape[0]) for b in blocks))
    streams = _Streams(queries.device, overlap)
    best = None
    pending = None  # (scores, offset, ready) of the tile whose selection is still to run

    def select(tile) -> None:
        nonlocal best
        s, offset, ready = tile
        with streams.side(ready, s):
            if best is None or best[0].shape[1] < k:
                found = tile_topk(s, k, group)
            else:
                found = tile_above(s, best[0][:, -1], k, group)
            if found is not None:
                best = merge_running(best, found[0], found[1] + offset, k)

    offset = 0
    for block in blocks:
        s = block @ queries.T                         # corpus-major tile [B, Q]
        tile = (s, offset, streams.ready())
        offset += block.shape[0]
        if not overlap:
            select(tile)
            continue
        if pending is not None:
            select(pending)
        pending = tile
    if pending is not None:
        select(pending)
    with streams.side(None, None):
        values, ids = best
        if rescore:
            values = exact_scores(queries, blocks, ids)
        values, order = values.float().sort(dim=1, descending=True, stable=True)
        ids = ids.gather(1, order)
    return streams.join(values, ids)


class _Streams:
    """:func:`block_search`'s second CUDA stream for the tiles' selection (``overlap`` on a GPU); nothing on
    a CPU or with ``overlap`` off, where every step runs on the current stream in the same order."""

    def __init__(self, device: torch.device, overlap: bool):
        self.on = bool(overlap) and device.type == "cuda"
        if self.on:
            self.main = torch.cuda.current_stream(device)
            self.other = torch.cuda.Stream(device)

    def ready(self):
        """An event after the work queued so far on the main stream (a tile's GEMM), or None."""
        if not self.on:
            return None
        event = torch.cuda.Event()
        event.record(self.main)
        return event

    def side(self, ready, scores):
        """Run on the side stream once ``ready`` has passed; ``scores`` (made on the main stream) is not
        reused by the allocator until the side stream's work on it is done."""
        if not self.on:
            return contextlib.nullcontext()
        if ready is not None:
            self.other.wait_event(ready)
        if scores is not None:
            scores.record_stream(self.other)
        return torch.cuda.stream(self.other)

    def join(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The main stream waits for the side stream; the results are the main stream's from here on."""
        if self.on:
            self.main.wait_stream(self.other)
            for t in tensors:
                t.record_stream(self.main)
        return tensors


def exact_scores(queries: torch.Tensor, blocks: Sequence[torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """float32 inner products of each query with the corpus rows ``ids [Q, k]`` names (blocks of
    one size but the last): the pairs sorted by block, one gather and one product per block."""
    q, k = ids.shape
    size = int(blocks[0].shape[0])
    flat = ids.reshape(-1)
    rows = torch.arange(q, device=ids.device).repeat_interleave(k)
    which = flat // size
    order = which.argsort()
    counts = torch.bincount(which, minlength=len(blocks)).tolist()
    out = torch.empty(q * k, dtype=torch.float32, device=ids.device)
    qf = queries.float()
    start = 0
    for j, n in enumerate(counts):
        if n:
            sel = order[start:start + n]
            vecs = blocks[j][flat[sel] - j * size].float()
            out[sel] = (qf[rows[sel]] * vecs).sum(dim=1)
        start += n
    return out.view(q, k)
