"""Contrastive losses over query and passage representations, and their masks.

Conventions shared by everything here:

* ``q`` is ``[B, d]`` (queries), ``p`` is ``[P, d]`` (passages). In a training
  batch ``P = B * (1 + n_neg)``, the ``B`` positives first (``p[i]`` is query
  ``i``'s positive) then the hard negatives; after a distributed gather the
  layout is rank-major, which is why the positive of query ``i`` is always
  given explicitly as ``pos_index[i]``.
* Scores are ``q @ p.T / temperature``. The losses do not normalise: a model
  with cosine similarity hands over normalised representations.
* Masks are bool, ``True`` = drop that candidate from the denominator. A mask
  never drops a query's own positive (``ValueError`` if it does).
* Losses are computed in at least float32 (bf16/fp16 representations are
  upcast), and return the mean over queries.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ance.learn.distributed import gather_with_grad

__all__ = ["InfoNCE", "BidirectionalInfoNCE", "positive_mask", "gist_mask", "gather_with_grad"]


# --------------------------------------------------------------------------- validation


def _check_temperature(temperature: float) -> float:
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def _check_reps(q: Tensor, p: Tensor) -> None:
    if not isinstance(q, Tensor) or not isinstance(p, Tensor):
        raise ValueError(f"q and p must be tensors, got {type(q).__name__} and {type(p).__name__}")
    if q.dim() != 2 or p.dim() != 2:
        raise ValueError(f"q and p must be 2-d [n, dim], got shapes {tuple(q.shape)} and {tuple(p.shape)}")
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"q and p must have the same dimension, got {q.shape[1]} and {p.shape[1]}")
    if q.shape[0] == 0 or p.shape[0] == 0:
        raise ValueError(f"empty batch: q {tuple(q.shape)}, p {tuple(p.shape)}")
    if not q.is_floating_point() or not p.is_floating_point():
        raise ValueError(f"q and p must be floating point, got {q.dtype} and {p.dtype}")


def _upcast(q: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """float16/bfloat16 to float32 (float64 stays), both to one dtype."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, p.dtype), torch.float32)
    return q.to(dtype), p.to(dtype)


def _check_pos_index(pos_index: Tensor, n_queries: int, n_passages: int) -> Tensor:
    if not isinstance(pos_index, Tensor):
        raise ValueError(f"pos_index must be a LongTensor [{n_queries}], got {type(pos_index).__name__}")
    if pos_index.dtype in (torch.bool,) or pos_index.is_floating_point() or pos_index.is_complex():
        raise ValueError(f"pos_index must be an integer tensor, got {pos_index.dtype}")
    if tuple(pos_index.shape) != (n_queries,):
        raise ValueError(f"pos_index must have shape [{n_queries}] (one per query), got {tuple(pos_index.shape)}")
    lo, hi = int(pos_index.min()), int(pos_index.max())
    if lo < 0 or hi >= n_passages:
        raise ValueError(f"pos_index values must be in [0, {n_passages}) (passage rows), got range [{lo}, {hi}]")
    return pos_index.long()


def _check_mask(mask: Tensor | None, shape: tuple[int, int], name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor (True = drop), got {got}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(mask.shape)}")


def _check_positives_kept(mask: Tensor | None, pos_index: Tensor) -> None:
    if mask is not None and bool(mask.gather(1, pos_index[:, None]).any()):
        rows = mask.gather(1, pos_index[:, None]).squeeze(1).nonzero().flatten().tolist()
        raise ValueError(f"mask drops the positive of queries {rows[:10]}: a mask may only drop negatives")


# --------------------------------------------------------------------------- losses


class InfoNCE(nn.Module):
    """InfoNCE (in-batch + hard negatives, a.k.a. MultipleNegativesRankingLoss).

    For query ``i`` with positive ``p[pos_index[i]]``::

        loss_i = -log softmax_j(q_i . p_j / temperature)[pos_index[i]]

    where ``j`` runs over every passage row (every query's positive and every
    hard negative, on all ranks after a gather) except those with
    ``mask[i, j] = True``. Returns the mean over queries.

    Args:
        temperature: divides the scores; 0.05 suits cosine similarity. Must be > 0.

    Inputs to ``forward``:
        q: ``[B, d]`` float; p: ``[P, d]`` float.
        pos_index: integer ``[B]``, row of ``p`` holding query ``i``'s positive.
        mask: optional bool ``[B, P]``, ``True`` drops ``p_j`` from query ``i``'s
            denominator (labelled positives, false negatives); never the positive.
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: Tensor, p: Tensor, pos_index: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_reps(q, p)
        pos_index = _check_pos_index(pos_index, q.shape[0], p.shape[0])
        _check_mask(mask, (q.shape[0], p.shape[0]), "mask")
        _check_positives_kept(mask, pos_index)
        q, p = _upcast(q, p)
        scores = q @ p.T / self.temperature
        if mask is not None:
            scores = scores.masked_fill(mask, float("-inf"))
        return F.cross_entropy(scores, pos_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class BidirectionalInfoNCE(nn.Module):
    """GTE's improved contrastive loss (Li et al. 2023, "Towards General Text
    Embeddings with Multi-stage Contrastive Learning"), with masks.

    Write ``s(a, b) = a . b / temperature`` and ``d_i = p[pos_index[i]]`` for
    query ``i``'s positive; ``d_j`` ranges over the ``B`` positives only. For
    query ``i``::

        loss_i = -log( exp(s(q_i, d_i)) / Z_i )
        Z_i = sum_{j in P}  exp(s(q_i, p_j))   [a] query -> every passage (includes the positive, once)
            + sum_{j != i}  exp(s(q_i, q_j))   [b] query -> other queries
            + sum_{j != i}  exp(s(q_j, d_i))   [c] other queries -> this positive
            + sum_{j != i}  exp(s(d_j, d_i))   [d] other positives -> this positive

    A term is left out of ``Z_i`` when:

    * [a] ``mask[i, j]`` (``p_j`` is not a negative for query ``i``);
    * [b] ``q_mask[i, j]`` (e.g. ``q_j`` duplicates ``q_i``);
    * [c] ``mask[j, pos_index[i]]`` (``d_i`` is a labelled positive, or a
      masked false negative, of ``q_j``: the mask used transposed), or
      ``pos_index[j] == pos_index[i]`` (``d_i`` is ``q_j``'s own positive);
    * [d] ``mask[i, pos_index[j]]`` (``d_j`` is a labelled positive of query
      ``i``, which with ``positive_mask`` includes an in-batch duplicate of
      ``d_i``), or ``pos_index[j] == pos_index[i]`` (the same row).

    With ``mask = positive_mask(...)`` no labelled positive ever serves as a
    negative in any of the four directions. Returns the mean over queries.

    Inputs to ``forward``: as :class:`InfoNCE`, plus ``q_mask``: optional bool
    ``[B, B]``, row ``i`` applies to query ``i`` (the diagonal is always left out).
    """

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(
        self,
        q: Tensor,
        p: Tensor,
        pos_index: Tensor,
        mask: Tensor | None = None,
        q_mask: Tensor | None = None,
    ) -> Tensor:
        _check_reps(q, p)
        b, n_p = q.shape[0], p.shape[0]
        pos_index = _check_pos_index(pos_index, b, n_p)
        _check_mask(mask, (b, n_p), "mask")
        _check_mask(q_mask, (b, b), "q_mask")
        _check_positives_kept(mask, pos_index)

        q, p = _upcast(q, p)
        d = p[pos_index]
        t = self.temperature
        qp = q @ p.T / t  # [a] (i, j) = s(q_i, p_j)
        qq = q @ q.T / t  # [b] (i, j) = s(q_i, q_j)
        dq = d @ q.T / t  # [c] (i, j) = s(q_j, d_i)
        dd = d @ d.T / t  # [d] (i, j) = s(d_j, d_i)

        same_pos = pos_index[:, None] == pos_index[None, :]  # includes the diagonal
        eye = torch.eye(b, dtype=torch.bool, device=q.device)
        drop_qq = eye if q_mask is None else eye | q_mask
        drop_dq = same_pos
        drop_dd = same_pos
        if mask is not None:
            m_pos = mask[:, pos_index]  # (j, i) = mask[j, pos_index[i]]
            qp = qp.masked_fill(mask, float("-inf"))
            drop_dq = drop_dq | m_pos.T
            drop_dd = drop_dd | m_pos
        logits = torch.cat([
            qp,
            qq.masked_fill(drop_qq, float("-inf")),
            dq.masked_fill(drop_dq, float("-inf")),
            dd.masked_fill(drop_dd, float("-inf")),
        ], dim=1)
        positive = qp.gather(1, pos_index[:, None]).squeeze(1)
        return (torch.logsumexp(logits, dim=1) - positive).mean()

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


# --------------------------------------------------------------------------- masks


def positive_mask(
    query_pos_doc_ids: Sequence[set[int]] | Sequence[np.ndarray],
    passage_doc_ids: Tensor,
    pos_index: Tensor,
) -> Tensor:
    """Mask every labelled positive of a query out of its negatives.

    ``query_pos_doc_ids[i]``: doc ids (corpus indices) labelled relevant for
    query ``i``. ``passage_doc_ids``: integer ``[P]``, the doc id of each
    passage row. Returns bool ``[B, P]``, ``True`` where ``p_j``'s doc is a
    labelled positive of query ``i`` (any of them, matched by doc id, so
    in-batch duplicates are caught wherever they sit: another query's positive
    or a hard negative) and ``j != pos_index[i]``. The doc in query ``i``'s
    positive row counts as one of its positives even if missing from
    ``query_pos_doc_ids[i]``. Suitable as ``mask`` for both losses.
    """
    if not isinstance(passage_doc_ids, Tensor) or passage_doc_ids.dim() != 1:
        raise ValueError("passage_doc_ids must be a 1-d integer tensor [P]")
    if passage_doc_ids.is_floating_point() or passage_doc_ids.dtype == torch.bool:
        raise ValueError(f"passage_doc_ids must be an integer tensor, got {passage_doc_ids.dtype}")
    b = len(query_pos_doc_ids)
    pos_index = _check_pos_index(pos_index, b, passage_doc_ids.shape[0])
    doc_ids = passage_doc_ids.long()
    device = doc_ids.device
    own = doc_ids[pos_index]  # the doc each query trains on
    mask = torch.zeros(b, doc_ids.shape[0], dtype=torch.bool, device=device)
    for i, positives in enumerate(query_pos_doc_ids):
        ids = np.fromiter(positives, dtype=np.int64) if isinstance(positives, (set, frozenset)) \
            else np.asarray(positives, dtype=np.int64).ravel()
        mask[i] = torch.isin(doc_ids, torch.as_tensor(ids, device=device)) | (doc_ids == own[i])
    mask[torch.arange(b, device=device), pos_index] = False
    return mask


@torch.no_grad()
def gist_mask(guide_q: Tensor, guide_p: Tensor, pos_index: Tensor, margin: float = 0.0) -> Tensor:
    """GISTEmbed's guided false-negative filter (Solatorio 2024).

    A frozen guide model scores the batch with cosine similarity ``s_g``; every
    candidate ``j != pos_index[i]`` that the guide rates above the positive,
    ``s_g(q_i, p_j) > s_g(q_i, p_pos) - margin``, is probably an unlabelled
    positive and is dropped. ``margin > 0`` drops more (near-ties too), ``< 0``
    fewer. Returns bool ``[B, P]``, never ``True`` at the positive.
    """
    _check_reps(guide_q, guide_p)
    pos_index = _check_pos_index(pos_index, guide_q.shape[0], guide_p.shape[0])
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise ValueError(f"margin must be a number, got {margin!r}") from None
    guide_q, guide_p = _upcast(guide_q, guide_p)
    sim = F.normalize(guide_q, dim=-1) @ F.normalize(guide_p, dim=-1).T
    threshold = sim.gather(1, pos_index[:, None]) - margin
    mask = sim > threshold
    mask[torch.arange(mask.shape[0], device=mask.device), pos_index] = False
    return mask
