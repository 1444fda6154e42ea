"""Tokenize a corpus and encode it at once: the first encode of a corpus (``ance encode``, ``ance retrieve``,
``ance eval``'s encode) no longer waits for the whole token cache before the model starts.

:func:`tokenize_and_encode` builds the token cache (:func:`ance.model.encode.corpus_tokens`) on a thread and
encodes each batch of ``STREAM_BATCH`` texts as soon as it is tokenized, so the time is about the
tokenization's alone plus the last batch's encode, not their sum (the Rust tokenizer releases the GIL; the
model's kernels run while the next batch is tokenized). The cache ends up as the sequential path leaves it,
and the vectors are the same (the batches differ: each batch of texts is sorted by length on its own, so
vectors agree to the precision's rounding, tests/test_stream.py). Where the cache is already complete (or
linked from the shared cache) nothing is streamed and the corpus is encoded from the cache, as before; MaxP
documents always take that path.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ance.model.encode import corpus_tokens, encode_corpus, encode_token_lists
from ance.model.tokcache import FlatTokens, TokenCache

STREAM_BATCH = 1024  # texts a tokenizer call takes (the cache's own build takes 2,048): finer overlap
_DONE = object()


def tokenize_and_encode(model, corpus, *, lo: int = 0, hi: int | None = None, max_length: int,
                        long_doc: str = "firstp", n_windows: int = 4, cache_root: str | Path, batch_size: int,
                        device: str, precision: str = "auto", progress: bool = True, prefix: str = "",
                        shared_root: str | Path | None = None, on_device: bool = False,
                        stream: bool = True) -> tuple[TokenCache, Any, np.ndarray]:
    """``(cache, emb, owner)``: the corpus's token cache and :func:`ance.model.encode.encode_corpus`'s result
    for documents ``[lo, hi)``, the encode overlapping the tokenization where the cache is built now
    (``stream``; FirstP only)."""
    n = len(corpus)
    hi = n if hi is None else int(hi)
    kw = dict(max_length=max_length, long_doc=long_doc, n_windows=n_windows, cache_root=cache_root,
              progress=progress, prefix=prefix, shared_root=shared_root)
    enc = dict(batch_size=batch_size, device=device, precision=precision)

    def from_cache(cache: TokenCache) -> tuple[TokenCache, Any, np.ndarray]:
        return cache, *encode_corpus(model, cache, lo=lo, hi=hi, max_length=max_length, long_doc=long_doc,
                                     n_windows=n_windows, progress=progress, on_device=on_device, **enc)

    if not stream or long_doc != "firstp" or not 0 <= lo < hi <= n:
        return from_cache(corpus_tokens(corpus, model.tokenizer, **kw))

    batches: queue.Queue = queue.Queue()
    built: dict[str, Any] = {}

    def on_batch(start: int, flat: np.ndarray, offsets: np.ndarray) -> None:
        a, b = max(start, lo), min(start + len(offsets) - 1, hi)
        if a < b:  # the part of this batch inside [lo, hi)
            batches.put((a, FlatTokens(flat, offsets), a - start, b - start))

    def build() -> None:
        try:
            built["cache"] = corpus_tokens(corpus, model.tokenizer, **kw, batch_size=STREAM_BATCH, on_batch=on_batch)
        except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
            built["error"] = e
        finally:
            batches.put(_DONE)

    thread = threading.Thread(target=build, name="ance-tokenize", daemon=True)
    thread.start()
    emb, covered = None, 0  # written in place: a concatenation at the end would hold the corpus twice
    try:
        while (item := batches.get()) is not _DONE:
            start, tokens, i, j = item
            part = encode_token_lists(model, tokens, np.arange(i, j), model.tokenizer, max_length, kind="passage",
                                      progress=False, on_device=on_device, **enc)
            if emb is None:
                shape = (hi - lo, part.shape[1])
                emb = (torch.empty(shape, dtype=part.dtype, device=part.device) if isinstance(part, torch.Tensor)
                       else np.empty(shape, dtype=part.dtype))
            emb[start - lo:start - lo + len(part)] = part
            covered += j - i
    finally:
        thread.join()
    if "error" in built:
        raise built["error"]
    cache = built["cache"]
    if covered != hi - lo:  # found complete (or linked): nothing was streamed
        return from_cache(cache)
    return cache, emb, np.arange(lo, hi, dtype=np.int64)
