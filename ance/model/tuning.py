"""How a BiEncoder's towers train: full fine-tuning or LoRA, with or without gradient checkpointing.

:func:`for_training` is the trainer's one hook (``train.lora``, ``train.gradient_checkpointing``).

Gradient checkpointing recomputes each transformer layer's activations in the
backward pass instead of keeping them, for full fine-tuning and LoRA alike. It
composes with GradCache's RNG replay (:mod:`ance.learn.gradcache`): GradCache
restores the RNG state before a chunk's second forward, and torch's checkpoint
saves and restores it again around each layer's recomputation
(``preserve_rng_state``), so every dropout mask is the one the first forward drew
(tests/test_lora.py checks the gradients are equal). The non-reentrant checkpoint
is used: with LoRA the layer inputs do not require grad (the embeddings are
frozen), which the reentrant one would not backpropagate through.
"""

from __future__ import annotations

from ance.model import lora as lora_mod
from ance.run.errors import ConfigError


def for_training(model, train) -> None:
    """Apply ``train.lora`` (r > 0: adapters, only they train) and ``train.gradient_checkpointing``
    to ``model`` in place. A model loaded from a LoRA checkpoint (a resume) keeps its adapters."""
    lora = train.lora
    if lora.r > 0:
        lora_mod.apply(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    elif lora_mod.is_lora(model):
        raise ConfigError("this checkpoint holds LoRA adapters but train.lora.r=0; resume with its train.lora "
                          "settings, or merge it first (ance.model.lora.merge_adapter) to fine-tune it fully")
    if train.gradient_checkpointing:
        enable_gradient_checkpointing(model)


COMPILE_MODES = {"off": None, "on": "default", "max-autotune": "max-autotune-no-cudagraphs"}


def compile_towers(model, mode: str, device: str) -> bool:
    """``train.compile``: each tower of ``model`` through ``torch.compile`` in place (names and state_dict
    keys unchanged, so checkpoints save and resume as before), on a CUDA device only (a CPU compile costs
    more than its steps save). Shapes vary by batch, so torch compiles the first shapes it meets and then
    a dynamic graph: the first steps take seconds to minutes. True where compiled."""
    if mode not in COMPILE_MODES:
        raise ConfigError(f"train.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if COMPILE_MODES[mode] is None or not str(device).startswith("cuda"):
        return False
    for tower in model.towers():
        tower.compile(mode=COMPILE_MODES[mode])
    return True


def enable_gradient_checkpointing(model) -> None:
    """Turn on gradient checkpointing in every tower of ``model`` (a BiEncoder)."""
    for tower in model.towers():
        base = tower.get_base_model() if hasattr(tower, "get_base_model") else tower
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ConfigError(f"train.gradient_checkpointing: {type(base).__name__} does not support it; "
                              "set train.gradient_checkpointing=false")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False,
                                                                          "context_fn": _same_kernels})
        if hasattr(base.config, "use_cache"):
            base.config.use_cache = False


def _same_kernels():
    """Checkpoint contexts (first forward, recomputation): the recomputation in the backward pass runs
    outside the forward's ``attention_kernels`` block, and on a GPU torch would then pick another
    attention kernel (cuDNN's) whose saved tensors differ from the first forward's; found on an H200
    (benchmarks/bench_decoder.py: "Recomputed values ... have different metadata"). So it runs
    under the same kernel choice."""
    import contextlib

    import torch

    from ance.model.biencoder import attention_kernels  # here: biencoder imports this module

    return contextlib.nullcontext(), attention_kernels("cuda" if torch.cuda.is_available() else "cpu")
