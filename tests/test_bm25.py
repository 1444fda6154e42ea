import json
import time
from pathlib import Path

import numpy as np
import pytest

from ance.data.bm25 import bm25_rank

CORPUS = [
    "The cat sat on the mat and purred.",
    "Dogs are loyal animals that love long walks.",
    "Quantum physics describes black holes and entanglement.",
    "A cat and a dog can live together peacefully.",
    "Stock markets fell sharply on Monday.",
]

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def test_obvious_answers():
    ranked = bm25_rank(CORPUS, ["quantum entanglement", "stock markets", "cat mat purred", "loyal dogs walks"], 3)
    assert ranked.dtype == np.int64 and ranked.shape == (4, 3)
    assert ranked[0, 0] == 2 and ranked[1, 0] == 4 and ranked[2, 0] == 0 and ranked[3, 0] == 1
    assert (ranked[0, 1:] == -1).all()  # no other document shares a term: padded, not arbitrary


def test_pads_and_edge_cases():
    ranked = bm25_rank(CORPUS, ["cat", "the and of", "zebra", ""], 10)  # depth > corpus size
    assert ranked.shape == (4, 10)
    assert sorted(ranked[0, :2].tolist()) == [0, 3] and (ranked[0, 2:] == -1).all()
    assert (ranked[1:] == -1).all()  # stopwords only, unknown term, empty query
    assert bm25_rank(CORPUS, [], 5).shape == (0, 5)
    # the same answer with threads
    np.testing.assert_array_equal(bm25_rank(CORPUS, ["cat", "dog"], 3, threads=2), bm25_rank(CORPUS, ["cat", "dog"], 3))


def test_ties_are_ordered_by_corpus_index():
    corpus = ["apple banana", "cherry", "apple banana", "apple banana"]
    assert bm25_rank(corpus, ["apple"], 4).tolist() == [[0, 2, 3, -1]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        bm25_rank(CORPUS, ["cat"], 0)
    with pytest.raises(ValueError, match="empty"):
        bm25_rank([], ["cat"], 5)
    with pytest.raises(ValueError, match="threads"):
        bm25_rank(CORPUS, ["cat"], 5, threads=-2)


@pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").exists(), reason=f"SciFact not found at {SCIFACT}")
def test_scifact_ranks_in_seconds():
    docs, queries = [], {}
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            docs.append((d["_id"], d["title"] + " " + d["text"]))
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    qrels = {}
    with open(SCIFACT / "qrels" / "dev.tsv", encoding="utf-8") as fh:
        next(fh)
        for line in fh:
            qid, did, _ = line.split("\t")
            qrels.setdefault(qid, set()).add(did)
    qids = sorted(qrels)
    start = time.perf_counter()
    ranked = bm25_rank([t for _, t in docs], [queries[q] for q in qids], 200)
    elapsed = time.perf_counter() - start
    assert ranked.shape == (len(qids), 200)
    assert elapsed < 10, f"BM25 over SciFact took {elapsed:.1f}s"
    # BM25 is strong on SciFact: most dev claims find a cited abstract in the top 10
    doc_ids = [d for d, _ in docs]
    hits = [any(doc_ids[i] in qrels[q] for i in row[:10] if i >= 0) for q, row in zip(qids, ranked)]
    assert np.mean(hits) > 0.7


def test_bm25_does_not_start_jax(tmp_path):
    """bm25s imports JAX when it can and runs a top-k on JAX's default device, which
    on a GPU reserves 75% of its memory; ance's BM25 keeps JAX out. A stand-in `jax`
    package records being imported; after ranking it has not been, and the process
    can still import it afterwards."""
    import subprocess
    import sys

    fake = tmp_path / "site" / "jax"
    fake.mkdir(parents=True)
    marker = tmp_path / "jax-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (fake / "lax.py").write_text("def top_k(x, k):\n    raise AssertionError('bm25s used JAX')\n")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'site')!r})\n"
        "from ance.data.bm25 import bm25_rank\n"
        "print(bm25_rank(['graphene sheets', 'protein folding', 'cell biology'], ['protein'], 2).tolist())\n"
        f"assert not __import__('os').path.exists({str(marker)!r}), 'bm25s imported JAX'\n"
        "import jax\n"
        "print('jax importable', jax.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "[[1, -1]]" in out.stdout
    assert "jax importable jax" in out.stdout
    assert marker.exists()  # imported by the test's own `import jax`, after the ranking
