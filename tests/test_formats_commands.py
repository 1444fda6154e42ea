"""`ance encode/retrieve/mine/eval/data inspect` on the formats of issue 23 (tiny-bert, CPU, in process):
a retrieve over sentence-transformers triplets in Parquet evaluated against the same file's
judgements, static negatives mined from a Tevatron file + corpus that a training run then reads, an
encode of a Hugging Face folder, and what `ance data inspect` says of each.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ance.cli import main as ance_main
from ance.data.dataset import load_dataset
from ance.eval.trec import read_trec_run
from ance.negatives.files import read_negatives

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")
ENC = ["--model", "tiny-bert", "--max-length", "48", "--query-max-length", "32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("make_example_data", ROOT / "scripts" / "make_example_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("cmd-data")
    module.write_all(SCIFACT, out, n_queries=12, n_negatives=3)
    return out


def test_retrieve_and_eval_on_triplets_in_parquet(data, tmp_path, capsys):
    run = tmp_path / "run.trec"
    assert ance_main(["retrieve", *ENC, "--data", str(data / "triplets.parquet"), "--split", "train", "--k", "10",
                      "--cache-dir", str(tmp_path / "cache"), "--out", str(run)]) == 0
    split = load_dataset(data / "triplets.parquet").split("train")
    assert set(read_trec_run(run)) == set(split.ids)
    capsys.readouterr()
    assert ance_main(["eval", "--run", str(run), "--qrels", str(data / "triplets.parquet")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["ndcg@10"] <= 1


def test_mine_from_tevatron_and_corpus_then_the_file_resolves(data, tmp_path):
    neg = tmp_path / "neg.tsv"
    tev, corpus = data / "tevatron" / "train.jsonl", data / "tevatron" / "corpus.jsonl"
    assert ance_main(["mine", *ENC, "--data", str(tev), "--corpus", str(corpus), "--depth", "20",
                      "--rank-window", "0", "20", "--n", "3", "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(neg)]) == 0
    ds = load_dataset(tev, corpus=str(corpus))
    split = ds.split("train")
    header, q_idx, rows = read_negatives(neg, {q: i for i, q in enumerate(split.ids)}, ds.corpus.index_of)
    assert header["data_fingerprint"] == ds.fingerprint and len(q_idx) == len(split)
    for q, row in zip(q_idx, rows):
        assert not set(row.tolist()) & set(split.positives[q].tolist())


def test_encode_a_hugging_face_folder(data, tmp_path):
    out = tmp_path / "emb"
    enc = [a for a in ENC if a not in ("--query-max-length", "32")]
    assert ance_main(["encode", *enc, "--data", str(data / "hf"), "--cache-dir", str(tmp_path / "cache"),
                      "--out", str(out)]) == 0
    assert any(out.iterdir())


@pytest.mark.parametrize("name, fmt", [("beir", "beir"), ("tevatron/train.jsonl", "tevatron"),
                                       ("triplets.csv", "pairs"), ("hf", "hf")])
def test_data_inspect(data, capsys, name, fmt):
    assert ance_main(["data", "inspect", str(data / name), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["format"] == fmt and s["splits"]["train"]["queries"] == 12
    assert s["splits"]["train"]["positives_per_query"]["max"] == 2
    assert s["corpus"]["only_the_records_passages"] == (fmt in ("tevatron", "pairs", "hf"))
    negs = s["splits"]["train"]["negatives_per_query"]
    assert (negs is None) == (fmt == "beir") and (negs is None or negs["min"] == 3)
    assert s["splits"]["train"]["sample"]["positives"]
    assert ance_main(["data", "inspect", str(data / name)]) == 0
    text = capsys.readouterr().out
    assert f"format {fmt}" in text and "split train: 12 queries" in text
