import numpy as np
import pytest

from ance.search import index as index_mod
from ance.search.index import (
    FaissIndex,
    SearchIndex,
    TorchIndex,
    faiss_available,
    faiss_gpus,
    make_index,
    maxp_collapse,
    merge_topk,
)

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")


def brute_topk(pairs_per_row, k):
    """pairs_per_row: list of lists of (score, id); sorted by score desc, id asc; -1/-inf padded."""
    m = len(pairs_per_row)
    s = np.full((m, k), -np.inf, np.float32)
    i = np.full((m, k), -1, np.int64)
    for r, pairs in enumerate(pairs_per_row):
        best = sorted(pairs, key=lambda p: (-p[0], p[1]))[:k]
        for j, (sc, ix) in enumerate(best):
            s[r, j], i[r, j] = sc, ix
    return s, i


def random_shards(rng, m, n_docs, n_shards, k_shard, integer_scores):
    """Per-shard top-k lists (global ids) of one score matrix, plus the matrix."""
    if integer_scores:  # many exact ties
        full = rng.integers(0, 4, size=(m, n_docs)).astype(np.float32)
    else:
        full = rng.standard_normal((m, n_docs)).astype(np.float32)
    owner = rng.integers(0, n_shards, size=n_docs)
    scores_list, ids_list = [], []
    for sh in range(n_shards):
        docs = np.flatnonzero(owner == sh)
        _, i = brute_topk([[(full[r, d], d) for d in docs] for r in range(m)], k_shard)
        # a backend may order ties any way: shuffle each row's valid part
        for r in range(m):
            n_valid = int((i[r] >= 0).sum())
            i[r, :n_valid] = rng.permutation(i[r, :n_valid])
        s = np.where(i >= 0, full[np.arange(m)[:, None], np.maximum(i, 0)], -np.inf).astype(np.float32)
        scores_list.append(s)
        ids_list.append(i)
    return full, scores_list, ids_list


@pytest.mark.parametrize("integer_scores", [False, True])
def test_merge_topk_matches_brute_force(integer_scores):
    rng = np.random.default_rng(1 + integer_scores)
    for _ in range(30):
        m, n_shards = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        n_docs = int(rng.integers(1, 40))  # often fewer docs than k: pads
        k = int(rng.integers(1, 25))
        full, scores_list, ids_list = random_shards(rng, m, n_docs, n_shards, k, integer_scores)
        want_s, want_i = brute_topk([[(full[r, d], d) for d in range(n_docs)] for r in range(m)], k)
        got_s, got_i = merge_topk(scores_list, ids_list, k)
        assert got_s.dtype == np.float32 and got_i.dtype == np.int64
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        # shard order does not matter
        got_i2 = merge_topk(scores_list[::-1], ids_list[::-1], k)[1]
        np.testing.assert_array_equal(got_i2, want_i)


def test_merge_topk_pads_and_shapes():
    s = np.array([[3.0, -np.inf], [1.0, 0.5]], np.float32)
    i = np.array([[7, -1], [2, 9]])
    got_s, got_i = merge_topk([s, np.array([[2.0], [0.7]], np.float32)], [i, np.array([[4], [-1]])], 4)
    np.testing.assert_array_equal(got_i, [[7, 4, -1, -1], [2, 9, -1, -1]])
    np.testing.assert_array_equal(got_s, np.array([[3, 2, -np.inf, -np.inf], [1, 0.5, -np.inf, -np.inf]], np.float32))
    with pytest.raises(ValueError, match="same queries"):
        merge_topk([s, s[:1]], [i, i[:1]], 2)
    with pytest.raises(ValueError, match="one shape"):
        merge_topk([s], [i[:, :1]], 2)
    with pytest.raises(ValueError, match="per shard"):
        merge_topk([], [], 2)
    with pytest.raises(ValueError, match="positive"):
        merge_topk([s], [i], 0)


def test_maxp_collapse_matches_brute_force():
    rng = np.random.default_rng(3)
    for _ in range(40):
        n_docs = int(rng.integers(1, 15))
        windows = int(rng.integers(1, 5))
        owner = np.repeat(np.arange(n_docs), rng.integers(1, windows + 1, size=n_docs))
        m, depth, k = int(rng.integers(1, 5)), int(rng.integers(1, 30)), int(rng.integers(1, 10))
        ids = np.stack([rng.permutation(len(owner))[:depth] for _ in range(m)])
        if ids.shape[1] < depth:
            ids = np.concatenate([ids, np.full((m, depth - ids.shape[1]), -1)], axis=1)
        scores = np.where(ids >= 0, rng.integers(0, 5, size=ids.shape), -np.inf).astype(np.float32)
        want = []
        for r in range(m):
            best = {}
            for w, s in zip(ids[r], scores[r]):
                if w >= 0:
                    best[owner[w]] = max(best.get(owner[w], -np.inf), s)
            want.append([(s, d) for d, s in best.items()])
        want_s, want_i = brute_topk(want, k)
        got_s, got_i = maxp_collapse(scores, ids, owner, k)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        for row in got_i:
            valid = row[row >= 0]
            assert len(set(valid.tolist())) == len(valid)  # no duplicate documents


def test_maxp_collapse_validates():
    with pytest.raises(ValueError, match="outside owner"):
        maxp_collapse(np.zeros((1, 2), np.float32), np.array([[0, 5]]), np.array([0, 0, 1]), 2)


def data(seed, n=3000, m=50, dim=32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32), rng.standard_normal((m, dim)).astype(np.float32)


@needs_faiss
def test_torch_index_matches_faiss_cpu():
    x, q = data(0)
    f = FaissIndex(32, device="cpu")
    t = TorchIndex(32, device="cpu", block_size=700)  # several blocks, the adds straddle them
    for lo, hi in [(0, 1000), (1000, 1001), (1001, 3000)]:
        f.add(x[lo:hi])
        t.add(x[lo:hi])
    assert f.ntotal == t.ntotal == 3000
    fs, fi = f.search(q, 100)
    ts, ti = t.search(q, 100)
    np.testing.assert_allclose(ts, fs, rtol=1e-5, atol=1e-4)
    differ = fi != ti
    assert differ.mean() < 0.01
    # where the ids differ, it is an exact tie (both backends see equal scores)
    np.testing.assert_allclose(fs[differ], ts[differ], atol=1e-5)
    # ids are positions in add order: scores recompute exactly
    np.testing.assert_allclose(np.einsum("md,mkd->mk", q, x[ti]), ts, rtol=1e-4, atol=1e-4)
    want = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :100]
    assert (want == ti).mean() > 0.99


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_k_larger_than_ntotal_pads(backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss is not installed")
    x, q = data(1, n=5, m=3)
    idx = make_index(backend, 32, "cpu")
    s, i = idx.search(q, 4)  # empty index
    assert (i == -1).all() and np.isneginf(s).all() and s.shape == (3, 4)
    idx.add(x)
    s, i = idx.search(q, 8)
    assert s.dtype == np.float32 and i.dtype == np.int64 and i.shape == (3, 8)
    assert (i[:, 5:] == -1).all() and np.isneginf(s[:, 5:]).all()
    assert sorted(i[0, :5].tolist()) == [0, 1, 2, 3, 4]
    assert (np.diff(s[:, :5], axis=1) <= 0).all()


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_float16_input(backend):
    if backend == "faiss" and not faiss_available():
        pytest.skip("faiss is not installed")
    x, q = data(2, n=500)
    x16, q16 = x.astype(np.float16), q.astype(np.float16)
    a, b = make_index(backend, 32, "cpu"), make_index(backend, 32, "cpu")
    a.add(x16)
    b.add(x16.astype(np.float32))
    sa, ia = a.search(q16, 10)
    sb, ib = b.search(q16.astype(np.float32), 10)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=1e-6)


@needs_faiss
def test_faiss_sharded_ids_are_add_positions(monkeypatch):
    """The multi-GPU path (contiguous pieces per shard, ids mapped back, merged), run on CPU shards."""
    x, q = data(3, n=1001)
    monkeypatch.setattr(FaissIndex, "_resolve_devices", staticmethod(lambda device, gpus: [0, 1, 2]))
    monkeypatch.setattr(FaissIndex, "_new_shard", lambda self, gpu: self._faiss.IndexFlatIP(self.dim))
    sharded = FaissIndex(32, device="cuda")
    assert sharded.backend_name == "faiss-gpu x3"
    for lo, hi in [(0, 2), (2, 500), (500, 1001)]:  # the first add leaves one shard empty
        sharded.add(x[lo:hi])
    monkeypatch.undo()
    single = FaissIndex(32, device="cpu")
    single.add(x)
    s1, i1 = sharded.search(q, 50)
    s2, i2 = single.search(q, 50)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    assert sharded.search(q, 2000)[1][:, 1001:].max() == -1


@needs_faiss
@pytest.mark.skipif(faiss_gpus() > 0, reason="faiss has GPUs here")
def test_faiss_cuda_without_gpu_says_what_to_do():
    for device in ["cuda", "cuda:0"]:
        with pytest.raises(ValueError, match="install faiss-gpu, or use backend 'torch'"):
            FaissIndex(8, device=device)
    assert FaissIndex(8, device="auto").backend_name == "faiss-cpu"


def test_bad_arguments():
    t = TorchIndex(4)
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        t.add(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="positive integer"):
        t.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(ValueError, match="device"):
        TorchIndex(4, device="tpu")
    with pytest.raises(ValueError, match="backend must be"):
        make_index("annoy", 4)


def test_make_index_auto(monkeypatch):
    idx = make_index("auto", 16)
    assert isinstance(idx, SearchIndex)
    if faiss_available():
        assert isinstance(idx, FaissIndex) and idx.backend_name.startswith("faiss")
    monkeypatch.setattr(index_mod, "faiss_available", lambda: False)
    idx = make_index("auto", 16, "cpu")
    assert isinstance(idx, TorchIndex) and idx.backend_name == "torch-cpu"
    idx.add(np.eye(16, dtype=np.float32))
    assert idx.search(np.eye(16, dtype=np.float32)[:2], 1)[1].tolist() == [[0], [1]]


def test_torch_index_accepts_tensors():
    import torch

    x, q = data(4, n=100)
    a = TorchIndex(32, block_size=33)
    a.add(torch.from_numpy(x))
    s, i = a.search(torch.from_numpy(q), 5)
    want = np.argsort(-(q @ x.T), axis=1)[:, :5]
    np.testing.assert_array_equal(i, want)


@pytest.mark.skipif(faiss_gpus() == 0, reason="faiss has no GPU here")
def test_faiss_gpu_matches_cpu():
    x, q = data(5, n=20000, dim=64)
    cpu, gpu = FaissIndex(64, device="cpu"), FaissIndex(64, device="cuda:0", fp16=False)
    cpu.add(x)
    gpu.add(x[:7000])
    gpu.add(x[7000:])
    (s1, i1), (s2, i2) = cpu.search(q, 100), gpu.search(q, 100)
    assert (i1 == i2).mean() > 0.99
    np.testing.assert_allclose(s1, s2, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="at most"):
        gpu.search(q, 5000)


def test_torch_cuda_matches_cpu():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA GPU here")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((20000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:200] + 0.1 * rng.standard_normal((200, 64)).astype(np.float32)
    cpu, gpu = TorchIndex(64, "cpu"), TorchIndex(64, "cuda", block_size=3000)
    cpu.add(x)
    gpu.add(x)
    (s1, i1), (s2, i2) = cpu.search(q, 100), gpu.search(q, 100)
    assert gpu.backend_name.startswith("torch-cuda:0")
    assert (i1[:, :10] == i2[:, :10]).mean() > 0.95  # float16 storage: near-ties may swap
    np.testing.assert_allclose(s1, s2, atol=5e-3)
    # the rows ordered on the GPU (score descending, smaller id first), a query tensor on the GPU as it is,
    # and k above the corpus size padded
    assert np.all(np.diff(s2, axis=1) <= 0)
    s3, i3 = gpu.search(torch.from_numpy(q).cuda().half(), 100)
    np.testing.assert_array_equal(i3, gpu.search(q.astype(np.float16), 100)[1])
    small = TorchIndex(64, "cuda")
    small.add(x[:50])
    s4, i4 = small.search(q[:3], 60)
    assert (i4[:, 50:] == -1).all() and np.isneginf(s4[:, 50:]).all() and sorted(i4[0, :50]) == list(range(50))


def test_sort_rows_equals_the_lexsort_rule_on_ties_pads_and_infinities():
    """The integer-key sort gives what one lexsort over (pad, -score, id) gives, also on ties, +-inf,
    -0.0 and pads; ids too large for 32 bits take the lexsort path."""
    from ance.search.topk import _sort_rows

    rng = np.random.default_rng(5)
    values = np.array([-np.inf, -1.5, -0.0, 0.0, 0.25, 1.0, 2.0, np.inf], np.float32)
    for _ in range(200):
        m, width = int(rng.integers(1, 8)), int(rng.integers(1, 30))
        k = int(rng.integers(1, 2 * width + 2))
        scores = rng.choice(values, size=(m, width))
        big = 1 << 33 if rng.random() < 0.2 else 0
        ids = rng.permutation(1000)[: m * width].reshape(m, width).astype(np.int64) + big
        ids[rng.random((m, width)) < 0.2] = -1
        order = np.lexsort((ids, -scores, ids < 0), axis=-1)[:, :k]
        want_i = np.take_along_axis(ids, order, axis=1)
        want_s = np.where(want_i >= 0, np.take_along_axis(scores, order, axis=1), -np.inf)
        got_s, got_i = _sort_rows(scores, ids, k)
        n = min(k, width)
        np.testing.assert_array_equal(got_i[:, :n], want_i)
        np.testing.assert_array_equal(got_s[:, :n], want_s)
        assert (got_i[:, n:] == -1).all() and (got_s[:, n:] == -np.inf).all()


@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("block", [7, 64])
def test_torch_index_orders_ties_by_id_and_pads_as_merge_topk_does(block, on_device, monkeypatch):
    """Integer vectors: many exact ties. The torch index's rows are in the brute-force order (score
    descending, the smaller id first) with its scores; which of the ids tied at the k-th place make the
    cut is the search's choice, so the ids are compared exactly where the whole corpus fits (k >= 50,
    then padded)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-1, 2, size=(50, 8)).astype(np.float32)
    q = rng.integers(-1, 2, size=(9, 8)).astype(np.float32)
    monkeypatch.setattr(TorchIndex, "_ORDER_ON_DEVICE", on_device)  # True: the GPU's path, run by torch here
    idx = TorchIndex(8, device="cpu", block_size=block)
    idx.add(x)
    full = q @ x.T
    for k in (5, 50, 60):
        want_s, want_i = brute_topk([[(full[r, d], d) for d in range(50)] for r in range(9)], k)
        got_s, got_i = idx.search(q, k)
        assert got_s.shape == (9, k) and got_s.dtype == np.float32 and got_i.dtype == np.int64
        np.testing.assert_array_equal(got_s, want_s)
        valid = got_i >= 0
        np.testing.assert_array_equal(got_s[valid], full[np.nonzero(valid)[0], got_i[valid]])
        same_score = got_s[:, 1:] == got_s[:, :-1]
        assert np.all(got_i[:, 1:][same_score & valid[:, 1:]] > got_i[:, :-1][same_score & valid[:, 1:]])
        if k >= 50:
            np.testing.assert_array_equal(got_i, want_i)


def test_torch_index_takes_a_tensor_on_its_device_as_it_is():
    import torch

    x, q = data(1)
    idx = TorchIndex(32, device="cpu", block_size=700)
    idx.add(x)
    s1, i1 = idx.search(q, 20)
    s2, i2 = idx.search(torch.from_numpy(q), 20)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)
    with pytest.raises(ValueError, match="shape"):
        idx.search(torch.zeros(3, 31), 5)
