"""ance.model.stream: the first encode of a corpus encodes each batch as it is tokenized; same cache, same
vectors as tokenizing first and encoding after, any shard, and the cached path once the cache exists."""

from __future__ import annotations

import numpy as np
import pytest

from ance.model import stream
from ance.model.encode import corpus_tokens, encode_corpus
from ance.model.tokcache import TokenCache

MAX_LENGTH = 64


@pytest.fixture(scope="module")
def model():
    from ance.model.biencoder import BiEncoder, resolve_model

    return BiEncoder.load(resolve_model("tiny-bert")).eval()


@pytest.fixture(scope="module")
def corpus():
    from pathlib import Path

    from ance.data.dataset import Corpus

    rng = np.random.default_rng(0)
    words = ["retrieval", "dense", "négatives", "index", "Query", "passage", "x" * 30, "GPU", "a", "of"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 60)))) for _ in range(700)]
    return Corpus(ids=[f"d{i}" for i in range(len(texts))], titles=[""] * len(texts), texts=texts,
                  path=Path("stream-test"), source_hash="stream-test")


def sequential(model, corpus, root, lo=0, hi=None):
    cache = corpus_tokens(corpus, model.tokenizer, max_length=MAX_LENGTH, cache_root=root, progress=False)
    return cache, *encode_corpus(model, cache, lo=lo, hi=hi, max_length=MAX_LENGTH, batch_size=32, device="cpu",
                                 progress=False)


@pytest.mark.parametrize("lo,hi", [(0, None), (150, 560)])
def test_streamed_encode_equals_tokenize_then_encode(model, corpus, tmp_path, monkeypatch, lo, hi):
    monkeypatch.setattr(stream, "STREAM_BATCH", 128)  # several batches of 700 texts, the shard across them
    seen = []
    real = stream.encode_token_lists

    def spy(*args, **kw):
        seen.append(len(args[2]))
        return real(*args, **kw)

    monkeypatch.setattr(stream, "encode_token_lists", spy)
    cache, emb, owner = stream.tokenize_and_encode(model, corpus, lo=lo, hi=hi, max_length=MAX_LENGTH,
                                                   cache_root=tmp_path / "a", batch_size=32, device="cpu",
                                                   progress=False)
    assert cache.built and len(seen) > 1 and sum(seen) == (hi or len(corpus)) - lo  # streamed, batch by batch
    ref_cache, ref_emb, ref_owner = sequential(model, corpus, tmp_path / "b", lo, hi)
    np.testing.assert_array_equal(owner, ref_owner)
    np.testing.assert_allclose(emb, ref_emb, atol=2e-5)
    assert cache.key == ref_cache.key
    for i in (0, 1, 333, len(corpus) - 1):  # the cache written while streaming is the sequential one
        np.testing.assert_array_equal(cache[i], ref_cache[i])
    # a second encode finds the cache complete and encodes from it: nothing streamed
    seen.clear()
    again, emb2, _ = stream.tokenize_and_encode(model, corpus, lo=lo, hi=hi, max_length=MAX_LENGTH,
                                                cache_root=tmp_path / "a", batch_size=32, device="cpu",
                                                progress=False)
    assert not again.built and not seen
    np.testing.assert_allclose(emb2, ref_emb, atol=2e-5)


def test_maxp_and_stream_off_take_the_cache(model, corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(stream, "encode_token_lists", lambda *a, **k: pytest.fail("streamed"))
    cache, emb, owner = stream.tokenize_and_encode(model, corpus, max_length=MAX_LENGTH, long_doc="maxp",
                                                   n_windows=2, cache_root=tmp_path, batch_size=32, device="cpu",
                                                   progress=False)
    assert cache.built and len(emb) == len(owner) >= len(corpus)
    _, emb_off, _ = stream.tokenize_and_encode(model, corpus, lo=0, hi=50, max_length=MAX_LENGTH, stream=False,
                                               cache_root=tmp_path / "off", batch_size=32, device="cpu",
                                               progress=False)
    assert emb_off.shape[0] == 50


def test_a_tokenizer_failure_is_raised_here_and_leaves_no_cache(model, corpus, tmp_path, monkeypatch):
    import ance.model.tokcache as tokcache

    calls = []

    def failing(tokenizer, texts, max_tokens, backend=None):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("tokenizer broke")
        return [[5, 6, 7]] * len(texts)

    monkeypatch.setattr(tokcache, "token_ids", failing)
    monkeypatch.setattr(stream, "STREAM_BATCH", 128)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        stream.tokenize_and_encode(model, corpus, max_length=MAX_LENGTH, cache_root=tmp_path, batch_size=32,
                                   device="cpu", progress=False)
    assert not list(tmp_path.glob("tokens-*/meta.json"))  # no half-built cache installed
    assert isinstance(TokenCache, type)


def test_streamed_on_device_fills_one_tensor(model, corpus, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(stream, "STREAM_BATCH", 200)
    _, emb, owner = stream.tokenize_and_encode(model, corpus, lo=100, hi=650, max_length=MAX_LENGTH, on_device=True,
                                               cache_root=tmp_path / "a", batch_size=32, device="cpu", progress=False)
    _, ref, _ = sequential(model, corpus, tmp_path / "b", 100, 650)
    assert isinstance(emb, torch.Tensor) and emb.shape == (550, model.dim)
    np.testing.assert_allclose(emb.numpy(), ref, atol=2e-5)
    np.testing.assert_array_equal(owner, np.arange(100, 650))
