"""GradCache under DistributedDataParallel: 2 CPU processes (gloo) against one process.

Each rank holds half of the global batch and runs GradCache with chunk size 2;
the loss and the gradients after DDP's averaging must equal those of one process
running ``plain_step`` on the whole batch.

Dropout is OFF here (both BERT dropout probabilities are 0): every rank has its
own RNG stream, so with dropout on the ranks would draw other masks than the
single process does and no exact comparison would be possible. Dropout replay
is covered by tests/test_gradcache.py.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from ance.learn import distributed as du
from ance.learn.gradcache import GradCache, plain_step
from ance.learn.losses import BidirectionalInfoNCE, InfoNCE, positive_mask
from test_gradcache import TinyEncoder, assert_tensors_close, tokens

WORLD = 2
B_LOCAL, N_NEG, CHUNK = 3, 1, 2  # 3 queries -> chunks 2+1; 6 passages -> 2+2+2: five re-forwards per rank
P_LOCAL = B_LOCAL * (1 + N_NEG)
# Global layout is rank-major: rank r holds queries [3r, 3r+3) and passage rows [6r, 6r+6),
# its 3 positives then its 3 hard negatives.
POS_INDEX = torch.tensor([r * P_LOCAL + i for r in range(WORLD) for i in range(B_LOCAL)])
# Rank 1's first hard negative (row 9) is query 0's positive (doc 10), a cross-rank duplicate;
# query 2's second positive (doc 23) is rank 1's second hard negative (row 10).
DOC_IDS = torch.tensor([10, 11, 12, 20, 21, 22, 13, 14, 15, 10, 23, 24])
POSITIVES = [{10}, {11}, {12, 23}, {13}, {14}, {15}]


def global_batch():
    gen = torch.Generator().manual_seed(11)
    queries = tokens(WORLD * B_LOCAL, 6, gen)
    passages = tokens(WORLD * P_LOCAL, 9, gen)
    for k in passages:  # the duplicate document has the same tokens
        passages[k][9] = passages[k][0]
    return queries, passages


def make_model():
    torch.manual_seed(0)
    return TinyEncoder(dropout=0.0).train()


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


LOSSES = {"infonce": InfoNCE(0.05), "bidirectional": BidirectionalInfoNCE(0.05)}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        results = {"is_distributed": du.is_distributed(), "rank": du.rank(), "world": du.world_size()}
        queries, passages = global_batch()
        q_local = {k: v[rank * B_LOCAL:(rank + 1) * B_LOCAL] for k, v in queries.items()}
        p_local = {k: v[rank * P_LOCAL:(rank + 1) * P_LOCAL] for k, v in passages.items()}
        mask = positive_mask(POSITIVES, DOC_IDS, POS_INDEX)
        model = make_model()
        ddp = DistributedDataParallel(model)
        for name, loss_fn in LOSSES.items():
            ddp.zero_grad(set_to_none=True)
            loss = GradCache(ddp, loss_fn, CHUNK).step(q_local, p_local, pos_index=POS_INDEX, mask=mask)
            results[name] = (loss, grads_of(model))
        # the trainer's chunk_size=None path: one forward per side, one backward, under DDP
        ddp.zero_grad(set_to_none=True)
        loss = plain_step(ddp, LOSSES["infonce"], q_local, p_local, pos_index=POS_INDEX, mask=mask)
        results["plain"] = (loss, grads_of(model))

        # gather_with_grad: rank order, gradient only into the local slice
        t = torch.full((2, 3), float(rank), requires_grad=True)
        g = du.gather_with_grad(t)
        (g * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        results["gather"] = (g.detach(), t.grad)
        try:
            du.gather_with_grad(torch.zeros(rank + 1, 3))
        except ValueError as e:
            results["gather_error"] = str(e)
        results["objects"] = du.gather_object({"rank": rank})
        results["broadcast"] = du.broadcast_object(f"from {rank}", src=1)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_workers(tmp_path: Path, deadline_s: float = 150.0) -> list[dict]:
    ctx = mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=False)
    start = time.monotonic()
    try:
        while not ctx.join(timeout=1.0):  # raises ProcessRaisedException with the worker's traceback
            if time.monotonic() - start > deadline_s:
                pytest.fail(f"DDP workers did not finish within {deadline_s}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def worker_results(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("ddp"))


def reference(loss_fn):
    queries, passages = global_batch()
    model = make_model()
    mask = positive_mask(POSITIVES, DOC_IDS, POS_INDEX)
    loss = plain_step(model, loss_fn, queries, passages, pos_index=POS_INDEX, mask=mask)
    return loss, grads_of(model)


def test_mask_spans_ranks():
    mask = positive_mask(POSITIVES, DOC_IDS, POS_INDEX)
    assert mask.nonzero().tolist() == [[0, 9], [2, 10]]


@pytest.mark.parametrize("name", ["infonce", "bidirectional", "plain"])
def test_ddp_gradcache_matches_single_process(worker_results, name):
    ref_loss, ref_grads = reference(LOSSES["infonce" if name == "plain" else name])
    for rank, res in enumerate(worker_results):
        loss, grads = res[name]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0, msg=f"rank {rank}")
        assert_tensors_close(grads, ref_grads)


def test_helpers_under_a_process_group(worker_results):
    for rank, res in enumerate(worker_results):
        assert (res["is_distributed"], res["rank"], res["world"]) == (True, rank, WORLD)
        gathered, grad = res["gather"]
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
        # d(sum_k w_k g_k)/dt for the local rows only: weights 1,2 on rank 0 and 3,4 on rank 1
        assert grad[:, 0].tolist() == ([1.0, 2.0] if rank == 0 else [3.0, 4.0])
        assert "same shape on every rank" in res["gather_error"] and "[(1, 3), (2, 3)]" in res["gather_error"]
        assert res["objects"] == [{"rank": 0}, {"rank": 1}]
        assert res["broadcast"] == "from 1"


def test_helpers_without_a_process_group():
    assert not du.is_distributed() and du.rank() == 0 and du.world_size() == 1
    t = torch.randn(2, 2)
    assert du.gather_with_grad(t) is t
    assert du.gather_object(5) == [5]
    assert du.broadcast_object("x") == "x"
