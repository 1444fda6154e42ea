"""Token ids of many texts at once: the tokenizer's own ``__call__``, or, for a fast tokenizer, its Rust
tokenizer's batch call without character offsets (the same ids, less time), used for the corpus
(:mod:`ance.model.tokcache`) and the queries (:func:`ance.model.encode.query_tokens`).

On the fast path a text far longer than ``max_tokens`` tokens is first cut at a space
(:func:`cut_at_space`, from the end that truncation keeps), ``CUT_CHARS_PER_TOKEN`` characters for each
of ``max_tokens + CUT_MARGIN`` tokens, and tokenized with truncation at ``max_tokens + CUT_MARGIN``.
Where the cut text still gives that many tokens, its first ``max_tokens`` (the last, truncating on the
left) are the whole text's: the pre-tokenizer splits at spaces, so only tokens at the cut can differ,
and those lie beyond the margin. Where it gives fewer (a text of very long tokens), the whole text is
tokenized again. So the ids are exactly the tokenizer's own (tests/test_tokcache.py), and the normaliser
and WordPiece never see the rest of a long document (benchmarks/bench_tokenize.py, ``threads`` against
``whole``: 1.08x on SciFact's abstracts at 254 tokens, 1.61x at 126, 4.5x on 15k-character documents at 510).

A BERT-style tokenizer (``BertNormalizer``: MiniLM, bge, e5, ...) spends about a third of its batch call in
the normaliser, which tracks every character's alignment. For a text that is plain ASCII, without control
characters and without an added token's text, that normaliser only lowercases (or does nothing, cased):
no accents to strip, no CJK characters to pad, and the pre-tokenizer splits at ``\t\n\r`` as at the space
``clean_text`` makes of them. Such texts are lowercased by Python's ``str.lower`` (exact on ASCII) and
tokenized by a copy of the Rust tokenizer without a normaliser (:class:`FastBackend` ``plain``); every
other text goes through the whole tokenizer. Same ids (tests/test_tokcache.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

# False: always through the tokenizer's __call__ (benchmarks/bench_encode_paths.py compares the two paths)
FAST_TOKENIZE = True
FAST_MIN_TEXTS = 256  # fewer: not worth copying the Rust tokenizer (20 ms for BERT's, more for large vocabularies)
CUT_TEXTS = True         # False: every text tokenized whole (benchmarks/bench_tokenize.py compares the two)
CUT_CHARS_PER_TOKEN = 6  # SciFact at 254 tokens: 8 of 5,183 abstracts needed their whole text after all
CUT_MARGIN = 16          # tokens beyond max_tokens the cut text must still give
PRENORMALIZE = True      # False: BERT-style texts through the normaliser too (bench_tokenize.py compares the two)
# pre-tokenizers that split at any whitespace, so a \t \n \r left in place splits as clean_text's space would
_WHITESPACE_SPLITTERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # what clean_text drops; \t \n \r it makes spaces


@dataclass(frozen=True)
class FastBackend:
    """:func:`fast_backend`'s result: a copy of the Rust tokenizer truncating at ``max_tokens + CUT_MARGIN``
    on ``side``, and whether texts are cut at a space before it sees them (it has a pre-tokenizer)."""

    rust: Any
    max_tokens: int
    side: str
    cut: bool
    plain: Any = None        # the same without its BertNormalizer, for plain ASCII texts (module docstring)
    lowercase: bool = False  # that normaliser lowercased
    added: tuple[str, ...] = ()  # the added tokens' texts, lowercased: a text holding one takes the whole path


def cut_at_space(text: str, n_chars: int, side: str = "right") -> str:
    """``text`` itself when it is at most ``n_chars`` long or has no space to cut at; else its first
    ``n_chars`` characters and on to the next space (``side`` "right"), or, "left", its last ``n_chars``
    and back to the space before them (the space kept: byte-level BPEs join it to the word after)."""
    if len(text) <= n_chars:
        return text
    if side == "left":
        j = text.rfind(" ", 0, len(text) - n_chars + 1)
        return text if j <= 0 else text[j:]
    j = text.find(" ", n_chars)
    return text if j < 0 else text[:j]


def fast_backend(tokenizer: Any, max_tokens: int) -> FastBackend | None:
    """A copy of a fast tokenizer's Rust tokenizer set to truncate as ``tokenizer(..., truncation=True,
    max_length=...)`` does (at ``max_tokens + CUT_MARGIN``; :func:`token_ids` keeps ``max_tokens``), for
    :func:`token_ids`; None where there is none (a slow tokenizer, or an older ``tokenizers`` without
    ``encode_batch_fast``)."""
    import copy

    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None) if isinstance(tokenizer, PreTrainedTokenizerFast) else None
    if not FAST_TOKENIZE or backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    backend = copy.deepcopy(backend)  # the tokenizer's own keeps whatever padding/truncation it had
    side = getattr(tokenizer, "truncation_side", "right")
    backend.no_padding()
    backend.enable_truncation(int(max_tokens) + CUT_MARGIN, stride=0, strategy="longest_first", direction=side)
    if hasattr(backend, "encode_special_tokens"):
        backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
    cut = CUT_TEXTS and backend.pre_tokenizer is not None
    norm = backend.normalizer
    if (not PRENORMALIZE or type(norm).__name__ != "BertNormalizer"
            or type(backend.pre_tokenizer).__name__ not in _WHITESPACE_SPLITTERS):
        return FastBackend(backend, int(max_tokens), side, cut)
    plain = copy.deepcopy(backend)
    plain.normalizer = None
    added = getattr(backend, "get_added_tokens_decoder", dict)().values()
    return FastBackend(backend, int(max_tokens), side, cut, plain, bool(norm.lowercase),
                       tuple(sorted({str(getattr(t, "content", t)).lower() for t in added} - {""})))


def _plain_ascii(b: FastBackend, text: str) -> str | None:
    """``text`` as ``b.plain`` takes it (lowercased where the normaliser lowercases), or None where it needs
    the normaliser: not ASCII, a control character, or an added token's text in any case."""
    if not text.isascii() or _CONTROL.search(text):
        return None
    low = text.lower()
    if any(a in low for a in b.added):
        return None
    return low if b.lowercase else text


def _encode(b: FastBackend, texts: list[str]) -> list[list[int]]:
    if b.plain is None:
        return [e.ids for e in b.rust.encode_batch_fast(texts, add_special_tokens=False)]
    shown = [_plain_ascii(b, t) for t in texts]
    easy = [i for i, t in enumerate(shown) if t is not None]
    ids: list = [None] * len(texts)
    if easy:
        for i, e in zip(easy, b.plain.encode_batch_fast([shown[i] for i in easy], add_special_tokens=False)):
            ids[i] = e.ids
    hard = [i for i, t in enumerate(shown) if t is None]
    if hard:
        for i, e in zip(hard, b.rust.encode_batch_fast([texts[i] for i in hard], add_special_tokens=False)):
            ids[i] = e.ids
    return ids


def _fast_ids(b: FastBackend, texts: list[str]) -> list[list[int]]:
    room = b.max_tokens + CUT_MARGIN
    shown = [cut_at_space(t, CUT_CHARS_PER_TOKEN * room, b.side) for t in texts] if b.cut else texts
    ids = _encode(b, shown)
    again = [i for i, (s, t) in enumerate(zip(shown, texts)) if s is not t and len(ids[i]) < room]
    if again:  # cut too short to be sure: the whole text
        for i, x in zip(again, _encode(b, [texts[i] for i in again])):
            ids[i] = x
    m = b.max_tokens
    if b.side == "left":
        return [x[-m:] if len(x) > m else x for x in ids]
    return [x[:m] if len(x) > m else x for x in ids]


def token_ids(tokenizer: Any, texts: Sequence[str], max_tokens: int,
              backend: FastBackend | None = None) -> list[list[int]]:
    """Content ids of ``texts``, each cut to ``max_tokens``, no special tokens: exactly
    ``tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_tokens)["input_ids"]``,
    through ``backend`` (:func:`fast_backend`) where given: the Rust tokenizer's batch call without
    character offsets, long texts cut at a space first (module docstring; times in docs/benchmarks.md,
    "Tokenization": SciFact's abstracts at 126 tokens 2.1x the call's speed, long documents 5.6x)."""
    if backend is not None:
        if backend.max_tokens != max_tokens:
            raise ValueError(f"backend made for {backend.max_tokens} tokens, asked for {max_tokens}")
        return _fast_ids(backend, list(texts))
    return tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=max_tokens,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]
