"""Tiny randomly initialised decoders (Llama, Qwen3, Gemma 3 shapes) with tiny BPE tokenizers, built offline.

Each tokenizer is a byte-level BPE trained on a few lines with the family's special
tokens and habits: Llama adds BOS and has no pad token, Qwen3 adds nothing and pads
with <|endoftext|>, Gemma 3 adds <bos> and has <pad>. None appends EOS (ance must).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModel, PreTrainedTokenizerFast

_LINES = [
    "the quick brown fox jumps over the lazy dog", "dense retrieval with hard negatives",
    "a query and a passage", "query: what causes rain? passage: clouds release water",
    "Instruct: retrieve documents\nQuery: vitamin d and bone density", "scientific claims and evidence",
] * 4

FAMILIES = {
    #          bos,      eos,              pad,              adds bos
    "llama": ("<s>", "</s>", None, True),
    "qwen3": (None, "<|endoftext|>", "<|endoftext|>", False),
    "gemma3": ("<bos>", "<eos>", "<pad>", True),
}


def tiny_tokenizer(family: str, *, eos: bool = True) -> PreTrainedTokenizerFast:
    bos, eos_tok, pad, adds_bos = FAMILIES[family]
    specials = [t for t in ("<unk>", bos, eos_tok, pad) if t]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_LINES, trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B:1",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    kwargs = {"unk_token": "<unk>", "add_bos_token": adds_bos, "add_eos_token": False}
    if bos:
        kwargs["bos_token"] = bos
    if eos:
        kwargs["eos_token"] = eos_tok
    if pad:
        kwargs["pad_token"] = pad
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def tiny_config(family: str, vocab_size: int):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if family == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(**common)
    if family == "qwen3":
        from transformers import Qwen3Config
        return Qwen3Config(head_dim=8, **common)
    from transformers import Gemma3TextConfig
    return Gemma3TextConfig(head_dim=8, sliding_window=16, **common)


def tiny_decoder(family: str, out: str | Path, *, seed: int = 0, eos: bool = True,
                 prompts: dict | None = None) -> Path:
    """Save a tiny random ``family`` decoder + tokenizer (a plain HF dir) to ``out``; return it."""
    out = Path(out)
    tokenizer = tiny_tokenizer(family, eos=eos)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModel.from_config(tiny_config(family, len(tokenizer)))
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out
