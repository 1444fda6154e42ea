"""Encoding: length-sorted batches, order restored, FirstP/MaxP, shards, embeddings on disk, cache reuse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ance.model.encode import (corpus_max_tokens, encode_corpus, encode_texts, encode_token_lists,
                         length_sorted_batches, parse_shard, read_embeddings, shard_range, write_embeddings)
from ance.run.errors import AnceError, ConfigError

SCIFACT = Path("/work/shared/data/scifact")
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")
MAX_LENGTH = 64  # short windows keep CPU time down and give MaxP several windows per document


@pytest.fixture(scope="module")
def model():
    from ance.model.biencoder import BiEncoder, resolve_model

    return BiEncoder.load(resolve_model("tiny-bert")).eval()


@pytest.fixture(scope="module")
def data():
    if not (SCIFACT / "corpus.jsonl").is_file():
        pytest.skip(f"no SciFact at {SCIFACT}")
    from ance.data.dataset import load_dataset

    return load_dataset(SCIFACT, splits=("dev",), max_docs=300, max_queries=30)


@pytest.fixture(scope="module")
def cache(model, data, tmp_path_factory):
    from ance.model.tokcache import TokenCache

    return TokenCache.open(data.corpus.passages(), model.tokenizer,
                           corpus_max_tokens(model.tokenizer, MAX_LENGTH, "maxp", 3),
                           tmp_path_factory.mktemp("tokens"), data.corpus.source_hash, progress=False)


def naive(model, token_lists, kind="passage") -> np.ndarray:
    """One sequence at a time, no padding, no sorting, no autocast."""
    from ance.model.tokcache import build_inputs

    with torch.inference_mode():
        return np.stack([model(**build_inputs([t], model.tokenizer, MAX_LENGTH), kind=kind)[0].numpy()
                         for t in token_lists])


# --------------------------------------------------------------------------- pure helpers


def test_length_sorted_batches():
    lengths = np.array([3, 9, 1, 9, 5, 7, 2])
    batches = length_sorted_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(7))
    assert (np.diff(lengths[flat]) <= 0).all()
    assert flat[:2].tolist() == [1, 3]  # ties keep their order
    assert length_sorted_batches(np.zeros(0, np.int32), 4) == []
    # the 16-bit radix path and the 64-bit one give the same order (lengths past 32,767 take the latter)
    rng = np.random.default_rng(0)
    many = rng.integers(0, 300, 5000)
    want = np.argsort(-many, kind="stable")
    assert np.array_equal(np.concatenate(length_sorted_batches(many, 64)), want)
    assert np.array_equal(np.concatenate(length_sorted_batches(many * 200, 64)), want)
    with pytest.raises(ConfigError, match="batch_size"):
        length_sorted_batches(lengths, 0)


@pytest.mark.parametrize("n", [0, 1, 7, 300, 1001])
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
def test_shards_cover_without_overlap(n, n_shards):
    ranges = [shard_range(n, i, n_shards) for i in range(n_shards)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [hi - lo for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_parse_shard():
    assert parse_shard("0/2") == (0, 2) and parse_shard("3/4") == (3, 4)
    for bad in ("2/2", "-1/2", "1", "a/b", "0/0", "1/2/3"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)
    with pytest.raises(ConfigError):
        shard_range(10, 3, 3)


# --------------------------------------------------------------------------- encoding


@needs_scifact
def test_firstp_sorted_batches_equal_one_by_one(model, cache):
    lo, hi = 40, 140
    emb, owner = encode_corpus(model, cache, lo=lo, hi=hi, max_length=MAX_LENGTH, long_doc="firstp",
                               batch_size=16, device="cpu", progress=False)
    assert emb.dtype == np.float32 and emb.shape == (hi - lo, model.dim)
    np.testing.assert_array_equal(owner, np.arange(lo, hi))
    np.testing.assert_allclose(emb, naive(model, cache.take(range(lo, hi))), atol=1e-5)


def test_on_device_results_land_at_their_positions(model, monkeypatch):
    """``on_device`` writes each length-sorted batch through positions uploaded once (no per-batch copy from
    pageable memory, which can synchronise a GPU stream): same vectors as the host path, as a tensor."""
    from ance.model import transfer

    rng = np.random.default_rng(1)
    lists = [rng.integers(1000, 2000, size=int(n)) for n in rng.integers(1, 70, size=90)]  # ragged
    idx = rng.permutation(90)[:75]
    kw = dict(kind="passage", batch_size=16, device="cpu", progress=False)
    host = encode_token_lists(model, lists, idx, model.tokenizer, MAX_LENGTH, **kw)
    uploads = []
    real = transfer.Results.__init__

    def spy(self, *args, **kwargs):
        real(self, *args, **kwargs)
        uploads.append(self.order)

    monkeypatch.setattr(transfer.Results, "__init__", spy)
    dev = encode_token_lists(model, lists, idx, model.tokenizer, MAX_LENGTH, on_device=True, **kw)
    assert isinstance(dev, torch.Tensor) and dev.dtype == torch.float32
    np.testing.assert_allclose(dev.numpy(), host, atol=1e-6)
    order = uploads[0].numpy()  # every batch's positions, longest first: not the identity
    assert sorted(order.tolist()) == list(range(75)) and order.tolist() != list(range(75))


def test_encode_token_lists_sources_and_training_mode(model):
    rng = np.random.default_rng(0)
    lists = [rng.integers(1000, 2000, size=n) for n in (5, 40, 1, 17, 70, 3)]  # 70 is cut to MAX_LENGTH
    want = naive(model, lists)
    idx = np.array([4, 0, 2])
    by_list = encode_token_lists(model, lists, idx, model.tokenizer, MAX_LENGTH, kind="passage", batch_size=2,
                                 device="cpu", progress=False)
    by_fn = encode_token_lists(model, lambda ii: [lists[i] for i in ii], idx, model.tokenizer, MAX_LENGTH,
                               kind="passage", batch_size=2, device="cpu", progress=False)
    np.testing.assert_allclose(by_list, want[idx], atol=1e-5)
    np.testing.assert_array_equal(by_fn, by_list)
    model.train()
    try:
        again = encode_token_lists(model, lists, idx, model.tokenizer, MAX_LENGTH, kind="passage", batch_size=2,
                                   device="cpu", progress=False)
        assert model.training  # restored, and dropout was off meanwhile
    finally:
        model.eval()
    np.testing.assert_array_equal(again, by_list)


def test_encode_texts_matches_the_tokenizer(model):
    texts = ["what causes fever?", "a much longer question " * 30, "x"]
    got = encode_texts(model, texts, MAX_LENGTH, kind="query", batch_size=2, device="cpu")
    inputs = model.tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.inference_mode():
        want = model(**inputs, kind="query").numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert encode_texts(model, [], MAX_LENGTH, kind="query", batch_size=2, device="cpu").shape == (0, model.dim)


@needs_scifact
def test_maxp_windows_and_owner(model, cache):
    from ance.model.tokcache import windows

    n_windows, lo, hi = 3, 0, 60
    emb, owner = encode_corpus(model, cache, lo=lo, hi=hi, max_length=MAX_LENGTH, long_doc="maxp",
                               n_windows=n_windows, batch_size=32, device="cpu", progress=False)
    assert emb.shape == (len(owner), model.dim)
    counts = np.bincount(owner - lo, minlength=hi - lo)
    assert (counts >= 1).all() and (counts <= n_windows).all() and counts.max() > 1
    assert (np.diff(owner) >= 0).all()  # a document's windows are adjacent, in corpus order
    size = MAX_LENGTH - 2
    want = [max(1, min(n_windows, -(-len(cache[d]) // size))) for d in range(lo, hi)]
    assert counts.tolist() == want
    wins = [w for d in range(lo, hi) for w in windows(cache[d], MAX_LENGTH, n_windows)]
    np.testing.assert_allclose(emb, naive(model, wins), atol=1e-5)
    firstp, _ = encode_corpus(model, cache, lo=lo, hi=hi, max_length=MAX_LENGTH, batch_size=32, device="cpu",
                              progress=False)
    first_rows = np.r_[0, np.cumsum(counts)[:-1]]
    np.testing.assert_allclose(emb[first_rows], firstp, atol=1e-5)


# --------------------------------------------------------------------------- embeddings on disk


def test_write_read_embeddings_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((7, 5)).astype(np.float32)
    owner = np.array([3, 3, 4, 5, 5, 5, 6])
    ids = [f"d{o}" for o in owner]
    write_embeddings(tmp_path / "e", emb, owner, ids, {"model": "m", "lo": 3, "hi": 7})
    got, got_owner, got_ids, meta = read_embeddings(tmp_path / "e")
    assert got.dtype == np.float16 and isinstance(got, np.memmap)
    np.testing.assert_array_equal(got, emb.astype(np.float16))
    np.testing.assert_array_equal(got_owner, owner)
    assert got_ids == ids and meta["model"] == "m" and (meta["n"], meta["dim"]) == (7, 5)

    write_embeddings(tmp_path / "empty", np.zeros((0, 5), np.float32), np.zeros(0, np.int64), [], {})
    assert read_embeddings(tmp_path / "empty")[0].shape == (0, 5)

    (tmp_path / "e" / "meta.json").unlink()
    with pytest.raises(AnceError, match="incomplete"):
        read_embeddings(tmp_path / "e")
    with pytest.raises(AnceError, match="not an embeddings dir"):
        read_embeddings(tmp_path / "nothing")
    write_embeddings(tmp_path / "e", emb, owner, ids, {})
    with open(tmp_path / "e" / "emb.f16", "ab") as fh:
        fh.write(b"\0\0")
    with pytest.raises(AnceError, match="bytes"):
        read_embeddings(tmp_path / "e")
    with pytest.raises(ValueError, match="one entry per row"):
        write_embeddings(tmp_path / "bad", emb, owner[:3], ids, {})


# --------------------------------------------------------------------------- `ance encode`


def run_command(name: str, *argv) -> int:
    """One subcommand through ``ance.cli.main`` (AnceError -> one line, exit 2)."""
    from ance.cli import main

    return main([name, *map(str, argv)])


@needs_scifact
def test_second_encode_reuses_the_token_cache(tmp_path, capsys):
    common = ["--model", "tiny-bert", "--data", SCIFACT, "--split", "dev", "--max-docs", 300, "--max-queries", 30,
              "--max-length", MAX_LENGTH, "--device", "cpu", "--cache-dir", tmp_path / "cache", "--quiet"]
    assert run_command("encode", *common, "--shard", "1/2", "--out", tmp_path / "emb") == 0
    assert "tokens built" in capsys.readouterr().err
    assert run_command("encode", *common, "--shard", "0/2", "--out", tmp_path / "emb") == 0
    assert "tokens cached" in capsys.readouterr().err
    assert len(list((tmp_path / "cache").glob("tokens-*"))) == 1
    metas = [read_embeddings(tmp_path / "emb" / f"shard-{i}-of-2")[3] for i in range(2)]
    assert [(m["lo"], m["hi"]) for m in metas] == [(0, 150), (150, 300)]
    assert run_command("encode", *common, "--shard", "2/2", "--out", tmp_path / "emb") == 2
    assert "0 <= i < n" in capsys.readouterr().err


def test_prefetch_keeps_order_and_raises_the_builders_error():
    from ance.model.transfer import prefetched as _prefetched

    batches = [np.arange(i, i + 2) for i in range(0, 10, 2)]
    assert [(list(p), x) for p, x in _prefetched(lambda p: int(p.sum()), batches)] == \
        [(list(b), int(b.sum())) for b in batches]

    def boom(pos):
        if pos[0] == 4:
            raise ValueError("bad batch 4")
        return pos

    seen = []
    with pytest.raises(ValueError, match="bad batch 4"):
        for pos, _ in _prefetched(boom, batches):
            seen.append(int(pos[0]))
    assert seen == [0, 2]
    gen = _prefetched(lambda p: p, batches)  # a consumer that stops early leaves no thread behind
    next(gen)
    gen.close()


@pytest.mark.parametrize("dense", [True, False])
def test_to_device_makes_what_build_padded_inputs_gives(model, dense):
    """On a GPU a batch sends its ids (and its mask where it has pads); the zero token types and a full
    batch's all-ones mask are made on the device: the same inputs as build_padded_inputs'."""
    from ance.model.tokcache import build_padded_inputs
    from ance.model.transfer import to_device

    lengths = np.array([5, 5, 5]) if dense else np.array([5, 2, 4])
    content = np.arange(15, dtype=np.int64).reshape(3, 5) + 1000
    full = build_padded_inputs(content, lengths, model.tokenizer, MAX_LENGTH)
    sent = {k: None if k == "token_type_ids" or (k == "attention_mask" and dense) else v for k, v in full.items()}
    got = to_device(sent, "cpu")
    assert got.keys() == full.keys()
    for k in full:
        assert torch.equal(got[k], full[k]), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("on_device", [False, True])
def test_the_gpu_encode_loop_gives_the_plain_forwards_vectors(model, on_device):
    """The GPU path (pinned ids, types and full masks made on the device, results back through pinned buffers
    or kept on the GPU) against one plain forward per text on the same GPU, ragged and full batches."""
    from ance.model.tokcache import build_padded_inputs

    gpu = model.to("cuda")
    rng = np.random.default_rng(3)
    lists = [rng.integers(1000, 2000, size=int(n)) for n in rng.integers(1, 70, size=60)]
    lists += [rng.integers(1000, 2000, size=80) for _ in range(40)]  # longer than the room: full batches
    got = encode_token_lists(gpu, lists, np.arange(len(lists)), model.tokenizer, MAX_LENGTH, kind="passage",
                             batch_size=16, device="cuda", progress=False, on_device=on_device)
    got = got.float().cpu().numpy() if on_device else got.astype(np.float32)
    room = MAX_LENGTH - 2
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):  # as the loop computes
        for i, ids in enumerate(lists):
            one = build_padded_inputs(ids[None, :room], np.array([min(len(ids), room)]), model.tokenizer, MAX_LENGTH)
            want = gpu(**{k: v.cuda() for k, v in one.items()}, kind="passage").float().cpu().numpy()[0]
            cos = float(np.dot(got[i], want) / (np.linalg.norm(got[i]) * np.linalg.norm(want)))
            assert cos > 0.999, (i, cos)  # bf16's and the batch shapes' rounding only
            np.testing.assert_allclose(got[i], want, atol=2e-2)
    model.to("cpu")
