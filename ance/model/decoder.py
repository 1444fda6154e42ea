"""Decoder (causal LM) towers as embedders: what their tokenizers need.

A causal tower's last token is the only one that has seen the whole text, so
``last`` pooling needs every text to end with the same token: EOS, appended by the
tokenizer itself (its post-processor), so that transformers and
sentence-transformers loading a saved checkpoint tokenize exactly as ance does.
Llama and Gemma tokenizers add BOS only, Qwen's nothing; :func:`prepare_tokenizer`
makes them add EOS, and picks a pad token where there is none (EOS: padded
positions are masked, so which id they hold does not matter).

A tower is causal when any of its attention modules says ``is_causal``
(transformers' decoders do; BERT-style encoders do not).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from ance.run.errors import ConfigError

log = logging.getLogger(__name__)


def is_causal(tower: nn.Module) -> bool:
    """True for a decoder tower (an attention module with ``is_causal = True``)."""
    return any(getattr(m, "is_causal", False) is True for m in tower.modules())


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Ids the tokenizer puts before and after a single text's content."""
    content = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for at in range(len(full) - len(content) + 1):
        if full[at:at + len(content)] == content:
            return full[:at], full[at + len(content):]
    raise ConfigError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens")


def prepare_tokenizer(tokenizer: Any, source: str) -> Any:
    """Make a decoder's tokenizer end every text with EOS and pad; ``source`` names the model in errors.

    Raises :class:`ConfigError` when the tokenizer has no EOS token (nothing to pool on)
    or is not a fast tokenizer (its post-processor cannot be changed).
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ConfigError(f"model {source}: a decoder whose tokenizer has no EOS token; set eos_token in its "
                          "tokenizer_config.json (e.g. \"</s>\" or \"<|endoftext|>\")")
    if getattr(tokenizer, "pad_token_id", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
        log.info("model %s: no pad token, padding with EOS %r", source, tokenizer.eos_token)
    before, after = special_frame(tokenizer)
    if after and after[-1] == eos:
        return tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"model {source}: {type(tokenizer).__name__} is not a fast tokenizer; ance appends EOS "
                          "through a fast tokenizer's post-processor (save the model with its tokenizer.json)")
    _append_eos(tokenizer, before, after + [eos])
    if special_frame(tokenizer)[1][-1:] != [eos]:
        raise ConfigError(f"model {source}: could not make {type(tokenizer).__name__} append EOS")
    return tokenizer


def _append_eos(tokenizer: Any, before: list[int], after: list[int]) -> None:
    """Set a template post-processor: ``before + text + after`` for one text."""
    from tokenizers import processors

    bos = getattr(tokenizer, "bos_token_id", None)
    if hasattr(tokenizer, "add_eos_token") and before in ([], [bos]) and after == [tokenizer.eos_token_id]:
        # transformers' own flags, so the saved tokenizer_config.json rebuilds the same post-processor
        try:
            object.__setattr__(tokenizer, "_add_bos_token", bool(before))
            tokenizer.add_eos_token = True
            if special_frame(tokenizer) == (before, after):
                return
        except (AttributeError, ValueError, TypeError):
            pass
    names = tokenizer.convert_ids_to_tokens(before + after)
    specials = sorted({(n, i) for n, i in zip(names, before + after)}, key=lambda x: x[1])
    single = " ".join([*names[:len(before)], "$A", *names[len(before):]])
    pair = " ".join([*names[:len(before)], "$A", *names[len(before):], "$B:1", *names[len(before):]])
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=specials)
