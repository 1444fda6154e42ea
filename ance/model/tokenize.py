"""Token ids of many texts at once: the tokenizer's own ``__call__``, or, for a fast tokenizer, its Rust
tokenizer's batch call without character offsets (the same ids, less time), used for the corpus
(:mod:`ance.model.tokcache`) and the queries (:func:`ance.model.encode.query_tokens`).
"""

from __future__ import annotations

from typing import Any, Sequence

# False: always through the tokenizer's __call__ (benchmarks/bench_encode_paths.py compares the two paths)
FAST_TOKENIZE = True
FAST_MIN_TEXTS = 256  # fewer: not worth copying the Rust tokenizer (20 ms for BERT's, more for large vocabularies)


def fast_backend(tokenizer: Any, max_tokens: int) -> Any | None:
    """A copy of a fast tokenizer's Rust tokenizer set to cut at ``max_tokens`` as ``tokenizer(...,
    truncation=True, max_length=max_tokens)`` does, for :func:`token_ids`; None where there is none (a
    slow tokenizer, or an older ``tokenizers`` without ``encode_batch_fast``)."""
    import copy

    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None) if isinstance(tokenizer, PreTrainedTokenizerFast) else None
    if not FAST_TOKENIZE or backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    backend = copy.deepcopy(backend)  # the tokenizer's own keeps whatever padding/truncation it had
    backend.no_padding()
    backend.enable_truncation(max_tokens, stride=0, strategy="longest_first",
                              direction=getattr(tokenizer, "truncation_side", "right"))
    if hasattr(backend, "encode_special_tokens"):
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend


def token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int, backend: Any = None) -> list[list[int]]:
    """Content ids of ``texts``, each cut to ``max_tokens``, no special tokens: exactly
    ``tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]``,
    through ``backend`` (:func:`fast_backend`) where given: the Rust tokenizer's batch call without
    character offsets, about 30% less time on SciFact's abstracts."""
    if backend is not None:
        return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
