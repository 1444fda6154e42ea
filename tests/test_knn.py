"""The tiled two-stage top-k (ance.search.knn) equals a brute-force top-k, ties aside."""

import numpy as np
import pytest
import torch

from ance.search.index import TorchIndex
from ance.search.knn import block_search, exact_scores, tile_above, tile_topk


def _brute(q, c, k):
    s = q @ c.T
    order = np.lexsort((np.broadcast_to(np.arange(c.shape[0]), s.shape), -s), axis=1)[:, :k]
    return np.take_along_axis(s, order, axis=1), order


@pytest.mark.parametrize("b,k,group", [(4096, 10, 16), (4096, 64, 16), (1000, 10, 16), (8192, 200, 8)])
def test_tile_topk_equals_plain_topk(b, k, group):
    g = torch.Generator().manual_seed(b + k)
    s = torch.randn(37, b, generator=g)
    v, c = tile_topk(s.t().contiguous(), k, group)
    pv, pc = s.topk(min(k, b), dim=1)
    assert torch.equal(v, pv)
    assert torch.equal(torch.gather(s, 1, c), v)          # the columns hold those values
    assert all(set(a.tolist()) == set(b_.tolist()) for a, b_ in zip(c, pc))


def test_tile_topk_with_clustered_maxima():
    # all of the top-k in one group, and groups whose maxima tie: still exact (values)
    s = torch.zeros(3, 2048)
    s[:, 32:48] = torch.arange(16, dtype=torch.float32) + 10
    s[1, ::16] = 5.0
    v, c = tile_topk(s.t().contiguous(), 20, 16)
    assert torch.equal(v, s.topk(20, dim=1).values)


@pytest.mark.parametrize("n,block", [(5000, 1024), (3000, 700), (50, 64)])
def test_block_search_equals_brute_force(n, block):
    rng = np.random.default_rng(n)
    c = rng.standard_normal((n, 24)).astype(np.float32)
    q = rng.standard_normal((40, 24)).astype(np.float32)
    blocks = [torch.from_numpy(c[i : i + block]) for i in range(0, n, block)]
    k = 30
    s, i = block_search(torch.from_numpy(q), blocks, k)
    bs, bi = _brute(q, c, min(k, n))
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-5, atol=1e-5)
    assert np.array_equal(i.numpy(), bi)


def test_rescore_recomputes_the_same_scores_and_order():
    rng = np.random.default_rng(1)
    c = rng.standard_normal((4000, 16)).astype(np.float32)
    q = torch.from_numpy(rng.standard_normal((8, 16)).astype(np.float32))
    blocks = [torch.from_numpy(c[:2048]), torch.from_numpy(c[2048:])]
    s, i = block_search(q, blocks, 50)
    s2, i2 = block_search(q, blocks, 50, rescore=True)
    np.testing.assert_allclose(s.numpy(), s2.numpy(), rtol=1e-5, atol=1e-5)
    assert torch.equal(i, i2)


def test_torch_index_equals_brute_force_across_blocks_and_query_blocks():
    rng = np.random.default_rng(7)
    c = rng.standard_normal((70000, 8)).astype(np.float32)   # two default CPU blocks
    q = rng.standard_normal((300, 8)).astype(np.float32)
    idx = TorchIndex(8)
    idx.add(c[:40000]); idx.add(c[40000:])
    s, i = idx.search(q, 200)
    bs, bi = _brute(q, c, 200)
    np.testing.assert_allclose(s, bs, rtol=1e-5, atol=1e-5)
    assert (i == bi).mean() > 0.999   # float32 near-ties may swap neighbours


def test_tile_above_keeps_every_group_that_beats_the_floor():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 4096, generator=g)
    floor = s.topk(30, dim=1).values[:, -1]        # as if a running top-30 held these
    v, c = tile_above(s.t().contiguous(), floor, 30)
    assert torch.equal(torch.gather(s, 1, c)[v > float("-inf")], v[v > float("-inf")])
    for row in range(6):
        want = set((s[row] > floor[row]).nonzero().flatten().tolist())
        got = set(c[row][v[row] > float("-inf")].tolist())
        assert want <= got                          # nothing above the floor is lost
    assert tile_above(s.t().contiguous(), s.max(dim=1).values + 1, 30) is None


def test_block_search_many_blocks_uses_the_floor_path_and_stays_exact():
    rng = np.random.default_rng(11)
    c = rng.standard_normal((40 * 2048, 16)).astype(np.float32)
    q = rng.standard_normal((25, 16)).astype(np.float32)
    blocks = list(torch.from_numpy(c).split(2048))
    s, i = block_search(torch.from_numpy(q), blocks, 20, group=8)
    bs, bi = _brute(q, c, 20)
    np.testing.assert_allclose(s.numpy(), bs, rtol=1e-5, atol=1e-5)
    assert np.array_equal(i.numpy(), bi)


def test_exact_scores_across_blocks():
    rng = np.random.default_rng(5)
    c = rng.standard_normal((1000, 8)).astype(np.float32)
    q = rng.standard_normal((4, 8)).astype(np.float32)
    ids = torch.from_numpy(rng.integers(0, 1000, size=(4, 7)))
    got = exact_scores(torch.from_numpy(q), list(torch.from_numpy(c).split(300)), ids)
    want = np.einsum("qd,qkd->qk", q, c[ids.numpy()])
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_query_block_is_the_score_tile_width_search_uses():
    idx = TorchIndex(8, block_size=1024)
    assert idx.query_block == TorchIndex._SCORE_BUDGET              # empty: one row per block
    idx.add(np.zeros((300, 8), np.float32))
    assert idx.query_block == TorchIndex._SCORE_BUDGET // 300
    idx.add(np.zeros((2000, 8), np.float32))
    assert idx.query_block == TorchIndex._SCORE_BUDGET // 1024      # full blocks bound the tile


@pytest.mark.parametrize("rescore", [False, True])
def test_overlapped_selection_gives_the_same_top_k(rescore):
    """overlap=True queues each tile's product before the previous tile's selection (on a second stream on a
    GPU): on a CPU the same deferred order, which must give exactly the plain loop's results."""
    rng = np.random.default_rng(13)
    c = rng.standard_normal((30 * 2048 + 555, 16)).astype(np.float32)  # a short last block
    q = torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32))
    blocks = list(torch.from_numpy(c).split(2048))
    plain = block_search(q, blocks, 25, group=8, rescore=rescore)
    over = block_search(q, blocks, 25, group=8, rescore=rescore, overlap=True)
    assert torch.equal(plain[1], over[1]) and torch.equal(plain[0], over[0])
    one = block_search(q, blocks[:1], 25, group=8, overlap=True)  # a single tile: selected after the loop
    assert torch.equal(one[1], block_search(q, blocks[:1], 25, group=8)[1])


def test_torch_index_overlap_kernel_equals_tiles():
    rng = np.random.default_rng(17)
    c = rng.standard_normal((150000, 8)).astype(np.float32)   # three CPU blocks
    q = rng.standard_normal((90, 8)).astype(np.float32)
    tiles, over = TorchIndex(8, kernel="tiles"), TorchIndex(8, kernel="overlap")
    tiles.add(c); over.add(c)
    assert over.backend_name == "torch-cpu-overlap"
    assert TorchIndex(8).kernel == "tiles"  # auto: the tiles on a CPU, the overlapped tiles on a GPU
    s1, i1 = tiles.search(q, 50)
    s2, i2 = over.search(q, 50)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch has no CUDA GPU here")
def test_overlap_on_two_streams_equals_the_plain_loop_on_a_gpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    c = torch.nn.functional.normalize(torch.randn(40 * 65536, 64, device="cuda", generator=g), dim=1).half()
    q = torch.nn.functional.normalize(torch.randn(3000, 64, device="cuda", generator=g), dim=1).half()
    blocks = list(c.split(65536))
    plain = block_search(q, blocks, 100, rescore=True)
    over = block_search(q, blocks, 100, rescore=True, overlap=True)
    torch.cuda.synchronize()
    assert (plain[1] == over[1]).float().mean().item() == 1.0
    assert torch.equal(plain[0], over[0])
