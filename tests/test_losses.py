"""Losses and masks against slow references written as explicit loops over i, j."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ance.learn import losses
from ance.learn.distributed import gather_with_grad
from ance.learn.losses import BidirectionalInfoNCE, InfoNCE, gist_mask, positive_mask

T = 0.1


def reps(b: int, n_neg: int, dim: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, dim, generator=g, dtype=torch.float64), dim=-1)
    p = F.normalize(torch.randn(b * (1 + n_neg), dim, generator=g, dtype=torch.float64), dim=-1)
    return q.requires_grad_(), p.requires_grad_()


def random_mask(b: int, n_p: int, pos: torch.Tensor, seed: int, rate: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, n_p, generator=g) < rate
    m[torch.arange(b), pos] = False
    return m


def s(a, b):
    return torch.dot(a, b) / T


def ref_infonce(q, p, pos, mask=None):
    total = 0.0
    for i in range(q.shape[0]):
        z = 0.0
        for j in range(p.shape[0]):
            if mask is None or not mask[i, j]:
                z = z + torch.exp(s(q[i], p[j]))
        total = total - (s(q[i], p[pos[i]]) - torch.log(z))
    return total / q.shape[0]


def ref_bidirectional(q, p, pos, mask=None, q_mask=None):
    """The docstring's Z_i, term by term, with the mask rules spelled out per pair."""
    b = q.shape[0]
    drop = (lambda i, j: bool(mask[i, j])) if mask is not None else (lambda i, j: False)
    qdrop = (lambda i, j: bool(q_mask[i, j])) if q_mask is not None else (lambda i, j: False)
    total = 0.0
    for i in range(b):
        d_i = p[pos[i]]
        z = 0.0
        for j in range(p.shape[0]):  # [a]
            if not drop(i, j):
                z = z + torch.exp(s(q[i], p[j]))
        for j in range(b):
            if j == i:
                continue
            if not qdrop(i, j):  # [b]
                z = z + torch.exp(s(q[i], q[j]))
            if not drop(j, int(pos[i])) and pos[j] != pos[i]:  # [c] d_i is not q_j's positive
                z = z + torch.exp(s(q[j], d_i))
            if not drop(i, int(pos[j])) and pos[j] != pos[i]:  # [d] d_j is not query i's positive
                z = z + torch.exp(s(p[pos[j]], d_i))
        total = total - (s(q[i], d_i) - torch.log(z))
    return total / b


def ref_bidirectional_by_doc_ids(q, p, pos, doc_ids, positives):
    """Same loss defined on documents: no labelled positive of a query ever counts as its negative."""
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        d_i, doc_i = p[pos[i]], int(doc_ids[pos[i]])
        z = torch.exp(s(q[i], d_i))
        for j in range(p.shape[0]):  # [a]
            if int(doc_ids[j]) not in positives[i] | {doc_i}:
                z = z + torch.exp(s(q[i], p[j]))
        for j in range(b):
            if j == i:
                continue
            doc_j = int(doc_ids[pos[j]])
            z = z + torch.exp(s(q[i], q[j]))  # [b]
            if doc_i not in positives[j] | {doc_j}:  # [c]
                z = z + torch.exp(s(q[j], d_i))
            if doc_j not in positives[i] | {doc_i}:  # [d]
                z = z + torch.exp(s(p[pos[j]], d_i))
        total = total - (s(q[i], d_i) - torch.log(z))
    return total / b


def assert_same_loss_and_grads(fast, slow, q, p):
    gq_f, gp_f = torch.autograd.grad(fast, (q, p))
    gq_s, gp_s = torch.autograd.grad(slow, (q, p))
    torch.testing.assert_close(fast.double(), slow.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gq_f.double(), gq_s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gp_f.double(), gp_s, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- InfoNCE


@pytest.mark.parametrize("n_neg", [0, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_infonce_matches_loop_reference(n_neg, masked):
    b = 4
    q, p = reps(b, n_neg, seed=n_neg)
    pos = torch.arange(b)
    mask = random_mask(b, p.shape[0], pos, seed=5) if masked else None
    assert_same_loss_and_grads(InfoNCE(T)(q, p, pos, mask), ref_infonce(q, p, pos, mask), q, p)


def test_infonce_with_shuffled_positions_and_float32():
    q, p = reps(3, 1, seed=2)
    pos = torch.tensor([4, 0, 2])
    got = InfoNCE(T)(q.float(), p.float(), pos)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_infonce(q, p, pos), rtol=1e-5, atol=1e-6)


def test_infonce_masking_everything_but_the_positive_gives_zero():
    q, p = reps(3, 1)
    pos = torch.arange(3)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[torch.arange(3), pos] = False
    assert float(InfoNCE(T)(q, p, pos, mask).detach()) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- BidirectionalInfoNCE


@pytest.mark.parametrize("n_neg", [0, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_bidirectional_matches_loop_reference(n_neg, masked):
    b = 4
    q, p = reps(b, n_neg, seed=10 + n_neg)
    pos = torch.arange(b)
    mask = random_mask(b, p.shape[0], pos, seed=6) if masked else None
    q_mask = None
    if masked:
        q_mask = torch.zeros(b, b, dtype=torch.bool)
        q_mask[0, 2] = q_mask[2, 0] = True
    fast = BidirectionalInfoNCE(T)(q, p, pos, mask, q_mask)
    assert_same_loss_and_grads(fast, ref_bidirectional(q, p, pos, mask, q_mask), q, p)


def test_bidirectional_without_masks_is_gte_formula():
    # The four sums over the whole batch, written once more as GTE's paper does
    # for in-batch negatives only: P = B, pos = arange.
    b = 3
    q, p = (t.detach() for t in reps(b, 0, seed=3))
    e = lambda a, c: math.exp(float(torch.dot(a, c)) / T)  # noqa: E731
    total = 0.0
    for i in range(b):
        z = sum(e(q[i], p[j]) for j in range(b)) + sum(e(q[i], q[j]) + e(q[j], p[i]) + e(p[j], p[i])
                                                       for j in range(b) if j != i)
        total += -math.log(e(q[i], p[i]) / z)
    got = BidirectionalInfoNCE(T)(q, p, torch.arange(b)).detach()
    assert got.dtype == torch.float64 and float(got) == pytest.approx(total / b, rel=1e-9)


def test_bidirectional_with_positive_mask_never_uses_a_positive_as_negative():
    # 4 queries, 1 hard negative each. Query 2 has positives {12, 16}; doc 16 is
    # query 3's hard negative. Query 1's positive (11) is also query 0's hard
    # negative, and queries 0 and 3 share positive doc 10 (duplicate rows 0 and 3).
    b = 4
    q, p = reps(b, 1, seed=4)
    doc_ids = torch.tensor([10, 11, 12, 10, 11, 20, 21, 16])
    positives = [{10}, {11}, {12, 16}, {10}]
    pos = torch.arange(b)
    mask = positive_mask(positives, doc_ids, pos)
    fast = BidirectionalInfoNCE(T)(q, p, pos, mask)
    slow = ref_bidirectional_by_doc_ids(q, p, pos, doc_ids, positives)
    assert_same_loss_and_grads(fast, slow, q, p)


def test_bidirectional_shared_positive_row_is_not_a_negative():
    # Two queries pointing at the same passage row: neither direction may use it as a negative.
    q, p = reps(3, 1, seed=8)
    pos = torch.tensor([0, 0, 2])
    doc_ids = torch.tensor([7, 8, 9, 30, 31, 32])
    positives = [{7}, {7}, {9}]
    fast = BidirectionalInfoNCE(T)(q, p, pos)
    assert_same_loss_and_grads(fast, ref_bidirectional_by_doc_ids(q, p, pos, doc_ids, positives), q, p)


# --------------------------------------------------------------------------- masks


def test_positive_mask_multiple_positives_and_in_batch_duplicates():
    # rows: positives of q0..q2, then one negative each
    doc_ids = torch.tensor([100, 101, 102, 101, 105, 100])
    pos = torch.arange(3)
    positives = [{100, 105}, np.array([101]), {102, 100}]
    mask = positive_mask(positives, doc_ids, pos)
    expected = torch.zeros(3, 6, dtype=torch.bool)
    for i, docs in enumerate(positives):
        for j in range(6):
            expected[i, j] = int(doc_ids[j]) in set(np.asarray(list(docs)).tolist()) and j != pos[i]
    assert torch.equal(mask, expected)
    assert mask.dtype == torch.bool
    # q0: its second positive 105 (a hard negative of q1) and the duplicate of its positive (row 5)
    assert mask[0].nonzero().flatten().tolist() == [4, 5]
    # q1: the duplicate of its positive in row 3; q2: its other positive 100 in rows 0 and 5
    assert mask[1].nonzero().flatten().tolist() == [3]
    assert mask[2].nonzero().flatten().tolist() == [0, 5]


def test_positive_mask_counts_the_trained_positive_even_if_unlisted():
    doc_ids = torch.tensor([1, 2, 1, 3])
    mask = positive_mask([set(), {2}], doc_ids, torch.tensor([0, 1]))
    assert mask.tolist() == [[False, False, True, False], [False, False, False, False]]


@pytest.mark.parametrize("margin", [0.0, 0.1, -0.05])
def test_gist_mask_matches_loop_reference(margin):
    g = torch.Generator().manual_seed(9)
    gq, gp = torch.randn(5, 6, generator=g), torch.randn(10, 6, generator=g)
    pos = torch.tensor([0, 1, 2, 3, 4])
    mask = gist_mask(gq, gp, pos, margin=margin)
    for i in range(5):
        s_pos = F.cosine_similarity(gq[i], gp[pos[i]], dim=0)
        for j in range(10):
            s_ij = F.cosine_similarity(gq[i], gp[j], dim=0)
            want = j != pos[i] and bool(s_ij > s_pos - margin)
            assert bool(mask[i, j]) == want, (i, j)
    assert not mask[torch.arange(5), pos].any()


def test_gist_mask_drops_what_the_guide_ranks_above_the_positive():
    gq = torch.tensor([[1.0, 0.0]])
    gp = torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.0, 1.0], [0.79, 0.61]])
    assert gist_mask(gq, gp, torch.tensor([0])).tolist() == [[False, True, False, False]]
    assert gist_mask(gq, gp, torch.tensor([0]), margin=0.05).tolist() == [[False, True, False, True]]


# --------------------------------------------------------------------------- validation


def test_gather_with_grad_is_reexported_and_identity_without_a_group():
    assert losses.gather_with_grad is gather_with_grad
    t = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(t) is t


@pytest.mark.parametrize("cls", [InfoNCE, BidirectionalInfoNCE])
def test_temperature_validation(cls):
    for bad in (0, -0.1, float("nan"), float("inf"), "warm", None):
        with pytest.raises(ValueError, match="temperature"):
            cls(bad)
    assert cls(0.02).temperature == 0.02


@pytest.mark.parametrize("cls", [InfoNCE, BidirectionalInfoNCE])
def test_forward_validation(cls):
    loss = cls(T)
    q, p = torch.randn(3, 4), torch.randn(6, 4)
    pos = torch.arange(3)
    with pytest.raises(ValueError, match="2-d"):
        loss(q[0], p, pos)
    with pytest.raises(ValueError, match="same dimension"):
        loss(q, torch.randn(6, 5), pos)
    with pytest.raises(ValueError, match="floating point"):
        loss(q.long(), p.long(), pos)
    with pytest.raises(ValueError, match="integer"):
        loss(q, p, pos.float())
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        loss(q, p, torch.arange(4))
    with pytest.raises(ValueError, match=r"in \[0, 6\)"):
        loss(q, p, torch.tensor([0, 1, 6]))
    with pytest.raises(ValueError, match=r"in \[0, 6\)"):
        loss(q, p, torch.tensor([-1, 1, 2]))
    with pytest.raises(ValueError, match="bool"):
        loss(q, p, pos, torch.zeros(3, 6))
    with pytest.raises(ValueError, match=r"shape \[3, 6\]"):
        loss(q, p, pos, torch.zeros(3, 5, dtype=torch.bool))
    bad = torch.zeros(3, 6, dtype=torch.bool)
    bad[1, 1] = True
    with pytest.raises(ValueError, match=r"drops the positive of queries \[1\]"):
        loss(q, p, pos, bad)


def test_bidirectional_q_mask_validation():
    q, p = torch.randn(3, 4), torch.randn(6, 4)
    with pytest.raises(ValueError, match=r"q_mask must have shape \[3, 3\]"):
        BidirectionalInfoNCE(T)(q, p, torch.arange(3), q_mask=torch.zeros(3, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="q_mask must be a bool"):
        BidirectionalInfoNCE(T)(q, p, torch.arange(3), q_mask=torch.zeros(3, 3))


def test_mask_helper_validation():
    with pytest.raises(ValueError, match="passage_doc_ids"):
        positive_mask([{1}], torch.tensor([[1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        positive_mask([{1}], torch.tensor([1.0, 2.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        positive_mask([{1}, {2}], torch.tensor([1, 2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="margin"):
        gist_mask(torch.randn(2, 3), torch.randn(4, 3), torch.arange(2), margin="wide")
    with pytest.raises(ValueError, match="pos_index"):
        gist_mask(torch.randn(2, 3), torch.randn(4, 3), torch.tensor([0, 4]))
