"""The fused k-NN (ance.search.fused): the filter's contract by hand, the driver against a brute force on
the CPU (through the torch filter), overflow handled; on a CUDA GPU with Triton the kernel against the
torch filter and the search against the tiled one."""

import numpy as np
import pytest
import torch

from ance.search import fused
from ance.search.fused import filter_above_torch, fused_search
from ance.search.index import TorchIndex
from ance.search.knn import block_search


def _brute(q, c, k):
    s = q @ c.T
    order = np.lexsort((np.broadcast_to(np.arange(c.shape[0]), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order


def test_filter_appends_what_beats_the_floor_by_hand():
    block = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])          # rows 0..2
    queries = torch.tensor([[2.0, 0.0], [0.0, 3.0]])                     # scores: q0 2,0,2  q1 0,3,3
    floor = torch.tensor([1.0, 3.0])                                     # q1's 3s tie the floor: left out
    counts = torch.tensor([1, 0], dtype=torch.int32)                     # q0 already holds one candidate
    values = torch.full((2, 3), -9.0)
    rows = torch.full((2, 3), -1, dtype=torch.int32)
    filter_above_torch(block, queries, floor, 100, counts, values, rows)
    assert counts.tolist() == [3, 0]
    assert values[0].tolist() == [-9.0, 2.0, 2.0] and rows[0].tolist() == [-1, 100, 102]
    assert values[1].tolist() == [-9.0] * 3


def test_filter_counts_past_the_cap_and_keeps_the_slots():
    block = torch.eye(4)
    queries = torch.ones(1, 4)
    counts = torch.zeros(1, dtype=torch.int32)
    values = torch.full((1, 2), -1.0)
    rows = torch.zeros((1, 2), dtype=torch.int32)
    filter_above_torch(block, queries, torch.tensor([0.5]), 0, counts, values, rows)
    assert counts.item() == 4 and values.tolist() == [[1.0, 1.0]] and rows.tolist() == [[0, 1]]


@pytest.mark.parametrize("n,block,k,cap", [(6000, 512, 20, 64), (3000, 700, 50, 1024), (2500, 256, 200, 8)])
def test_fused_search_equals_brute_force(n, block, k, cap):
    rng = np.random.default_rng(n + k)
    c = rng.standard_normal((n, 24)).astype(np.float32)
    q = rng.standard_normal((33, 24)).astype(np.float32)
    blocks = [torch.from_numpy(c[i : i + block]) for i in range(0, n, block)]
    s, i = fused_search(torch.from_numpy(q), blocks, k, cap=cap, filter_fn=filter_above_torch)
    bs, bi = _brute(q, c, min(k, n))
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-5, atol=1e-5)
    assert np.array_equal(i.numpy(), bi)


def test_overflow_is_searched_again_not_lost():
    # every later block beats the floor for query 0 (ascending scores): cap 4 overflows, the result stands
    n, k = 4096, 10
    c = np.zeros((n, 4), np.float32)
    c[:, 0] = np.arange(n, dtype=np.float32) / n
    c[:, 1] = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    q = np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], np.float32)
    blocks = [torch.from_numpy(c[i : i + 512]) for i in range(0, n, 512)]
    calls = []

    def spy(*a):
        calls.append(1)
        filter_above_torch(*a)

    s, i = fused_search(torch.from_numpy(q), blocks, k, cap=4, filter_fn=spy)
    bs, bi = _brute(q, c, k)
    assert calls and np.array_equal(i.numpy(), bi)
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-6)


def test_torch_index_fused_kernel_equals_tiles_on_cpu():
    rng = np.random.default_rng(3)
    c = rng.standard_normal((5000, 16)).astype(np.float32)
    q = rng.standard_normal((70, 16)).astype(np.float32)
    a, b = TorchIndex(16, block_size=512, kernel="fused"), TorchIndex(16, block_size=512, kernel="tiles")
    for idx in (a, b):
        idx.add(c)
    (sa, ia), (sb, ib) = a.search(q, 40), b.search(q, 40)
    assert np.array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=1e-5, atol=1e-5)
    assert TorchIndex(16).kernel == "tiles"            # auto on the CPU: the tiles
    with pytest.raises(ValueError, match="kernel"):
        TorchIndex(16, kernel="cuda-magic")


gpu = pytest.mark.skipif(not fused.fused_available("cuda") if torch.cuda.is_available() else True,
                         reason="needs a CUDA GPU with Triton (run on the device: tests/test_fused_knn.py)")


@gpu
def test_triton_kernel_equals_torch_filter_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    block = torch.randn(3000, 384, device="cuda", generator=g).half()
    queries = torch.randn(300, 384, device="cuda", generator=g).half()
    floor = torch.quantile((block.float() @ queries.float().T)[:, :], 0.995, dim=0).float()
    outs = []
    for fn in (fused.filter_above, filter_above_torch):
        counts = torch.zeros(300, dtype=torch.int32, device="cuda")
        values = torch.full((300, 64), float("-inf"), device="cuda")
        rows = torch.full((300, 64), -1, dtype=torch.int32, device="cuda")
        fn(block, queries, floor, 7, counts, values, rows)
        order = rows.long().sort(dim=1).indices       # slot order differs (atomics): compare as sets
        outs.append((counts.cpu(), rows.gather(1, order).cpu(), values.gather(1, order).cpu()))
    assert torch.equal(outs[0][0], outs[1][0])
    assert torch.equal(outs[0][1], outs[1][1])
    torch.testing.assert_close(outs[0][2], outs[1][2], rtol=1e-3, atol=1e-3)


@gpu
def test_fused_search_equals_tiled_search_on_gpu():
    g = torch.Generator(device="cuda").manual_seed(1)
    corpus = torch.nn.functional.normalize(torch.randn(300_000, 384, device="cuda", generator=g), dim=1).half()
    q = torch.nn.functional.normalize(torch.randn(1000, 384, device="cuda", generator=g), dim=1).half()
    blocks = list(corpus.split(32768))
    exact_s, exact_i = (q.float() @ corpus.float().T).topk(100, dim=1)
    for s, i in (fused_search(q, blocks, 100), block_search(q, blocks, 100, rescore=True)):
        # float16 scores choose among near-ties at the 100th place (2026-12-05, H200: 0.998 of the members)
        same = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(i.tolist(), exact_i.tolist())])
        assert same > 0.995
        torch.testing.assert_close(s[:, :90], exact_s[:, :90], rtol=2e-3, atol=2e-3)
