"""GradCache against an ordinary backward pass, on a tiny random BERT (CPU, fp32).

With dropout on, a chunked encoder draws different dropout masks than one
forward of the whole batch (the RNG is consumed chunk by chunk, layer by layer),
so GradCache with chunk size c is compared with ``plain_step(chunk_size=c)``:
the same chunks encoded with autograd on and one backward. That is exactly the
computation GradCache claims to reproduce, and with dropout off it equals the
unchunked whole-batch step (tested too).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from ance.learn.gradcache import GradCache, RandContext, plain_step
from ance.learn.losses import BidirectionalInfoNCE, InfoNCE, positive_mask

B, N_NEG, Q_LEN, P_LEN = 6, 1, 7, 11
P = B * (1 + N_NEG)


class TinyEncoder(nn.Module):
    """Random 2-layer BERT, mean pooling, L2-normalised; ``kind`` picks the token type."""

    def __init__(self, dropout: float = 0.1):
        super().__init__()
        cfg = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         vocab_size=200, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        self.bert = BertModel(cfg, add_pooling_layer=False)

    def forward(self, input_ids, attention_mask, token_type_ids=None, kind="query"):
        if kind not in ("query", "passage"):
            raise ValueError(kind)
        if token_type_ids is None:  # queries and passages differ, so a swapped kind would show
            token_type_ids = torch.full_like(input_ids, int(kind == "passage"))
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                        token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(out.dtype)
        return F.normalize((out * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def tokens(n: int, length: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(1, 200, (n, length), generator=gen)
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    return tokens(B, Q_LEN, gen), tokens(P, P_LEN, gen)


def make_model(dropout: float = 0.1) -> TinyEncoder:
    torch.manual_seed(0)
    return TinyEncoder(dropout).train()


def run_step(step, dropout=0.1, seed=123, lr=0.5):
    """One SGD step from a fixed init and RNG state; returns (loss, grads, params after the step)."""
    model = make_model(dropout)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    torch.manual_seed(seed)
    loss = step(model)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    return loss, grads, params


def assert_tensors_close(a: dict, b: dict, rel: float = 1e-5) -> None:
    """Per tensor, |a - b| <= rel * |b|, with a floor for tensors whose true value is ~0
    (e.g. the attention key bias, whose gradient is zero up to rounding)."""
    assert a.keys() == b.keys()
    floor = 1e-3 * rel * torch.cat([t.flatten() for t in b.values()]).norm()
    for name in a:
        diff = (a[name] - b[name]).norm()
        scale = b[name].norm()
        assert diff <= rel * scale + floor, f"{name}: |diff| {diff:.3g} vs |ref| {scale:.3g}"


# --------------------------------------------------------------------------- RandContext


def test_rand_context_replays_dropout_and_leaves_rng_alone():
    x = torch.ones(64, 64)
    torch.manual_seed(7)
    ctx = RandContext(x)
    first = F.dropout(x, 0.5)
    after_first = torch.get_rng_state()
    with ctx:
        replay = F.dropout(x, 0.5)
    assert torch.equal(first, replay)
    assert torch.equal(torch.get_rng_state(), after_first), "the block must not move the outer RNG"
    with ctx:  # re-entrant: replays from the same state again
        assert torch.equal(F.dropout(x, 0.5), first)
    assert not torch.equal(F.dropout(x, 0.5), first)


def test_rand_context_replays_a_bert_forward(batch):
    queries, _ = batch
    model = make_model()
    torch.manual_seed(3)
    ctx = RandContext(*queries.values())
    with torch.no_grad():
        a = model(**queries, kind="query")
    with ctx:
        b = model(**queries, kind="query")
    c = model(**queries, kind="query")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c), "dropout is on, a fresh forward must differ"


def test_rand_context_refuses_nesting():
    ctx = RandContext()
    with ctx:
        with pytest.raises(RuntimeError, match="already entered"):
            ctx.__enter__()


# --------------------------------------------------------------------------- GradCache == plain step


@pytest.mark.parametrize("chunk", [1, 3, P])
def test_gradcache_matches_plain_step_with_dropout(batch, chunk):
    queries, passages = batch
    loss_fn = InfoNCE(0.05)
    pos = torch.arange(B)
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=chunk, pos_index=pos))
    got = run_step(lambda m: GradCache(m, loss_fn, chunk).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])
    assert_tensors_close(got[2], ref[2])
    if chunk == P:  # one chunk per side: also the unchunked plain step, dropout included
        whole = run_step(lambda m: plain_step(m, loss_fn, queries, passages, pos_index=pos))
        assert_tensors_close(got[1], whole[1])


@pytest.mark.parametrize("chunk", [4, 13])
def test_gradcache_with_eight_negatives_a_query_matches_plain_step(chunk):
    """negatives.n_per_query=8: B positives then 8 hard negatives a query, the trainer's layout."""
    gen = torch.Generator().manual_seed(8)
    queries, passages = tokens(B, Q_LEN, gen), tokens(B * 9, P_LEN, gen)
    loss_fn = InfoNCE(0.05)
    pos = torch.arange(B)
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=chunk, pos_index=pos))
    got = run_step(lambda m: GradCache(m, loss_fn, chunk).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])
    assert float(got[0]) > float(run_step(lambda m: GradCache(m, loss_fn, chunk).step(
        queries, {k: v[: B * 2] for k, v in passages.items()}, pos_index=pos))[0]), "more negatives, higher loss"


@pytest.mark.parametrize("tokens", [P_LEN, 2 * P_LEN + 1, 10 * P_LEN])
def test_gradcache_by_token_budget_matches_plain_step_with_dropout(batch, tokens):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=1, chunk_tokens=tokens,
                                        pos_index=pos))
    got = run_step(lambda m: GradCache(m, loss_fn, 1, chunk_tokens=tokens).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])
    assert_tensors_close(got[2], ref[2])


def test_dropout_is_on_in_these_tests(batch):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    a = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos), seed=1)
    b = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos), seed=2)
    assert abs(float(a[0]) - float(b[0])) > 1e-4


@pytest.mark.parametrize("chunk", [1, 3])
def test_gradcache_matches_whole_batch_without_dropout(batch, chunk):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, pos_index=pos), dropout=0.0)
    got = run_step(lambda m: GradCache(m, loss_fn, chunk).step(queries, passages, pos_index=pos), dropout=0.0)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])
    assert_tensors_close(got[2], ref[2])


@pytest.mark.parametrize("loss_cls", [InfoNCE, BidirectionalInfoNCE])
def test_gradcache_with_hard_negatives_and_mask(batch, loss_cls):
    queries, passages = batch
    loss_fn = loss_cls(0.05)
    pos = torch.arange(B)
    # doc ids: query 0's hard negative duplicates query 1's positive; query 2's second
    # positive (16) is query 3's hard negative
    doc_ids = torch.tensor([10, 11, 12, 13, 14, 15, 11, 20, 21, 16, 22, 23])
    mask = positive_mask([{10}, {11}, {12, 16}, {13}, {14}, {15}], doc_ids, pos)
    assert mask.nonzero().tolist() == [[1, 6], [2, 9]]
    kwargs = {"pos_index": pos, "mask": mask}
    if loss_cls is BidirectionalInfoNCE:  # say queries 0 and 3 are duplicates
        q_mask = torch.zeros(B, B, dtype=torch.bool)
        q_mask[0, 3] = q_mask[3, 0] = True
        kwargs["q_mask"] = q_mask
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=3, **kwargs))
    got = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, **kwargs))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])
    assert_tensors_close(got[2], ref[2])
    unmasked = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos))
    assert abs(float(unmasked[0]) - float(got[0])) > 1e-4, "the mask must change the loss"


def test_gradients_accumulate_across_steps(batch):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    model = make_model(dropout=0.0)
    gc = GradCache(model, loss_fn, 4)
    gc.step(queries, passages, pos_index=pos)
    once = {n: p.grad.clone() for n, p in model.named_parameters()}
    gc.step(queries, passages, pos_index=pos)
    assert_tensors_close({n: p.grad for n, p in model.named_parameters()}, {n: 2 * g for n, g in once.items()})


# --------------------------------------------------------------------------- precision


def test_bf16_autocast_on_cpu_is_close_to_fp32(batch):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    fp32 = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos))
    bf16 = run_step(lambda m: GradCache(m, loss_fn, 3, autocast_dtype=torch.bfloat16,
                                        device_type="cpu").step(queries, passages, pos_index=pos))
    assert bf16[0].dtype == torch.float32 and torch.isfinite(bf16[0])
    assert abs(float(bf16[0]) - float(fp32[0])) < 0.05 * abs(float(fp32[0]))
    g32 = torch.cat([g.flatten() for g in fp32[1].values()])
    g16 = torch.cat([g.flatten() for g in bf16[1].values()])
    assert torch.isfinite(g16).all()
    assert F.cosine_similarity(g32, g16, dim=0) > 0.95


@pytest.mark.parametrize("chunk", [1, 3])
def test_bf16_gradcache_matches_the_bf16_plain_step(batch, chunk):
    """Under autocast GradCache casts each weight once per phase and runs every chunk's
    backward through that one cast: the gradients are those of the plain step at bf16."""
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    amp = {"autocast_dtype": torch.bfloat16, "device_type": "cpu"}
    ref = run_step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=chunk, pos_index=pos, **amp))
    got = run_step(lambda m: GradCache(m, loss_fn, chunk, **amp).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-3, atol=0)
    assert got[1].keys() == ref[1].keys()
    assert all(g.dtype == torch.float32 for g in got[1].values())
    assert_tensors_close(got[1], ref[1], rel=1e-2)


def test_scaler_scales_the_parameter_gradients(batch):
    queries, passages = batch
    loss_fn, pos = InfoNCE(0.05), torch.arange(B)
    ref = run_step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos))
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    got = run_step(lambda m: GradCache(m, loss_fn, 3, scaler=scaler).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0])  # the returned loss is not scaled
    assert_tensors_close({n: g / 256.0 for n, g in got[1].items()}, ref[1])


# --------------------------------------------------------------------------- arguments


def test_argument_validation(batch):
    queries, passages = batch
    model = make_model()
    for bad in (0, -1, 2.0, None, True):
        with pytest.raises(ValueError, match="chunk_size"):
            GradCache(model, InfoNCE(), bad)
    with pytest.raises(ValueError, match="autocast_dtype"):
        GradCache(model, InfoNCE(), 2, autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="device_type"):
        GradCache(model, InfoNCE(), 2, device_type="tpu")
    gc = GradCache(model, InfoNCE(), 2)
    with pytest.raises(ValueError, match="same first dimension"):
        gc.step({"input_ids": queries["input_ids"], "attention_mask": queries["attention_mask"][:2]}, passages,
                pos_index=torch.arange(B))
    with pytest.raises(ValueError, match="non-empty dict"):
        gc.step({}, passages, pos_index=torch.arange(B))
    with pytest.raises(ValueError, match="chunk_size must be a positive integer or None"):
        plain_step(model, InfoNCE(), queries, passages, chunk_size=-1, pos_index=torch.arange(B))
    with pytest.raises(ValueError, match="scalar"):
        GradCache(model, lambda q, p: q @ p.T, 2).step(queries, passages)


def test_plan_sorts_longest_first_and_cuts_only_trailing_padding():
    from ance.learn.gradcache import _plan, _unsort

    ids = torch.tensor([[101, 7, 102, 0, 0, 0], [101, 5, 6, 102, 0, 0], [101, 1, 2, 3, 4, 102]])
    inputs = {"input_ids": ids, "attention_mask": (ids != 0).long()}
    chunks, inverse = _plan(inputs, 2)
    assert [c["input_ids"].shape for c in chunks] == [(2, 6), (1, 3)]
    assert torch.equal(chunks[0]["input_ids"], ids[[2, 1]])          # longest first
    assert torch.equal(chunks[1]["input_ids"], ids[[0], :3])         # cut to its own width
    rows = torch.cat([c["input_ids"][:, :3] for c in chunks])
    assert torch.equal(_unsort(rows, inverse), ids[:, :3])           # inverse restores the order
    # already sorted: views, no permutation
    chunks, inverse = _plan({"input_ids": ids[[2, 1, 0]], "attention_mask": (ids[[2, 1, 0]] != 0).long()}, 2)
    assert inverse is None and chunks[1]["input_ids"].shape == (1, 3)
    # a token budget packs rows while rows x the chunk's width fits: 6 | 4, 3 -> widths 6 and 4
    chunks, inverse = _plan(inputs, 99, tokens=8)
    assert [c["input_ids"].shape for c in chunks] == [(1, 6), (2, 4)]
    assert torch.equal(_unsort(torch.cat([c["input_ids"][:, :3] for c in chunks]), inverse), ids[:, :3])
    chunks, _ = _plan(inputs, 99, tokens=1)                         # at least one row a chunk
    assert [c["input_ids"].shape[0] for c in chunks] == [1, 1, 1]
    with pytest.raises(ValueError, match="chunk_tokens"):
        GradCache(make_model(), InfoNCE(), 2, chunk_tokens=0)
    # left padding is never cut: cutting leading columns would move the tokens' positions
    left = torch.tensor([[0, 0, 101, 5, 102], [0, 101, 5, 6, 102]])
    (chunk,), inverse = _plan({"input_ids": left, "attention_mask": (left != 0).long()}, 2)
    assert chunk["input_ids"].shape == (2, 5) and inverse is None
