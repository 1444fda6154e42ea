"""Pooling: a tower's token states ``[n, L, d]`` to one vector per text ``[n, d]``.

Three ways, each a pure function of the hidden states and the padding mask, so
left and right padding give the same vectors:

* ``cls``: the first non-pad token (BERT's [CLS]).
* ``mean``: the average over the non-pad tokens.
* ``last``: the final non-pad token (decoder embedders: RepLLaMA, Qwen3-Embedding,
  e5-mistral; sentence-transformers' ``lasttoken``). With a causal tower that
  token is the only one that has seen the whole text; the tokenizer is set to end
  every text with EOS (:mod:`ance.model.decoder`).

Padded positions are zeroed before pooling: a left-padded causal tower gives NaN
(a row that attends to nothing) at pad positions under some attention kernels,
and ``NaN * 0`` is NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

POOLINGS = ("cls", "mean", "last")


def first_positions(attention_mask: Tensor) -> Tensor:
    """Index of each row's first non-pad token ``[n]`` (0 for right padding)."""
    mask = attention_mask.bool()
    return mask.int().argmax(dim=1)


def last_positions(attention_mask: Tensor) -> Tensor:
    """Index of each row's final non-pad token ``[n]`` (the last column for left padding)."""
    length = attention_mask.shape[1]
    cols = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), cols, torch.full_like(cols, -1)).amax(dim=1).clamp(min=0)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Positions counted over the non-pad tokens only: 0 at each row's first token, whatever the padding side.

    Given to causal towers, so a left-padded text gets the positions it would have alone
    (transformers' decoders otherwise number the columns, pads included)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: str, *, full: bool = False) -> Tensor:
    """Pooled float32 ``[n, d]`` of ``hidden [n, L, d]`` over the ``attention_mask [n, L]`` (1 = token).

    ``hidden`` in any float dtype: a bf16 tower's states are summed with float32 accumulation, never
    copied to float32 whole (for a batch of 1,024 x 128 tokens of width 384 that copy, and zeroing it, were
    four passes over 200 MB). ``full``: every position is a token (a batch without padding, the encoder's
    ``dense``): no mask is applied, and ``attention_mask`` may be None."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if full:
        if pooling == "cls":
            return hidden[:, 0].float()
        if pooling == "last":
            return hidden[:, -1].float()
        return hidden.sum(dim=1, dtype=torch.float32) / hidden.shape[1]
    mask = attention_mask.unsqueeze(-1).bool()
    hidden = torch.where(mask, hidden, torch.zeros((), dtype=hidden.dtype, device=hidden.device))
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "cls":
        return hidden[rows, first_positions(attention_mask)].float()
    if pooling == "last":
        return hidden[rows, last_positions(attention_mask)].float()
    return hidden.sum(dim=1, dtype=torch.float32) / mask.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
