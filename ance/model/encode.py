"""Encoding: token ids in, float32 vectors out; corpus shards on disk as float16.

Batches are formed by descending length (:func:`length_sorted_batches`), so a
batch pads to nearly its own length and the longest (the memory peak) comes
first; results go back to the caller's order. On CUDA, inputs travel from
pinned memory with ``non_blocking`` copies and results come back through two
pinned buffers, so the CPU builds batch ``i + 1`` while the GPU runs batch
``i``.

An embeddings dir (``ance encode``, read by ``ance search``)::

    emb.f16      float16 [n, d], row-major, raw (np.memmap)
    owner.int64  [n] corpus index of each row's document
    ids.txt      [n] doc id of each row, one a line
    meta.json    n, dim, model, lengths, shard, corpus hash ...; written last,
                 so a dir without it is incomplete
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ance.run.device import autocast
from ance.run.errors import AnceError, ConfigError
from ance.run.fsio import fsync_dir
from ance.model import prompts as prompting
from ance.model import tokenize as tokenizing
from ance.model.inference import half_weights
from ance.model.tokcache import FlatTokens, TokenCache, build_padded_inputs, windows
from ance.model.transfer import Results, prefetched, to_device

log = logging.getLogger(__name__)

LONG_DOC = ("firstp", "maxp")
EMB_FILE, OWNER_FILE, IDS_FILE, META_FILE = "emb.f16", "owner.int64", "ids.txt", "meta.json"
# Documents windowed at a time in MaxP, so the windows of a huge corpus are never all in memory.
_MAXP_BLOCK = 16384
#: a batch without padding goes to the towers without a mask (False: always with one, as before;
#: benchmarks/bench_encode_paths.py compares the two)
DROP_FULL_MASKS = True
# Token ids read from a memory-mapped cache between two releases of its pages (TokenCache.release).
_RELEASE_EVERY = 32 << 20


# --------------------------------------------------------------------------- small pieces


def n_special_tokens(tokenizer: Any) -> int:
    """Special tokens the tokenizer adds around one sequence (2 for BERT's [CLS] ... [SEP])."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    return int(count(pair=False)) if count is not None else 2


def corpus_max_tokens(tokenizer: Any, max_length: int, long_doc: str = "firstp", n_windows: int = 1) -> int:
    """Content tokens per document a token cache must keep for this encoding.

    FirstP needs ``max_length - specials``; MaxP ``n_windows`` times that.
    """
    if long_doc not in LONG_DOC:
        raise ConfigError(f"long_doc must be one of {', '.join(LONG_DOC)}, got {long_doc!r}")
    room = int(max_length) - n_special_tokens(tokenizer)
    if room < 1:
        raise ConfigError(f"max_length={max_length} leaves no room for text beside the special tokens")
    return room * (int(n_windows) if long_doc == "maxp" else 1)


def prefixed_hash(source_hash: str, prefix: str) -> str:
    """The token cache's source hash for a corpus read with ``prefix`` before every passage."""
    if not prefix:
        return str(source_hash)
    import hashlib

    return f"{source_hash}+prompt-{hashlib.sha256(prefix.encode()).hexdigest()[:12]}"


def shared_token_root(cfg) -> Path | None:
    """Where runs share tokenized corpora (``data.shared_token_cache``): the user's cache dir, or None."""
    from ance.run.fsio import default_cache_dir

    return default_cache_dir() if cfg.data.shared_token_cache else None


def corpus_tokens(corpus, tokenizer: Any, *, max_length: int, long_doc: str = "firstp", n_windows: int = 1,
                  cache_root: str | Path, progress: bool = True, prefix: str = "",
                  shared_root: str | Path | None = None, batch_size: int = 2048, on_batch=None) -> TokenCache:
    """The corpus's token cache for this encoding, built on first use: the one token budget
    (:func:`corpus_max_tokens`) of every role, so trainer, inferencers and ``ance encode`` of one
    run share one cache.

    ``prefix`` (the model's passage prompt, :mod:`ance.model.prompts`) is tokenized with each
    passage, its tokens counted in the budget; it is part of the cache's key. With MaxP only the
    first window starts with it.
    """
    max_tokens = corpus_max_tokens(tokenizer, max_length, long_doc, n_windows)
    prompting.check_fits(tokenizer, prefix, max_tokens if long_doc == "firstp" else max_tokens // int(n_windows),
                         "model.passage_prefix", "model.passage_max_length")
    return TokenCache.open(prompting.apply(prefix, corpus.passages()), tokenizer, max_tokens, cache_root,
                           prefixed_hash(corpus.source_hash, prefix), batch_size=batch_size, progress=progress,
                           shared_root=shared_root, on_batch=on_batch)


def query_tokens(texts: Sequence[str], tokenizer: Any, max_length: int, prefix: str = "", *,
                 key: str = "model.query_prefix", length_key: str = "model.query_max_length") -> list[list[int]]:
    """Content token ids of queries (``prefix`` before each, the model's query prompt), cut to leave room
    for the special tokens of ``max_length``."""
    room = int(max_length) - n_special_tokens(tokenizer)
    prompting.check_fits(tokenizer, prefix, room, key, length_key)
    texts = list(prompting.apply(prefix, texts))
    backend = tokenizing.fast_backend(tokenizer, max(room, 1)) if len(texts) >= tokenizing.FAST_MIN_TEXTS else None
    return tokenizing.token_ids(tokenizer, texts, max(room, 1), backend)


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Positions ``0..len(lengths)-1`` in batches of ``batch_size``, longest first (stable on ties)."""
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    lengths = np.asarray(lengths)
    # numpy's stable sort of 16-bit integers is a radix sort: 0.10 s against 0.62 s for 8.8M lengths
    key = -lengths.astype(np.int16) if lengths.size and int(lengths.max()) < 32768 else -lengths.astype(np.int64)
    order = np.argsort(key, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), int(batch_size))]


def shard_range(n: int, i: int, n_shards: int) -> tuple[int, int]:
    """Shard ``i`` of ``n_shards`` contiguous ranges over ``[0, n)``, sizes differing by at most one."""
    if n_shards < 1 or not 0 <= i < n_shards:
        raise ConfigError(f"shard {i} of {n_shards}: need 0 <= i < n_shards")
    return n * i // n_shards, n * (i + 1) // n_shards


def parse_shard(s: str) -> tuple[int, int]:
    """``"i/n"`` (0-based) -> ``(i, n)``."""
    try:
        i, n = (int(x) for x in str(s).split("/"))
    except ValueError:
        raise ConfigError(f"shard {s!r} must read i/n, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {s!r}: i must satisfy 0 <= i < n (shards count from 0)")
    return i, n


# --------------------------------------------------------------------------- encoding


def _token_table(source: Any, indices: np.ndarray) -> tuple[Any, np.ndarray]:
    """(table with ``.lengths`` and ``.padded(idx, room)``, indices into it) for a TokenCache,
    a :class:`~ance.model.tokcache.FlatTokens`, a callable ``fn(indices) -> token lists`` or a sequence."""
    if hasattr(source, "padded"):
        return source, indices
    if callable(source):  # fetch everything once
        return FlatTokens.from_lists(source(indices)), np.arange(len(indices))
    return FlatTokens.from_lists(source), indices


def encode_token_lists(model, token_lists_fn_or_cache, indices, tokenizer, max_length: int, *, kind: str,
                       batch_size: int, device: str, precision: str = "auto", progress: bool = True,
                       desc: str = "encode", on_device: bool = False):
    """Encode the token lists ``indices`` of a source: ``[len(indices), d]`` in ``indices`` order,
    float32 numpy on the CPU, float16 on CUDA (numpy, or a tensor on ``device`` with ``on_device``).

    ``token_lists_fn_or_cache``: a ``TokenCache`` or ``FlatTokens`` (``.lengths``,
    ``.padded``), a sequence of token-id lists, or a callable ``fn(indices) ->
    token lists`` (then every list is fetched once up front). Content ids only;
    :func:`ance.model.tokcache.build_padded_inputs` adds the special tokens and cuts
    to ``max_length``, vectorised, on a thread one batch ahead of the model
    (:func:`ance.model.transfer.prefetched`). Runs under ``torch.inference_mode`` and autocast
    (:func:`ance.run.device.autocast`), or in the model's own dtype when :func:`ance.model.inference.for_inference`
    cast it to bf16 / fp16; a batch without padding goes to the towers without a mask (flash
    attention). The model is moved to ``device`` and put in eval mode for the call (its
    training mode is restored after).
    """
    indices = np.asarray(indices, dtype=np.int64).ravel()
    table, indices = _token_table(token_lists_fn_or_cache, indices)
    room = max(int(max_length) - n_special_tokens(tokenizer), 0)
    lengths = np.minimum(np.asarray(table.lengths)[indices], room)
    batches = length_sorted_batches(lengths, batch_size)

    device = str(device)
    cuda = device.startswith("cuda")
    amp = autocast(device, precision)  # checks precision before any work
    if half_weights(model):  # cast by ance.model.inference.for_inference: autocast would redo LayerNorm etc. in fp32
        amp = contextlib.nullcontext()

    release, read = getattr(table, "release", None), [0]

    def make(pos: np.ndarray) -> tuple[dict[str, torch.Tensor], bool]:
        content, cut = table.padded(indices[pos], room)
        read[0] += content.size
        if release is not None and read[0] >= _RELEASE_EVERY:  # a memory-mapped cache: drop what was read
            release()
            read[0] = 0
        inputs = build_padded_inputs(content, cut, tokenizer, max_length)
        dense = DROP_FULL_MASKS and bool(len(cut)) and int(cut.min()) == int(cut.max())  # no padding: no mask
        if not cuda:
            return inputs, dense
        # what only the ids determine is made on the GPU (transfer.to_device): the token types (zeros) and a full
        # batch's mask (ones) never cross, a third of the bytes a batch sends
        return {k: None if k == "token_type_ids" or (k == "attention_mask" and dense) else v.pin_memory()
                for k, v in inputs.items()}, dense

    was_training = model.training
    model.to(device).eval()
    order = np.concatenate(batches) if on_device and batches else None  # the order prefetched yields them
    results = Results(len(indices), model.dim, int(batch_size), device, on_device, order)
    try:
        with torch.inference_mode(), amp:
            for pos, (inputs, dense) in tqdm(prefetched(make, batches), total=len(batches), desc=desc,
                                             unit="batch", disable=not progress):
                if cuda:
                    inputs = to_device(inputs, device)
                reps = model(**inputs, kind=kind, dense=dense)
                results.put(reps, pos)
            results.flush()
    finally:
        model.train(was_training)
    return results.out


def encode_texts(model, texts: Sequence[str], max_length: int, *, kind: str, batch_size: int, device: str,
                 precision: str = "auto", progress: bool = False) -> np.ndarray:
    """Tokenize ``texts`` now (queries), with the model's ``kind`` prompt before each, and encode them;
    float32 ``[len(texts), d]``."""
    tokenizer = model.tokenizer
    room = int(max_length) - n_special_tokens(tokenizer)
    if room < 1:
        raise ConfigError(f"max_length={max_length} leaves no room for text beside the special tokens")
    if len(texts) == 0:
        return np.zeros((0, model.dim), dtype=np.float32)
    tokens = query_tokens(texts, tokenizer, max_length, prefix=model.prompt(kind), key=f"the {kind} prompt",
                          length_key="the max length")
    return encode_token_lists(model, tokens, np.arange(len(tokens)), tokenizer, max_length, kind=kind,
                              batch_size=batch_size, device=device, precision=precision, progress=progress,
                              desc=f"encode {kind}")


def encode_corpus(model, cache, *, lo: int = 0, hi: int | None = None, max_length: int, long_doc: str = "firstp",
                  n_windows: int = 4, batch_size: int, device: str, precision: str = "auto",
                  progress: bool = True, on_device: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encode the documents ``[lo, hi)`` of a ``TokenCache`` as passages.

    Returns ``(emb [n_vec, d], owner int64 [n_vec])`` (``emb`` as :func:`encode_token_lists`
    returns it; ``on_device`` applies to FirstP) where ``owner`` is
    each vector's global corpus index. FirstP: one vector per document, its
    first ``max_length`` tokens. MaxP: up to ``n_windows`` consecutive windows
    per document (see :func:`ance.model.tokcache.windows`), the document's vectors
    adjacent, in corpus order; the cache must hold enough tokens
    (:func:`corpus_max_tokens`).
    """
    hi = len(cache) if hi is None else int(hi)
    if not 0 <= lo <= hi <= len(cache):
        raise ConfigError(f"document range [{lo}, {hi}) is outside the corpus of {len(cache)}")
    if long_doc not in LONG_DOC:
        raise ConfigError(f"long_doc must be one of {', '.join(LONG_DOC)}, got {long_doc!r}")
    tokenizer = model.tokenizer
    kw = dict(kind="passage", batch_size=batch_size, device=device, precision=precision)
    if long_doc == "firstp":
        emb = encode_token_lists(model, cache, np.arange(lo, hi), tokenizer, max_length, progress=progress,
                                 desc="encode corpus", on_device=on_device, **kw)
        return emb, np.arange(lo, hi, dtype=np.int64)

    n_special = n_special_tokens(tokenizer)
    need = corpus_max_tokens(tokenizer, max_length, "maxp", n_windows)
    if getattr(cache, "max_tokens", need) < need:
        log.warning("the token cache keeps %d tokens per document; MaxP with %d windows of %d needs %d, "
                    "so later windows are missing", cache.max_tokens, n_windows, max_length, need)
    embs, owners = [np.zeros((0, model.dim), np.float32)], [np.zeros(0, np.int64)]
    for start in tqdm(range(lo, hi, _MAXP_BLOCK), desc="encode corpus (maxp blocks)", disable=not progress):
        docs = np.arange(start, min(start + _MAXP_BLOCK, hi))
        wins, owner = [], []
        for d, tokens in zip(docs.tolist(), cache.take(docs)):
            w = windows(tokens, max_length, n_windows, n_special)
            wins.extend(w)
            owner.extend([d] * len(w))
        embs.append(encode_token_lists(model, wins, np.arange(len(wins)), tokenizer, max_length,
                                       progress=False, **kw))
        owners.append(np.asarray(owner, dtype=np.int64))
    return np.concatenate(embs), np.concatenate(owners)


# --------------------------------------------------------------------------- embeddings on disk


def write_embeddings(out_dir: str | Path, emb: np.ndarray, owner: np.ndarray, doc_ids: Sequence[str],
                     meta: dict) -> None:
    """Write an embeddings dir (module docstring); ``doc_ids[j]`` is row j's document id.

    ``meta.json`` (``meta`` plus n, dim, dtype) is removed first and written
    last, atomically, so an interrupted write leaves a dir readers refuse.
    """
    out = Path(out_dir)
    emb = np.asarray(emb) if not isinstance(emb, np.memmap) else emb
    owner = np.asarray(owner, dtype=np.int64).ravel()
    if emb.ndim != 2 or len(owner) != len(emb) or len(doc_ids) != len(emb):
        raise ValueError(f"emb {emb.shape}, owner ({len(owner)}) and doc_ids ({len(doc_ids)}) "
                         "must have one entry per row")
    bad = [d for d in doc_ids[:1000] if not d or "\n" in d]
    if bad:
        raise ValueError(f"doc id {bad[0]!r} cannot be written one a line")
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    with open(out / EMB_FILE, "wb") as f:
        for a in range(0, len(emb), 65536):
            f.write(np.ascontiguousarray(emb[a:a + 65536], dtype=np.float16).tobytes())
        f.flush()
        os.fsync(f.fileno())
    with open(out / OWNER_FILE, "wb") as f:
        f.write(owner.tobytes())
        f.flush()
        os.fsync(f.fileno())
    with open(out / IDS_FILE, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(f"{d}\n" for d in doc_ids)
        f.flush()
        os.fsync(f.fileno())
    info = {**meta, "n": int(len(emb)), "dim": int(emb.shape[1]), "dtype": "float16"}
    fd, tmp = tempfile.mkstemp(prefix=".meta.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out / META_FILE)
    fsync_dir(out)


def read_embeddings(out_dir: str | Path) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
    """``(emb float16 memmap [n, d], owner int64 [n], doc_ids [n], meta)`` of an embeddings dir."""
    out = Path(out_dir)
    meta_path = out / META_FILE
    if not meta_path.is_file():
        what = "incomplete (no meta.json: interrupted `ance encode`?)" if (out / EMB_FILE).exists() else \
            "not an embeddings dir (written by `ance encode`)"
        raise AnceError(f"{out}: {what}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        n, dim = int(meta["n"]), int(meta["dim"])
    except (ValueError, KeyError, TypeError) as exc:
        raise AnceError(f"{meta_path}: unreadable ({exc}); re-run `ance encode`") from None
    size = (out / EMB_FILE).stat().st_size if (out / EMB_FILE).exists() else -1
    if size != n * dim * 2:
        raise AnceError(f"{out / EMB_FILE}: {size} bytes, meta.json says {n} x {dim} float16; re-run `ance encode`")
    emb = (np.memmap(out / EMB_FILE, dtype=np.float16, mode="r", shape=(n, dim)) if n
           else np.zeros((0, dim), dtype=np.float16))
    owner = np.fromfile(out / OWNER_FILE, dtype=np.int64)
    doc_ids = (out / IDS_FILE).read_text(encoding="utf-8").splitlines()
    if len(owner) != n or len(doc_ids) != n:
        raise AnceError(f"{out}: owner.int64 ({len(owner)}) or ids.txt ({len(doc_ids)}) disagree with "
                        f"meta.json ({n} rows); re-run `ance encode`")
    return emb, owner, doc_ids, meta
