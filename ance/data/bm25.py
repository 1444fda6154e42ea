"""BM25 rankings for warm-up negatives (the ANCE paper's BM25 warm-up), via bm25s.

Text goes through bm25s's own tokenizer (lower-cased words of two or more
characters, English stopwords removed, no stemming); scoring is bm25s's default
(Lucene BM25, k1=1.5, b=0.75).
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np


def _import_bm25s():
    """Import bm25s without letting it start JAX.

    Where JAX is installed, importing bm25s runs a top-k through JAX, which on a
    GPU machine initialises JAX's GPU backend, and JAX then reserves 75% of the
    GPU's memory for the rest of the process: a trainer with BM25 warm-up took
    105 GiB of an H200 and left the inferencers on that GPU out of memory. Only
    bm25s's numpy top-k is used here, so JAX is hidden while bm25s is imported
    (unless the process imported JAX itself before).
    """
    if "bm25s" in sys.modules:
        return sys.modules["bm25s"]
    hide = "jax" not in sys.modules
    if hide:
        sys.modules["jax"] = None  # type: ignore[assignment]  # `import jax` now raises ImportError
    try:
        import bm25s
    finally:
        if hide and sys.modules.get("jax", 0) is None:
            del sys.modules["jax"]
    return bm25s


def bm25_rank(
    corpus_texts: Sequence[str], query_texts: Sequence[str], depth: int, *, threads: int = 0
) -> np.ndarray:
    """Rank the corpus for each query with BM25.

    Returns int64 ``[n_queries, depth]`` corpus indices, best first. Only
    documents sharing at least one term with the query are ranked (the rest
    all score 0 and their order would be arbitrary), so rows are ``-1`` padded
    when fewer than ``depth`` documents match, and a query with no known term
    is all ``-1``. Equal scores are ordered by corpus index.
    ``threads``: 0 = in this thread, -1 = one per CPU core, n = n threads.
    """
    bm25s = _import_bm25s()

    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < -1:
        raise ValueError(f"threads must be 0 (this thread), -1 (all cores) or a positive count, got {threads!r}")
    if len(corpus_texts) == 0:
        raise ValueError("corpus_texts is empty: BM25 needs at least one document")
    depth = int(depth)
    out = np.full((len(query_texts), depth), -1, np.int64)
    if len(query_texts) == 0:
        return out

    corpus_tokens = bm25s.tokenize(list(corpus_texts), stopwords="en", show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(corpus_tokens, show_progress=False)
    # Queries: the same tokenizer, mapped onto the corpus vocabulary; terms the
    # corpus never uses cannot match and are dropped.
    vocab = retriever.vocab_dict
    query_tokens = bm25s.tokenize(list(query_texts), stopwords="en", return_ids=False, show_progress=False)
    query_ids = [[vocab[t] for t in toks if t in vocab and t != ""] for toks in query_tokens]
    rows = [i for i, ids in enumerate(query_ids) if ids]
    if not rows:
        return out

    k = min(depth, len(corpus_texts))
    docs, scores = retriever.retrieve(
        [query_ids[i] for i in rows], k=k, n_threads=threads, show_progress=False,
        backend_selection="numpy",
    )
    docs = np.asarray(docs, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    # deterministic order on ties, non-matching documents (score 0) dropped
    order = np.lexsort((docs, -scores), axis=-1)
    docs = np.take_along_axis(docs, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    out[rows, :k] = np.where(scores > 0, docs, -1)
    return out
