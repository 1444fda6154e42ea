"""Malformed input in the formats of issue 23, through `ance train` and `ance data inspect`: one line
naming the file, the line (or row) and the field, exit code 2, and nothing written (the run
directory is not even created). Plus the record readers' own rules (hashed ids, merged rows,
column guessing, a docid outside the corpus, ``.jsonl.gz``, the missing-``datasets`` hint).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ance.cli import main as ance_main
from ance.data.dataset import detect_format, load_dataset
from ance.data.records import text_id
from ance.run.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-cpu.yaml"

P = {"docid": "d1", "title": "T", "text": "a passage"}
N = {"docid": "d2", "title": "", "text": "another passage"}
GOOD = {"query_id": "q1", "query": "what?", "positive_passages": [P], "negative_passages": [N]}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def fails(tmp_path: Path, capsys, data: Path | str, *overrides: str, match: str) -> str:
    """`ance train` on ``data`` exits 2 with one error line matching ``match``, leaving no run directory."""
    run_dir = tmp_path / "run"
    rc = ance_main(["train", str(CONFIG), f"run_dir={run_dir}", f"data.path={data}", "data.eval_split=null",
                    "data.max_docs=null", "data.max_queries=null", *overrides])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ance train: error:")]
    assert rc == 2 and len(err) == 1, err
    assert __import__("re").search(match, err[0]), err[0]
    assert not run_dir.exists()
    return err[0]


def test_tevatron_missing_field(tmp_path, capsys):
    bad = jsonl(tmp_path / "t.jsonl", [GOOD, {k: v for k, v in GOOD.items() if k != "query"}])
    fails(tmp_path, capsys, bad, match=rf'{bad}:2: missing "query"')


def test_tevatron_wrong_types(tmp_path, capsys):
    bad = jsonl(tmp_path / "t.jsonl", [dict(GOOD, query_id=["q1"])])
    fails(tmp_path, capsys, bad, match=rf'{bad}:1: "query_id" must be a string')
    bad = jsonl(tmp_path / "t.jsonl", [GOOD, dict(GOOD, query_id="q2", positive_passages=[dict(P, text=7)])])
    fails(tmp_path, capsys, bad, match=rf'{bad}:2: "positive_passages\[0\].text" must be a string, got int')
    bad = jsonl(tmp_path / "t.jsonl", [dict(GOOD, negative_passages="d2")])
    fails(tmp_path, capsys, bad, match=rf'{bad}:1: "negative_passages" must be a list')


def test_tevatron_empty_positives(tmp_path, capsys):
    bad = jsonl(tmp_path / "t.jsonl", [GOOD, GOOD | {"query_id": "q2", "positive_passages": []}])
    fails(tmp_path, capsys, bad, match=rf'{bad}:2: "positive_passages" is empty')


def test_tevatron_docid_outside_the_corpus_and_a_docid_with_two_texts(tmp_path, capsys):
    corpus = jsonl(tmp_path / "corpus.jsonl", [P])
    bad = jsonl(tmp_path / "t.jsonl", [GOOD])
    fails(tmp_path, capsys, bad, f"data.corpus={corpus}",
          match=rf"{bad}:1: negative: docid 'd2' is not in the corpus {corpus}")
    bad = jsonl(tmp_path / "t2.jsonl", [GOOD, GOOD | {"query_id": "q2", "negative_passages": [dict(P, text="x")]}])
    fails(tmp_path, capsys, bad, match=rf"{bad}:2: negative: docid 'd1' has another title or text than at {bad}:1")


def test_pairs_missing_field_and_csv_ragged_row(tmp_path, capsys):
    bad = jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": "p"}, {"anchor": "q2"}])
    fails(tmp_path, capsys, bad, match=rf'{bad}:2: missing "positive" \(the positive column\)')
    bad = jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": 3}])
    fails(tmp_path, capsys, bad, match=rf'{bad}:1: "positive" \(the positive column\) must be a string')
    csv = tmp_path / "p.csv"
    csv.write_text('anchor,positive,negative\nq1,p1,n1\n"q2, with a comma",p2\n')
    fails(tmp_path, capsys, csv, match=rf"{csv}:3: 2 fields, but the header names 3 \(anchor, positive, negative\)")


def test_parquet_without_the_mapped_column(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"anchor": "q", "positive": "p"}]), path)
    fails(tmp_path, capsys, path, "data.columns={query: anchor, positive: pos}",
          match=rf'{path}: no column "pos" \(data.columns.positive\); the columns are: anchor, positive')


def test_bad_column_mapping_is_a_config_error(tmp_path, capsys):
    path = jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": "p"}])
    fails(tmp_path, capsys, path, "data.columns={query: anchor, answer: positive}",
          match=r"data.columns: unknown key 'answer'; valid keys: query, positive, negatives")


def test_unknown_hf_name_offline_and_inspect(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ance.cli", "data", "inspect", "hf:no-such-org/no-such-dataset"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    err = [line for line in out.stderr.splitlines() if line.startswith("ance data: error:")]
    assert out.returncode == 2 and len(err) == 1, out.stderr
    assert ("hf:no-such-org/no-such-dataset: cannot load the Hugging Face dataset 'no-such-org/no-such-dataset'"
            in err[0])
    assert "Traceback" not in out.stderr and not list(tmp_path.iterdir())


def test_missing_datasets_library_gives_the_hint(tmp_path, monkeypatch):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ConfigError, match=r"needs the `datasets` library: pip install 'ance-retriever\[hf\]'"):
        load_dataset(tmp_path / "hf")


def test_a_file_where_a_folder_was_expected_is_not_no_such_directory(tmp_path):
    path = jsonl(tmp_path / "t.jsonl", [GOOD])
    assert detect_format(path) == "tevatron"
    with pytest.raises(DataError, match="a file, not a folder"):
        load_dataset(path, format="beir")
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "nope.jsonl")


# --------------------------------------------------------------------------- the readers' rules


def test_pairs_hash_texts_merge_rows_and_recognise_shared_passages(tmp_path):
    rows = [{"query": "q1", "pos": "A", "neg": "B"}, {"query": "q1", "pos": "C", "neg": "B"},
            {"query": "q2", "pos": "B", "neg": "A"}]
    ds = load_dataset(jsonl(tmp_path / "p.jsonl", rows))
    c, sp = ds.corpus, ds.split("train")
    assert c.texts == ["A", "B", "C"] and c.ids == [text_id("A"), text_id("B"), text_id("C")]
    assert sp.ids == [text_id("q1"), text_id("q2")] and sp.texts == ["q1", "q2"]
    assert [p.tolist() for p in sp.positives] == [[0, 2], [1]]
    assert [n.tolist() for n in sp.negatives] == [[1], [0]]  # B: q1's negative and q2's positive, one doc
    assert "mines negatives only among them" in ds.note


def test_pairs_columns_by_position_lists_and_a_positive_that_is_also_a_negative(tmp_path):
    rows = [{"s1": "q1", "s2": ["A", "B"], "s3": ["A", "C"]}]
    sp = load_dataset(jsonl(tmp_path / "p.jsonl", rows)).split("train")
    assert [p.tolist() for p in sp.positives] == [[0, 1]] and [n.tolist() for n in sp.negatives] == [[2]]


def test_tevatron_gz_and_tsv_and_corpus_folder(tmp_path):
    gz = tmp_path / "t.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps(GOOD) + "\n")
    ds = load_dataset(gz)
    assert ds.corpus.ids == ["d1", "d2"] and ds.split("train").negatives[0].tolist() == [1]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("anchor\tpositive\nq\tp\n")
    assert load_dataset(tsv).corpus.texts == ["p"]


def test_eval_path_adds_a_split_over_the_same_corpus(tmp_path):
    train = jsonl(tmp_path / "train.jsonl", [GOOD])
    dev = jsonl(tmp_path / "dev.jsonl", [{"anchor": "another q", "positive": "T a passage"},
                                         {"anchor": "third q", "positive": "new text"}])
    ds = load_dataset(train, splits=("train", "dev"), eval_path=str(dev))
    assert ds.corpus.ids[:2] == ["d1", "d2"] and len(ds.corpus) == 3  # found by text, or added
    assert [p.tolist() for p in ds.split("dev").positives] == [[0], [2]]
    with pytest.raises(DataError, match="holds one split.*data.eval_path"):
        load_dataset(train, splits=("train", "dev"))


def test_static_negatives_from_the_data_need_no_file_but_must_be_there(tmp_path, capsys):
    from ance.run.config import load_config

    tev = jsonl(tmp_path / "t.jsonl", [GOOD])
    load_config(CONFIG, [f"data.path={tev}", "negatives.source=static"])  # its own negatives: no file needed
    load_config(CONFIG, [f"data.path={tev}", "negatives.source=async", "negatives.mix_static=0.5"])
    with pytest.raises(ConfigError, match="negatives.static_file is required"):
        load_config(CONFIG, ["negatives.source=static"])  # a BEIR folder brings none
    pairs = jsonl(tmp_path / "p.jsonl", [{"anchor": "q", "positive": "p"}])
    fails(tmp_path, capsys, pairs, "negatives.source=static", match=r"holds no negatives for the training queries")


def test_arrow_file_parquet_in_tevatron_shape_and_a_passage_without_docid(tmp_path):
    datasets = pytest.importorskip("datasets")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [GOOD, dict(GOOD, query_id="q2", positive_passages=[{"title": "", "text": "no id"}])]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    assert detect_format(tmp_path / "t.parquet") == "tevatron"
    ds = load_dataset(tmp_path / "t.parquet")
    assert ds.corpus.ids == ["d1", "d2", text_id("no id")]
    datasets.disable_progress_bars()
    datasets.Dataset.from_list([{"anchor": "q", "positive": "p"}]).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    assert detect_format(arrow) == "hf" and detect_format(tmp_path / "saved") == "hf"
    assert load_dataset(arrow).corpus.texts == ["p"] == load_dataset(tmp_path / "saved").corpus.texts
    with pytest.raises(ConfigError, match="has its own corpus"):
        load_dataset(ROOT / "tests", format="beir", corpus=str(tmp_path / "t.parquet"))


def test_eval_path_over_a_beir_folder_and_a_folder_as_eval_path(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    jsonl(root / "corpus.jsonl", [{"_id": "d1", "title": "T", "text": "a passage"}])
    jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "what?"}])
    (root / "qrels" / "train.tsv").write_text("q1\td1\t1\n")
    dev = jsonl(tmp_path / "dev.jsonl", [dict(GOOD, query_id="q9", negative_passages=[])])
    ds = load_dataset(root, splits=("train", "dev"), eval_path=str(dev))
    assert ds.split("dev").positives[0].tolist() == [0] and len(ds.corpus) == 1
    with pytest.raises(DataError, match="docid 'd2' is not in the corpus"):
        load_dataset(root, splits=("train", "dev"), eval_path=str(jsonl(tmp_path / "d2.jsonl", [GOOD])))
    with pytest.raises(ConfigError, match="data.eval_path takes Tevatron, pairs or Hugging Face data"):
        load_dataset(root, splits=("train", "dev"), eval_path=str(root))


def test_tevatron_records_by_document_id_need_their_corpus(tmp_path):
    rows = [{"query_id": "q1", "query_text": "what?", "positive_document_ids": ["d1"],
             "negative_document_ids": ["d2"]}]
    path = jsonl(tmp_path / "ids.jsonl", rows)
    assert detect_format(path) == "tevatron"
    with pytest.raises(DataError, match="by id only .*data.corpus"):
        load_dataset(path)
    corpus = jsonl(tmp_path / "corpus.jsonl", [P, N])
    sp = load_dataset(path, corpus=str(corpus)).split("train")
    assert sp.texts == ["what?"] and sp.positives[0].tolist() == [0] and sp.negatives[0].tolist() == [1]
    with pytest.raises(DataError, match=r'ids.jsonl:1: "positive_document_ids" is empty'):
        load_dataset(jsonl(path, [dict(rows[0], positive_document_ids=[])]), corpus=str(corpus))


def test_labelled_pairs_are_refused_not_trained_on(tmp_path):
    path = jsonl(tmp_path / "sts.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 0}])
    with pytest.raises(DataError, match=r'sts.jsonl: a "label" column: labelled pairs'):
        load_dataset(path)
