"""Tokenized corpus on disk: token ids computed once, memory-mapped after.

The cache holds *content* token ids only (no special tokens), each text
truncated to ``max_tokens``, so FirstP (``max_tokens = max_length - 2``) and
MaxP (``max_tokens = windows * (max_length - 2)``) read the same kind of cache;
:func:`build_inputs` and :func:`windows` turn the ids into model inputs.

A cache is a directory ``<cache_root>/tokens-<key>/``::

    ids.int32      every text's ids, concatenated
    offsets.int64  n + 1 offsets: text i is ids[offsets[i]:offsets[i + 1]]
    meta.json      written last; a directory without it is incomplete

It is built in a temporary directory beside it and renamed into place, so a
reader never sees half a cache. Processes that race to build the same key each
build, and the first rename wins; the others use the winner's.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import mmap
import operator
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ance.run.cachedirs import build_lock as _build_lock, building_dir, install as _install, publish as _publish
from ance.model.decoder import special_frame
from ance.model.tokenize import FAST_MIN_TEXTS, fast_backend, token_ids
from ance.run.errors import ConfigError, DataError
from ance.run.fsio import fsync_dir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
OnBatch = Callable[[int, np.ndarray, np.ndarray], None]  # TokenCache.open's on_batch(lo, flat, offsets)


_last_vocab: tuple[dict | None, str] = (None, "")


def _vocab_sha256(vocab: dict) -> str:
    """sha256 of the tokenizer's vocabulary; the last one is remembered.

    Serialising a 30k-entry vocabulary takes ~0.1 s, and an inferencer asks for
    the key of every checkpoint's (identical) tokenizer at every refresh;
    comparing the dict with the last one costs about a millisecond.
    """
    global _last_vocab
    if _last_vocab[0] == vocab:
        return _last_vocab[1]
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()).hexdigest()
    _last_vocab = (vocab, digest)
    return digest


def cache_key(tokenizer: Any, max_tokens: int, source_hash: str) -> str:
    """Stable hex digest of everything the cached ids depend on."""
    vocab = tokenizer.get_vocab()
    vocab_hash = _vocab_sha256(vocab)
    parts = {
        "format": FORMAT_VERSION,
        "tokenizer": type(tokenizer).__name__,
        "vocab_size": int(getattr(tokenizer, "vocab_size", len(vocab))),
        "vocab_sha256": vocab_hash,
        "do_lower_case": getattr(tokenizer, "do_lower_case", None),
        "max_tokens": int(max_tokens),
        "source_hash": str(source_hash),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class TokenCache:
    """Content token ids of ``n`` texts; ``cache[i]`` is text i's ids (int32 view of the memory map)."""

    def __init__(self, path: Path, key: str, built: bool, n_expected: int | None = None):
        self.path, self.key, self.built = Path(path), key, built
        meta_path = self.path / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
            n = int(self.meta["n"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(meta_path, None, f"unreadable token cache metadata ({e}); delete {self.path}") from None
        if self.meta.get("format") != FORMAT_VERSION or self.meta.get("key") != key:
            raise DataError(meta_path, None, f"token cache of another format or key; delete {self.path}")
        if n_expected is not None and n != n_expected:
            raise DataError(meta_path, None, f"token cache holds {n} texts but {n_expected} were given for the "
                                             "same source hash; pass the corpus's own source_hash, or delete "
                                             f"{self.path}")
        offsets_path, ids_path = self.path / "offsets.int64", self.path / "ids.int32"
        try:
            self._offsets = np.fromfile(offsets_path, dtype=np.int64)
            ids_size = ids_path.stat().st_size
        except OSError as e:
            raise DataError(self.path, None, f"token cache unreadable ({e}); delete {self.path}") from None
        n_tokens = int(self._offsets[-1]) if len(self._offsets) else -1
        if len(self._offsets) != n + 1 or ids_size != 4 * n_tokens:
            raise DataError(self.path, None, f"token cache files disagree with meta.json (truncated copy?); "
                                             f"delete {self.path}")
        # mmap cannot map an empty file (every text empty).
        self._map = None
        if n_tokens:
            with open(ids_path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._ids = np.frombuffer(self._map, dtype=np.int32)
        else:
            self._ids = np.zeros(0, dtype=np.int32)
        self.lengths = np.diff(self._offsets).astype(np.int32)
        self.max_tokens = int(self.meta["max_tokens"])

    @classmethod
    def open(cls, texts: Sequence[str], tokenizer: Any, max_tokens: int, cache_root: str | Path,
             source_hash: str, batch_size: int = 2048, progress: bool = True,
             shared_root: str | Path | None = None, on_batch: OnBatch | None = None) -> "TokenCache":
        """The cache of ``texts`` under ``cache_root``, tokenized now if no complete one exists.

        ``source_hash`` identifies ``texts`` (``Corpus.source_hash``): the texts
        themselves are not hashed, so the same hash must mean the same texts.

        ``shared_root`` (the user's cache, ``data.shared_token_cache``): a complete cache of the same key
        there is linked into ``cache_root`` instead of tokenizing again (hard links, a copy across file
        systems), and one built here is published there by hard links (not where that would take a
        copy), so later runs over the same data with the same tokenizer skip tokenization.
        """
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        root = Path(cache_root)
        root.mkdir(parents=True, exist_ok=True)
        key = cache_key(tokenizer, max_tokens, source_hash)
        final = root / f"tokens-{key}"
        if (final / "meta.json").is_file():
            return cls(final, key, built=False, n_expected=len(texts))
        with _build_lock(root, key):  # processes on one host wait for one build rather than each tokenizing
            return cls._open_or_build(texts, tokenizer, max_tokens, root, final, key, source_hash, batch_size,
                                      progress, shared_root, on_batch)

    @classmethod
    def _open_or_build(cls, texts, tokenizer, max_tokens, root: Path, final: Path, key: str, source_hash: str,
                       batch_size: int, progress: bool, shared_root, on_batch=None) -> "TokenCache":
        if (final / "meta.json").is_file():  # built by the process we waited for
            return cls(final, key, built=False, n_expected=len(texts))
        shared = Path(shared_root) / final.name if shared_root is not None else None
        shared = None if shared == final else shared  # the run's own cache is not "shared" with itself
        if shared is not None and (shared / "meta.json").is_file():
            try:
                cls(shared, key, built=False, n_expected=len(texts)).release()
            except DataError as e:  # damaged: tokenize anew rather than link it in
                log.warning("shared token cache unusable: %s; tokenizing anew", e)
            else:
                if _publish(shared, final):
                    log.info("token cache %s: from the shared cache %s", final.name, shared.parent)
                    return cls(final, key, built=False, n_expected=len(texts))
        with building_dir(final) as tmp:
            _build(tmp, texts, tokenizer, max_tokens, key, source_hash, batch_size, progress, on_batch)
            _install(tmp, final)
        if shared is not None and not (shared / "meta.json").is_file():
            _publish(final, shared, copy=False)  # links only: never a second copy of a large cache
        return cls(final, key, built=True, n_expected=len(texts))

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        i = operator.index(i)
        n = len(self.lengths)
        if not -n <= i < n:
            raise IndexError(f"text {i} out of range for a token cache of {n}")
        i %= n
        return self._ids[self._offsets[i]:self._offsets[i + 1]]

    def take(self, indices: Iterable[int]) -> list[np.ndarray]:
        return [self[int(i)] for i in np.asarray(indices).ravel()]

    def padded(self, indices: Iterable[int], room: int) -> tuple[np.ndarray, np.ndarray]:
        """:func:`gather_padded` of these texts: one vectorised read of the memory map per batch."""
        return gather_padded(self._ids, self._offsets, indices, room)

    def release(self) -> None:
        """Drop the pages read so far from this process's resident set (they stay in the page cache;
        the next read maps them again). An encoder calls it as it goes, so reading an 8.8M-passage
        cache does not count 4.4 GB of ids against the process's memory."""
        if self._map is not None and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def __repr__(self) -> str:
        return f"TokenCache({len(self)} texts, max_tokens={self.max_tokens}, {self.path})"


def _build(tmp: Path, texts: Sequence[str], tokenizer: Any, max_tokens: int, key: str, source_hash: str,
           batch_size: int, progress: bool, on_batch: OnBatch | None = None) -> None:
    if not getattr(tokenizer, "is_fast", False):
        log.warning("%s is not a fast tokenizer; tokenizing the corpus will be slow", type(tokenizer).__name__)
    t0 = time.perf_counter()
    n = len(texts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    backend = fast_backend(tokenizer, max_tokens) if n >= FAST_MIN_TEXTS else None
    with open(tmp / "ids.int32", "wb") as f, tqdm(total=n, desc="tokenizing", unit="text",
                                                  disable=not progress) as bar:
        for lo in range(0, n, batch_size):
            batch = list(texts[lo:lo + batch_size])
            ids = token_ids(tokenizer, batch, max_tokens, backend)
            if len(ids) != len(batch):
                raise RuntimeError(f"tokenizer returned {len(ids)} sequences for {len(batch)} texts")
            lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(lengths.sum()))
            f.write(flat.tobytes())
            offsets[lo + 1:lo + 1 + len(ids)] = offsets[lo] + np.cumsum(lengths)
            if on_batch is not None:
                on_batch(lo, flat, offsets[lo:lo + 1 + len(ids)] - offsets[lo])
            bar.update(len(batch))
        f.flush()
        os.fsync(f.fileno())
    _write(tmp / "offsets.int64", offsets.tobytes())
    meta = {"format": FORMAT_VERSION, "key": key, "n": n, "n_tokens": int(offsets[-1]), "max_tokens": max_tokens,
            "source_hash": source_hash, "tokenizer": type(tokenizer).__name__, "created": time.time(),
            "build_s": round(time.perf_counter() - t0, 3)}
    _write(tmp / "meta.json", json.dumps(meta, indent=1).encode())  # last: marks the cache complete
    fsync_dir(tmp)
    log.info("tokenized %d texts (%d tokens) in %.1fs", n, meta["n_tokens"], meta["build_s"])


# --------------------------------------------------------------------------- model inputs


def _special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Special ids the tokenizer puts before and after a single sequence's content."""
    build = getattr(tokenizer, "build_inputs_with_special_tokens", None)
    if build is not None:
        sentinel = -7  # never a real id
        full = list(build([sentinel]))
        if full.count(sentinel) == 1:
            at = full.index(sentinel)
            return full[:at], full[at + 1:]
    # transformers >= 5 fast tokenizers have no build_inputs_with_special_tokens: find the content
    # of a probe text inside its encoding with special tokens.
    return special_frame(tokenizer)


def gather_padded(flat: np.ndarray, offsets: np.ndarray, indices: Iterable[int],
                  room: int) -> tuple[np.ndarray, np.ndarray]:
    """Texts ``indices`` of a flat table (text i is ``flat[offsets[i]:offsets[i + 1]]``), each cut to ``room``.

    Returns ``(content int64 [b, w], lengths int64 [b])``: row r holds text r's
    first ``lengths[r]`` ids, zeros after; ``w`` is the longest cut length. One
    fancy-indexed read instead of a Python loop over the texts.
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    start = offsets[idx]
    lengths = np.minimum(offsets[idx + 1] - start, max(int(room), 0))
    width = int(lengths.max(initial=0))
    cols = np.arange(width, dtype=np.int64)
    inside = cols[None, :] < lengths[:, None]
    if width == 0:
        return np.zeros((len(idx), 0), np.int64), lengths
    content = flat[np.where(inside, start[:, None] + cols[None, :], 0)].astype(np.int64)
    content[~inside] = 0
    return content, lengths


class FlatTokens:
    """Token-id lists held as one flat array and offsets (the in-memory twin of a :class:`TokenCache`).

    ``FlatTokens.from_lists(lists)`` once; then :meth:`padded` builds batches
    without a Python loop (queries are searched at every refresh).
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self._ids = np.asarray(flat, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.diff(self._offsets)

    @classmethod
    def from_lists(cls, token_lists: Sequence[Sequence[int]]) -> "FlatTokens":
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(token_lists), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets)

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, indices: Iterable[int]) -> list[np.ndarray]:
        return [self._ids[self._offsets[i]:self._offsets[i + 1]] for i in np.asarray(indices, np.int64).ravel()]

    def padded(self, indices: Iterable[int], room: int) -> tuple[np.ndarray, np.ndarray]:
        return gather_padded(self._ids, self._offsets, indices, room)


def build_inputs(token_lists: Sequence[Sequence[int]], tokenizer: Any, max_length: int) -> dict[str, torch.Tensor]:
    """Model inputs from content ids: special tokens added, content cut to fit ``max_length``,
    padded to the longest sequence of the batch on the tokenizer's padding side.

    Returns ``input_ids`` and ``attention_mask`` (long), and ``token_type_ids``
    (zeros) when the tokenizer's model uses them.
    """
    prefix, suffix = _special_frame(tokenizer)
    room = max(int(max_length) - len(prefix) - len(suffix), 0)  # build_padded_inputs refuses a negative one
    table = FlatTokens.from_lists(token_lists)
    return build_padded_inputs(*table.padded(np.arange(len(table)), room), tokenizer, max_length)


def build_padded_inputs(content: np.ndarray, lengths: np.ndarray, tokenizer: Any,
                        max_length: int) -> dict[str, torch.Tensor]:
    """:func:`build_inputs` from :func:`gather_padded`'s ``(content, lengths)``, vectorised."""
    prefix, suffix = _special_frame(tokenizer)
    n_sp = len(prefix) + len(suffix)
    room = int(max_length) - n_sp
    if room < 0:
        raise ConfigError(f"max_length={max_length} leaves no room beside the {n_sp} special tokens")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ConfigError(f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token first")
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), room)
    b = len(lengths)
    w = int(lengths.max(initial=0))
    content = np.asarray(content)[:, :w]
    width = w + n_sp
    cols = np.arange(width, dtype=np.int64)
    seq_len = lengths + n_sp
    ids = np.full((b, width), pad, dtype=np.int64)  # right-padded first
    ids[:, :len(prefix)] = np.asarray(prefix, dtype=np.int64)
    body = np.arange(w)[None, :] < lengths[:, None]
    ids[:, len(prefix):len(prefix) + w] = np.where(body, content, pad)
    rows = np.arange(b)
    for j, tok in enumerate(suffix):
        ids[rows, len(prefix) + lengths + j] = tok
    mask = (cols[None, :] < seq_len[:, None]).astype(np.int64)
    if getattr(tokenizer, "padding_side", "right") == "left":
        shift = (width - seq_len)[:, None]
        src = cols[None, :] - shift
        ids = np.where(src >= 0, np.take_along_axis(ids, np.maximum(src, 0), axis=1), pad)
        mask = (src >= 0).astype(np.int64)
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if "token_type_ids" in (getattr(tokenizer, "model_input_names", None) or ()):
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    return out


def windows(tokens: np.ndarray, max_length: int, n_windows: int, n_special: int = 2) -> list[np.ndarray]:
    """MaxP: content ids cut into up to ``n_windows`` consecutive windows of ``max_length - n_special``.

    Always at least one window (empty for an empty text); the windows are views of ``tokens``.
    """
    size = int(max_length) - int(n_special)
    if size < 1:
        raise ConfigError(f"max_length={max_length} leaves no room beside the {n_special} special tokens")
    if isinstance(n_windows, bool) or int(n_windows) < 1:
        raise ConfigError(f"n_windows must be a positive integer, got {n_windows!r}")
    tokens = np.asarray(tokens)
    count = max(1, min(int(n_windows), -(-len(tokens) // size)))
    return [tokens[k * size:(k + 1) * size] for k in range(count)]
