"""A model that only encodes: weights cast to half precision, towers optionally compiled, and each
new checkpoint's weights copied into the model already built (so a compiled model stays compiled).

Under autocast, fp32 weights are re-cast at every call and LayerNorm, softmax and the residual
stream run in fp32: about twice the memory traffic of a model held in bf16. An inferencer, or
``ance encode``, never trains, so it holds the model in the half precision it computes in
(docs/benchmarks.md, "Encoding at the hardware's limit"). Never for a model being trained.
"""

from __future__ import annotations

import torch
from torch import nn

from ance.run.device import autocast_dtype
from ance.run.errors import ConfigError

COMPILE_MODES = {"off": None, "on": "default", "max-autotune": "max-autotune-no-cudagraphs"}
#: the towers' forward (``ance.model.leanbert``): transformers', or the lean one with exact / epilogue GELU
KERNELS = {"hf": None, "lean": "exact", "lean-tanh": "epilogue"}


def half_weights(model: nn.Module) -> bool:
    """Whether ``model``'s floating-point weights are bf16 / fp16."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype in (torch.bfloat16, torch.float16)
    return False


def for_inference(model, device: str, precision: str = "auto", compile: str = "off", kernels: str = "hf"):
    """``model`` (a :class:`~ance.model.biencoder.BiEncoder`) on ``device`` in eval mode, its weights
    cast in place to the half precision ``precision`` names on CUDA (bf16 for ``auto``), each tower
    compiled in place with ``torch.compile`` when ``compile`` is ``on`` / ``max-autotune`` (CUDA only:
    a CPU compile costs more than it saves on the batches a CPU encodes), each BERT-family tower given
    the lean forward of ``ance.model.leanbert`` where ``kernels`` names one (``lean`` / ``lean-tanh``;
    other towers keep theirs). The vectors differ from autocast's by bf16 rounding
    (tests/test_encode_fast.py, tests/test_leanbert.py)."""
    if compile not in COMPILE_MODES:
        raise ConfigError(f"inferencer.compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    if kernels not in KERNELS:
        raise ConfigError(f"inferencer.kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    cuda = str(device).startswith("cuda")
    dtype = autocast_dtype(str(device), precision) if cuda else None
    model = model.to(device=device, dtype=dtype).eval()  # dtype None: moved only
    if KERNELS[kernels]:
        from ance.model import leanbert

        for tower in model.towers():
            leanbert.install(tower, KERNELS[kernels])
    if cuda and COMPILE_MODES[compile]:
        for tower in model.towers():
            tower.compile(mode=COMPILE_MODES[compile])  # in place: names and state_dict keys unchanged
    return model


_BOOKKEEPING = frozenset({"dtype", "torch_dtype", "transformers_version", "architectures", "name_or_path"})


def _shape(tower) -> dict:
    """What fixes a tower's computation: its class, configuration (not bookkeeping) and weight shapes."""
    config = {k: v for k, v in tower.config.to_dict().items() if not k.startswith("_") and k not in _BOOKKEEPING}
    return {"class": type(tower).__name__, "config": config,
            "weights": {k: tuple(v.shape) for k, v in tower.state_dict().items()}}


def same_architecture(a, b) -> bool:
    """Whether two BiEncoders' towers compute alike but for their weights (so weights copy across)."""
    ta, tb = a.towers(), b.towers()
    return len(ta) == len(tb) and all(_shape(x) == _shape(y) for x, y in zip(ta, tb))


def copy_weights(dst, src) -> None:
    """Copy ``src``'s tower weights into ``dst``'s (same architecture), in ``dst``'s dtype and device,
    and its settings (pooling, normalisation, prompts); ``dst`` keeps its compiled towers."""
    with torch.no_grad():
        for to, frm in zip(dst.towers(), src.towers()):
            state = frm.state_dict()
            missing, unexpected = to.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ConfigError(f"checkpoint weights do not fit the loaded model (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
    for key in ("tokenizer", "pooling", "normalize", "similarity", "temperature", "max_seq_length", "prompts"):
        setattr(dst, key, getattr(src, key))
