"""The trainer's batch samplers: by query (one random positive each) and by (query, positive) pair."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ance.trainer.batches import PairSampler, QuerySampler

POSITIVES = [np.array([10]), np.array([11, 12, 13]), np.array([14]), np.array([15, 16]), np.array([17]),
             np.array([18])]  # 6 queries, 9 pairs


def test_a_pass_visits_every_pair_once_and_drops_the_short_tail():
    sampler = PairSampler(POSITIVES, batch_size=4, seed=3)
    seen = Counter()
    for _ in range(2):  # 9 pairs, batch 4: two full batches a pass, one pair left over
        q, p = sampler.next_pairs()
        assert len(q) == len(p) == 4
        for qi, pi in zip(q, p):
            assert pi in POSITIVES[qi]
            seen[(int(qi), int(pi))] += 1
    assert sum(seen.values()) == 8 and max(seen.values()) == 1
    q, _ = sampler.next_pairs()  # the next pass starts over with a new order
    assert sampler.state_dict()["epoch"] == 1


def test_a_query_comes_as_often_as_it_has_positives():
    sampler = PairSampler(POSITIVES, batch_size=9, seed=0)
    q, p = sampler.next_pairs()
    assert Counter(q.tolist()) == {0: 1, 1: 3, 2: 1, 3: 2, 4: 1, 5: 1}
    assert sorted(p.tolist()) == list(range(10, 19))


def test_state_round_trip_continues_the_same_order():
    a = PairSampler(POSITIVES, batch_size=4, seed=5)
    a.next_pairs()
    state = a.state_dict()
    b = PairSampler(POSITIVES, batch_size=4, seed=5)
    b.load_state_dict(state)
    for _ in range(3):
        (qa, pa), (qb, pb) = a.next_pairs(), b.next_pairs()
        assert qa.tolist() == qb.tolist() and pa.tolist() == pb.tolist()


def test_a_checkpoint_of_the_other_mode_is_refused():
    by_pair = PairSampler(POSITIVES, batch_size=4, seed=5).state_dict()
    by_query = QuerySampler(6, batch_size=4, seed=5).state_dict()
    with pytest.raises(ValueError, match="sample_by=pair"):
        QuerySampler(6, batch_size=4, seed=5).load_state_dict(by_pair)
    with pytest.raises(ValueError, match="sample_by=query"):
        PairSampler(POSITIVES, batch_size=4, seed=5).load_state_dict(by_query)


def test_fewer_pairs_than_a_batch_says_what_to_do():
    with pytest.raises(ValueError, match="batch_size"):
        PairSampler(POSITIVES[:2], batch_size=8, seed=0)
