"""Acceptance of issue 23: one SciFact subset written in every format ance reads (BEIR, MS MARCO,
Tevatron + corpus, sentence-transformers triplets in JSONL, CSV and Parquet, a Hugging Face
``save_to_disk`` folder; ``scripts/make_example_data.py``) loads as the same data, compared by
text (ids differ: the triplets have none, ance hashes their texts): the same queries in the same
order, positives, corpus and negatives (the BEIR and MS MARCO folders bring theirs as a
``negatives.static_file``, the others in their records). Hence `ance train` with the seed fixed
takes the same first steps, to the last bit of the loss, from every one of them.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ance.cli import main as ance_main
from ance.data.dataset import load_dataset
from ance.negatives.files import read_negatives
from ance.run.telemetry import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
pytestmark = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(), reason=f"no SciFact at {SCIFACT}")


def make_example_data():
    spec = importlib.util.spec_from_file_location("make_example_data", ROOT / "scripts" / "make_example_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> dict[str, tuple[str, list[str]]]:
    """Format name -> (data.path, extra overrides)."""
    out = tmp_path_factory.mktemp("formats")
    make_example_data().write_all(SCIFACT, out, n_queries=12, n_negatives=3)
    return {
        "beir": (str(out / "beir"), [f"negatives.static_file={out / 'beir' / 'negatives.tsv'}"]),
        "msmarco": (str(out / "msmarco"), [f"negatives.static_file={out / 'msmarco' / 'negatives.tsv'}"]),
        "tevatron": (str(out / "tevatron" / "train.jsonl"), [f"data.corpus={out / 'tevatron' / 'corpus.jsonl'}"]),
        "triplets.jsonl": (str(out / "triplets.jsonl"), []),
        "triplets.csv": (str(out / "triplets.csv"), []),
        "triplets.parquet": (str(out / "triplets.parquet"), []),
        "hf": (str(out / "hf"), []),
    }


def _by_text(path: str, extra: list[str]) -> dict:
    kw = dict(e.split("=", 1) for e in extra)
    ds = load_dataset(path, splits=("train",), corpus=kw.get("data.corpus"))
    corpus, split = ds.corpus, ds.split("train")
    negatives = split.negatives
    if "negatives.static_file" in kw:
        assert negatives is None
        _, q_idx, neg = read_negatives(kw["negatives.static_file"], {q: i for i, q in enumerate(split.ids)},
                                       corpus.index_of)
        negatives = [[] for _ in split.ids]
        for q, row in zip(q_idx.tolist(), neg.tolist()):
            negatives[q] = [d for d in row if d >= 0]
    return {"corpus": corpus.passages(), "queries": split.texts,
            "positives": [[corpus.passage(i) for i in p] for p in split.positives],
            "negatives": [[corpus.passage(i) for i in n] for n in negatives]}


def test_every_format_loads_the_same_queries_positives_corpus_and_negatives(formats):
    views = {name: _by_text(*spec) for name, spec in formats.items()}
    ref = views["beir"]
    assert len(ref["queries"]) == 12 and len(ref["corpus"]) > 12
    assert any(len(p) > 1 for p in ref["positives"])  # a query with two positives: rows of one anchor merged
    # a passage that is one query's positive and another's negative is one document
    assert set(sum(ref["positives"], [])) & set(sum(ref["negatives"], []))
    for name, view in views.items():
        for key in ("queries", "corpus", "positives", "negatives"):
            assert view[key] == ref[key], f"{name}: {key} differ from the BEIR folder's"


def _first_steps(path: str, extra: list[str], run_dir: Path) -> list[float]:
    rc = ance_main(["train", str(ROOT / "configs" / "tiny-cpu.yaml"), f"run_dir={run_dir}", f"data.path={path}",
                    *extra, "data.eval_split=null", "data.max_docs=null", "data.max_queries=null",
                    "model.passage_max_length=48", "train.batch_size=4", "train.chunk_size=4", "train.max_steps=2",
                    "train.checkpoint_every=100", "train.device=cpu", "negatives.source=static",
                    "negatives.n_per_query=2", "negatives.keep=3", "telemetry.tensorboard=false"])
    assert rc == 0
    return [ev["loss"] for ev in read_metrics(run_dir) if ev["event"] == "step"]


def test_first_training_steps_are_identical_from_every_format(formats, tmp_path):
    losses = {name: _first_steps(path, extra, tmp_path / name.replace(".", "-"))
              for name, (path, extra) in formats.items()}
    ref = losses["beir"]
    assert len(ref) == 2 and all(x > 0 for x in ref)
    assert {name: loss for name, loss in losses.items() if loss != ref} == {}, json.dumps(losses)
