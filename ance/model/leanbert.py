"""A lean forward for BERT-family encoders that only encode (issue 26): the same weights and the same
representations as transformers' ``BertModel`` forward, in fewer and larger kernels.

Per layer it runs one GEMM for the query, key and value projections (their weights concatenated, a
copy of 3 d² numbers a call, nothing stored), attention through ``scaled_dot_product_attention`` on
strided views of that one output (no per-head copies), and, with ``gelu="epilogue"``, the feed-forward
GEMM with its bias and GELU in cuBLASLt's epilogue (``torch._addmm_activation``), so the 4·d-wide
intermediate is written once instead of three times. That GELU is the tanh approximation: for a model
trained with exact GELU (``hidden_act="gelu"``, MiniLM, BERT) it changes the vectors by about bf16's
rounding, so it is a choice (``inferencer.kernels: lean-tanh``), not the default.

The forward is installed on the tower itself (:func:`install`), reading the tower's own parameters:
its class, ``state_dict`` and ``load_state_dict`` are unchanged, so a checkpoint's weights copy in as
before (``ance.model.inference.copy_weights``) and ``torch.compile`` of the tower compiles this forward.
Only absolute-position BERT-shaped towers without cross-attention, LoRA wrappers or gradient checkpointing
qualify (:func:`supports`); any other tower keeps transformers' forward.

It trains too (``train.kernels: lean``): in train mode it applies dropout where transformers' BERT does
(attention probabilities through SDPA's ``dropout_p``, each sub-layer's output before its residual add).
Its Python is a fraction of transformers' (no output classes, mask preparation, or attention-interface
dispatch per layer): on a host-bound small model's training step that is the time that counts.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: forward variants: exact GELU as its own kernel, or bias + tanh-GELU in the GEMM's epilogue
GELU_MODES = ("exact", "epilogue")
_EXACT_ACTS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_python": "none"}


def supports(tower) -> bool:
    """Whether ``tower`` is a BERT-shaped encoder whose computation :func:`lean_forward` reproduces."""
    config = getattr(tower, "config", None)
    return (config is not None and getattr(config, "model_type", None) == "bert"
            and getattr(config, "position_embedding_type", "absolute") == "absolute"
            and not getattr(config, "is_decoder", False) and not getattr(config, "add_cross_attention", False)
            and getattr(config, "hidden_act", None) in _EXACT_ACTS
            and hasattr(tower, "embeddings") and hasattr(tower, "encoder")
            and not _checkpointing(tower)
            and all(type(m) is nn.Linear for layer in tower.encoder.layer for m in _linears(layer)))


def _checkpointing(tower) -> bool:
    """Whether gradient (activation) checkpointing is on: transformers 5 marks the layers and the model,
    4.x the encoder."""
    if getattr(tower, "is_activation_checkpointing", False) or getattr(tower.encoder, "gradient_checkpointing", False):
        return True
    return any(getattr(layer, "gradient_checkpointing", False) for layer in tower.encoder.layer)


def _linears(layer) -> tuple:
    """A layer's projections; a LoRA (or any other) wrapper around one disqualifies the tower, whose
    forward would then read only the wrapped weight."""
    att = layer.attention.self
    return (att.query, att.key, att.value, layer.attention.output.dense, layer.intermediate.dense,
            layer.output.dense)


def install(tower, gelu: str = "exact") -> bool:
    """Give ``tower`` the lean forward (in place); False, and nothing changed, where it does not qualify."""
    if gelu not in GELU_MODES:
        raise ValueError(f"gelu must be one of {GELU_MODES}, got {gelu!r}")
    if not supports(tower):
        return False
    tower.forward = types.MethodType(lambda self, *a, **kw: lean_forward(self, *a, gelu=gelu, **kw), tower)
    return True


class _Output:
    """What the towers' callers read: ``last_hidden_state`` (as transformers' output has it)."""

    __slots__ = ("last_hidden_state",)

    def __init__(self, hidden: Tensor):
        self.last_hidden_state = hidden

    def __getitem__(self, i: int) -> Tensor:
        if i != 0:
            raise IndexError(i)
        return self.last_hidden_state


def attention_bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """The padding mask as SDPA takes it: ``None`` (attend everywhere), a boolean ``[n, 1, 1, L]``
    (True = attend) from a 2-D 0/1 mask or a prepared 4-D boolean one, or a float additive mask as is."""
    if mask is None:
        return None
    if mask.dim() == 2:
        return mask[:, None, None, :].bool()
    if mask.dtype == torch.bool:
        return mask
    return mask.to(dtype)


def lean_forward(tower, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                 token_type_ids: Tensor | None = None, position_ids: Tensor | None = None, *,
                 gelu: str = "exact", return_dict: bool = True, **_unused) -> _Output:
    """``BertModel.forward`` for encoding: the last hidden state ``[n, L, d]`` (no pooler)."""
    config = tower.config
    x = tower.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids)
    n, length, d = x.shape
    heads = config.num_attention_heads
    mask = attention_bias(attention_mask, x.dtype)
    approximate = _EXACT_ACTS[config.hidden_act]
    train = tower.training  # dropout where transformers' BERT has it (the embeddings apply their own)
    p_attn = config.attention_probs_dropout_prob if train else 0.0
    p_hidden = config.hidden_dropout_prob if train else 0.0
    for layer in tower.encoder.layer:
        att, out_att = layer.attention.self, layer.attention.output
        w = torch.cat((att.query.weight, att.key.weight, att.value.weight))
        b = torch.cat((att.query.bias, att.key.bias, att.value.bias))
        qkv = F.linear(x, w, b).view(n, length, 3, heads, d // heads)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # [n, heads, L, d/heads], strided
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_attn)
        ctx = ctx.transpose(1, 2).reshape(n, length, d)
        ln = out_att.LayerNorm
        h = F.dropout(F.linear(ctx, out_att.dense.weight, out_att.dense.bias), p_hidden, train)
        x = F.layer_norm(h + x, (d,), ln.weight, ln.bias, ln.eps)
        inter, out = layer.intermediate.dense, layer.output
        flat = x.reshape(n * length, d)
        if gelu == "epilogue":
            h = torch._addmm_activation(inter.bias, flat, inter.weight.t(), use_gelu=True)
        else:
            h = F.gelu(F.linear(flat, inter.weight, inter.bias), approximate=approximate)
        ln = out.LayerNorm
        h = F.dropout(F.linear(h, out.dense.weight, out.dense.bias), p_hidden, train)
        x = F.layer_norm(h.view(n, length, d) + x, (d,), ln.weight, ln.bias, ln.eps)
    return _Output(x)
