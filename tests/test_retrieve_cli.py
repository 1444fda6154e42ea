"""`ance retrieve / eval / encode / search / mine` end to end on a SciFact subset with tiny-bert."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

from helpers_refresh import SCIFACT

COMMANDS = ("retrieve", "eval", "encode", "search", "mine")
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")


def build(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"ance.commands.{name}")
    parser = argparse.ArgumentParser(prog=f"ance {name}")
    module.add_arguments(parser)
    return parser


def run_command(name: str, *argv) -> int:
    """One subcommand through ``ance.cli.main`` (AnceError -> one line, exit 2)."""
    from ance.cli import main

    return main([name, *map(str, argv)])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


def common(work: Path, split: str = "dev") -> list:
    return ["--model", "tiny-bert", "--data", SCIFACT, "--split", split, "--max-docs", 300, "--max-queries", 30,
            "--device", "cpu"]


ENCODING = ["--max-length", 64, "--batch-size", 64, "--quiet"]


@pytest.fixture(scope="module")
def retrieved(work):
    run = work / "retrieve.trec"
    assert run_command("retrieve", *common(work), *ENCODING, "--k", 1000, "--cache-dir", work / "cache",
                       "--out", run) == 0
    return run


def read_run(path: Path) -> dict[str, dict[str, float]]:
    from ance.eval.trec import read_trec_run

    return read_trec_run(path)


# --------------------------------------------------------------------------- flags


def test_every_flag_is_explained():
    for name in COMMANDS:
        module = importlib.import_module(f"ance.commands.{name}")
        assert module.NAME == name and module.HELP
        for action in build(name)._actions:
            assert action.help and len(action.help) > 10, (name, action.dest)


def test_the_dispatcher_lists_these_commands():
    source = (Path(__file__).parents[1] / "ance" / "cli.py").read_text()
    for name in COMMANDS:
        assert f'"{name}"' in source


# --------------------------------------------------------------------------- retrieve + eval


def test_retrieve_then_eval_prints_one_json_object(retrieved, capsys):
    from ance.data.dataset import load_dataset

    data = load_dataset(SCIFACT, splits=("dev",), max_docs=300, max_queries=30)
    run = read_run(retrieved)
    assert set(run) == set(data.split("dev").ids)
    assert all(len(docs) == 300 for docs in run.values())  # k=1000 > 300 docs: every document, once
    capsys.readouterr()
    assert run_command("eval", "--run", retrieved, "--qrels", SCIFACT / "qrels" / "dev.tsv") == 0
    out = capsys.readouterr().out
    metrics = json.loads(out)
    assert out.count("\n") == 1 and set(metrics) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000",
                                                      "n_queries", "n_missing"}
    assert metrics["n_missing"] == metrics["n_queries"] - 30  # the subset's 30 queries ranked, reported
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if "@" in k)
    # queries outside the subset count 0, so recall@1000 is the kept queries' share
    assert metrics["recall@1000"] > 0


def test_retrieve_with_the_lean_kernels(retrieved, work):
    """--kernels picks the inferencer's forward: the lean ones give transformers' scores (on the CPU the
    epilogue GELU is exact)."""
    a = read_run(retrieved)
    for kernels, tol in (("lean", 1e-4), ("lean-tanh", 1e-4)):
        out = work / f"{kernels}.trec"
        assert run_command("retrieve", *common(work), *ENCODING, "--k", 1000, "--cache-dir", work / "cache",
                           "--kernels", kernels, "--out", out) == 0
        b = read_run(out)
        assert a.keys() == b.keys()
        diff = max(abs(a[q][d] - b[q][d]) for q in a for d in a[q])
        assert diff < tol, (kernels, diff)


def test_eval_errors_are_one_line(work, capsys):
    (work / "bad.trec").write_text("q1 Q0\n")
    assert run_command("eval", "--run", work / "bad.trec", "--qrels", SCIFACT / "qrels" / "dev.tsv") == 2
    err = capsys.readouterr().err
    assert err.startswith("ance eval: error:") and "bad.trec" in err


# --------------------------------------------------------------------------- encode shards + search


def test_encoded_shards_searched_together_equal_retrieve(retrieved, work, capsys):
    for shard in ("0/2", "1/2"):
        assert run_command("encode", *common(work), *ENCODING, "--cache-dir", work / "cache", "--shard", shard,
                           "--out", work / "emb") == 0
    assert "tokens cached" in capsys.readouterr().err  # retrieve built the same cache
    out = work / "search.trec"
    assert run_command("search", *common(work), "--emb", work / "emb", "--k", 1000, "--query-max-length", 64,
                       "--quiet", "--out", out) == 0
    a, b = read_run(retrieved), read_run(out)
    assert a.keys() == b.keys()
    for qid in a:
        assert a[qid].keys() == b[qid].keys()
        # the same documents with the same scores, up to the float16 storage of `ance encode`
        diff = max(abs(a[qid][d] - b[qid][d]) for d in a[qid])
        assert diff < 2e-3, (qid, diff)
        top_a = sorted(a[qid], key=a[qid].get, reverse=True)[:10]
        top_b = sorted(b[qid], key=b[qid].get, reverse=True)[:10]
        assert len(set(top_a) & set(top_b)) >= 8

    # both shard dirs given explicitly, in any order: the same run
    out2 = work / "search2.trec"
    assert run_command("search", *common(work), "--emb", work / "emb" / "shard-1-of-2", work / "emb" / "shard-0-of-2",
                       "--k", 1000, "--query-max-length", 64, "--quiet", "--out", out2) == 0
    assert out2.read_text() == out.read_text()


def test_search_refuses_embeddings_of_another_corpus(work, capsys):
    if not (work / "emb" / "shard-0-of-2" / "meta.json").is_file():
        pytest.skip("needs the shards of the previous test")
    other = ["--model", "tiny-bert", "--data", SCIFACT, "--split", "dev", "--max-docs", 200, "--max-queries", 30,
             "--device", "cpu", "--quiet"]
    assert run_command("search", *other, "--emb", work / "emb", "--out", work / "x.trec") == 2
    assert "another corpus" in capsys.readouterr().err
    both = work / "emb" / "shard-0-of-2"
    assert run_command("search", *common(work), "--quiet", "--emb", both, both, "--out", work / "x.trec") == 2
    assert "overlap" in capsys.readouterr().err


# --------------------------------------------------------------------------- mine


def test_mine_never_returns_a_positive(work, capsys):
    from ance.data.dataset import load_dataset
    from ance.negatives.files import read_negatives

    out = work / "neg.tsv"
    assert run_command("mine", *common(work, "train"), *ENCODING, "--cache-dir", work / "cache", "--depth", 50,
                       "--rank-window", 0, 30, "--n", 5, "--seed", 3, "--out", out) == 0
    data = load_dataset(SCIFACT, splits=("train",), max_docs=300, max_queries=30)
    split = data.split("train")
    header, q_idx, neg = read_negatives(out, {q: i for i, q in enumerate(split.ids)}, data.corpus.index_of)
    assert header["keep"] == 5 and header["rank_window"] == [0, 30] and header["split"] == "train"
    assert sorted(q_idx.tolist()) == list(range(len(split)))
    assert neg.shape == (len(split), 5) and (neg >= 0).sum() > 0
    for q, row in zip(q_idx, neg):
        assert not set(row[row >= 0].tolist()) & set(split.positives[q].tolist())
        assert len(set(row[row >= 0].tolist())) == int((row >= 0).sum())
    assert "ance mine:" in capsys.readouterr().err
    assert run_command("mine", *common(work, "train"), *ENCODING, "--rank-window", 30, 10, "--out", out) == 2


def test_mine_denoise_ratio_is_checked_first_and_written_in_the_header(work, capsys):
    from ance.data.dataset import load_dataset
    from ance.negatives.files import read_negatives

    out = work / "neg-ratio.tsv"
    for bad in (0, -0.5):  # refused before the corpus is encoded
        assert run_command("mine", *common(work, "train"), *ENCODING, "--denoise-ratio", bad, "--out", out) == 2
        err = capsys.readouterr().err
        assert "--denoise-ratio must be a finite number > 0" in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    assert run_command("mine", *common(work, "train"), *ENCODING, "--cache-dir", work / "cache", "--depth", 50,
                       "--rank-window", 0, 30, "--n", 5, "--denoise-ratio", 0.95, "--denoise-margin", 0.05,
                       "--out", out) == 0
    data = load_dataset(SCIFACT, splits=("train",), max_docs=300, max_queries=30)
    qindex = {q: i for i, q in enumerate(data.split("train").ids)}
    header, _, _ = read_negatives(out, qindex, data.corpus.index_of)
    assert (header["denoise_ratio"], header["denoise_margin"]) == (0.95, 0.05)
