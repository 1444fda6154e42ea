import json
import time
from pathlib import Path

import numpy as np
import pytest

from ance.run.config import DataConfig
from ance.data.dataset import detect_format, load_dataset, load_for_config
from ance.data.readers import read_beir_corpus, read_beir_queries, read_msmarco_collection, read_msmarco_queries, read_qrels
from ance.run.errors import ConfigError, DataError

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
needs_scifact = pytest.mark.skipif(not (SCIFACT / "corpus.jsonl").is_file(),
                                   reason=f"SciFact not found at {SCIFACT} (shared test data)")

DOCS = [{"_id": "d1", "title": "Alpha", "text": "first doc"},
        {"_id": "d2", "title": "", "text": "second doc"},
        {"_id": "d3", "text": "third doc, no title"},
        {"_id": "d4", "title": "Delta", "text": "fourth", "metadata": {"x": 1}},
        {"_id": "d5", "title": "Eps", "text": "fifth"}]
QUERIES = [{"_id": "q1", "text": "query one"}, {"_id": "q2", "text": "query two"},
           {"_id": "q3", "text": "query three"}, {"_id": "q4", "text": "query four"}]
TRAIN = "query-id\tcorpus-id\tscore\nq2\td3\t1\nq1\td4\t2\nq1\td1\t1\nq2\td5\t0\nq3\td2\t0\n"
DEV = "query-id\tcorpus-id\tscore\nq4\td2\t1\n"


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def write_beir(root: Path, corpus=None, queries=None, qrels=None) -> Path:
    """A BEIR folder; each argument is the file's text (defaults: the fixtures above)."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_text(jsonl(DOCS) if corpus is None else corpus, encoding="utf-8")
    (root / "queries.jsonl").write_text(jsonl(QUERIES) if queries is None else queries, encoding="utf-8")
    for split, text in ({"train": TRAIN, "dev": DEV} if qrels is None else qrels).items():
        (root / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return root


def write_msmarco(root: Path, qrels_train="1\t0\t20\t1\n2\t0\t10\t1\n2\t0\t30\t1\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "collection.tsv").write_text("10\tpassage ten\n20\tpassage twenty\n\n30\tthirty\twith a tab\n")
    (root / "queries.train.tsv").write_text("1\twhat is twenty\n2\tten or thirty\n")
    (root / "qrels.train.tsv").write_text(qrels_train)
    (root / "queries.dev.tsv").write_text("3\tdev query\n")
    (root / "qrels.dev.tsv").write_text("3 0 10 1\n")
    return root


def raises_at(path: Path, line: int | None, match: str, fn, *args, **kwargs) -> DataError:
    """``fn`` raises a DataError naming ``path:line`` whose reason matches ``match``."""
    with pytest.raises(DataError, match=match) as err:
        fn(*args, **kwargs)
    e = err.value
    assert e.path == str(path) and e.line == line, str(e)
    assert str(e).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    return e


# --------------------------------------------------------------------------- readers


def test_beir_readers(tmp_path):
    root = write_beir(tmp_path / "b")
    ids, titles, texts = read_beir_corpus(root / "corpus.jsonl")
    assert ids == ["d1", "d2", "d3", "d4", "d5"]
    assert titles == ["Alpha", "", "", "Delta", "Eps"] and texts[2] == "third doc, no title"
    assert read_beir_queries(root / "queries.jsonl") == {"q1": "query one", "q2": "query two",
                                                         "q3": "query three", "q4": "query four"}
    qrels = read_qrels(root / "qrels" / "train.tsv")
    assert list(qrels) == ["q2", "q1", "q3"]  # order of first appearance
    assert qrels == {"q2": {"d3": 1, "d5": 0}, "q1": {"d4": 2, "d1": 1}, "q3": {"d2": 0}}


def test_qrels_trec_with_spaces_or_tabs_and_no_header(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("7 0 a 1\n7\t0\tb\t0\n\n8 0 a 3  \n")
    assert read_qrels(p) == {"7": {"a": 1, "b": 0}, "8": {"a": 3}}
    p.write_text("7\ta\t1\n")  # BEIR without a header
    assert read_qrels(p) == {"7": {"a": 1}}
    p.write_text("7\ta\t1\n7\ta\t1\n")  # an identical repeat is harmless
    assert read_qrels(p) == {"7": {"a": 1}}


def test_load_beir(tmp_path):
    root = write_beir(tmp_path / "b")
    ds = load_dataset(root)  # train only, by default
    assert detect_format(root) == "beir" and list(ds.splits) == ["train"]
    c = ds.corpus
    assert len(c) == 5 and c.passage(0) == "Alpha first doc" and c.passage(1) == "second doc"
    assert c.passages()[3] == "Delta fourth" and c.index_of["d4"] == 3
    # a view joined on access, not a copy: indexing, negative indices, slices (lists), iteration, equality
    view, joined = c.passages(), [c.passage(i) for i in range(len(c))]
    assert len(view) == 5 and view[-1] == joined[-1] and view[1:4] == joined[1:4] and list(view) == joined
    assert view == joined and view == c.passages() and view != joined[:4]
    bare = type(c)(list(c.ids), list(c.titles), list(c.texts), c.path, c.source_hash)  # not through a loader
    assert bare.index_of == c.index_of and bare.index_of["d4"] == 3
    with pytest.raises(IndexError):
        view[5]
    assert c.path == root / "corpus.jsonl" and len(c.source_hash) == 16 and "~" not in c.source_hash
    tr = ds.split("train")
    assert tr.ids == ["q2", "q1", "q3"] and tr.texts == ["query two", "query one", "query three"]
    assert tr.qrels["q2"] == {"d3": 1, "d5": 0}  # zero judgements kept
    assert [p.tolist() for p in tr.positives] == [[2], [0, 3], []]  # sorted, relevance > 0 only
    assert all(p.dtype == np.int64 for p in tr.positives) and len(tr) == 3
    with pytest.raises(ConfigError, match=r"'dev'.*loaded: \['train'\]"):
        ds.split("dev")
    both = load_dataset(root, splits=["train", "dev"])
    assert both.split("dev").ids == ["q4"] and both.split("dev").positives[0].tolist() == [1]
    assert both.fingerprint != ds.fingerprint


def test_splits_are_read_only_when_asked(tmp_path):
    root = write_beir(tmp_path / "b", qrels={"train": TRAIN, "dev": "garbage line\n"})
    assert len(load_dataset(root, splits="train").split("train")) == 3
    raises_at(root / "qrels" / "dev.tsv", 1, "columns", load_dataset, root, splits=["train", "dev"])


def test_msmarco(tmp_path):
    root = write_msmarco(tmp_path / "m")
    ids, titles, texts = read_msmarco_collection(root / "collection.tsv")
    assert ids == ["10", "20", "30"] and titles == ["", "", ""] and texts[2] == "thirty\twith a tab"
    assert read_msmarco_queries(root / "queries.train.tsv") == {"1": "what is twenty", "2": "ten or thirty"}
    assert detect_format(root) == "msmarco"
    ds = load_dataset(root, splits=("train", "dev"))
    assert ds.corpus.passage(1) == "passage twenty"
    tr = ds.split("train")
    assert tr.ids == ["1", "2"] and tr.texts[1] == "ten or thirty"
    assert [p.tolist() for p in tr.positives] == [[1], [0, 2]]
    assert ds.split("dev").qrels == {"3": {"10": 1}}
    assert load_dataset(root, format="msmarco").fingerprint == load_dataset(root).fingerprint


def test_blank_lines_and_bom_are_skipped(tmp_path):
    corpus = "\ufeff" + json.dumps(DOCS[0]) + "\n\n   \n" + jsonl(DOCS[1:]) + "\n"
    root = write_beir(tmp_path / "b", corpus=corpus)
    assert load_dataset(root).corpus.ids == ["d1", "d2", "d3", "d4", "d5"]


def test_fingerprint_is_stable_and_ignores_split_order(tmp_path):
    root = write_beir(tmp_path / "b")
    a = load_dataset(root, splits=["train", "dev"])
    b = load_dataset(root, splits=["dev", "train"])
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 16
    assert load_dataset(root, splits=["train", "dev"], max_queries=1).fingerprint != a.fingerprint


def test_load_for_config_loads_train_and_eval(tmp_path):
    root = write_beir(tmp_path / "b")
    cfg = type("Cfg", (), {"data": DataConfig(path=str(root), eval_split="dev", max_queries=2)})()
    ds = load_for_config(cfg)
    assert sorted(ds.splits) == ["dev", "train"] and ds.split("train").ids == ["q2", "q1"]
    cfg.data.eval_split = None
    assert list(load_for_config(cfg).splits) == ["train"]


# --------------------------------------------------------------------------- errors, each naming file:line


def corpus_error(tmp_path, corpus: str, line: int | None, match: str):
    root = write_beir(tmp_path / "b", corpus=corpus)
    return raises_at(root / "corpus.jsonl", line, match, load_dataset, root)


def test_malformed_json(tmp_path):
    e = corpus_error(tmp_path, jsonl(DOCS[:2]) + "\n" + '{"_id": "x", "text": \n', 4, "malformed JSON")
    assert "one object" in e.reason


def test_not_an_object(tmp_path):
    corpus_error(tmp_path, jsonl(DOCS[:1]) + '["_id", "text"]\n', 2, "JSON object, got list")


@pytest.mark.parametrize("key", ["_id", "text"])
def test_missing_field(tmp_path, key):
    bad = {k: v for k, v in DOCS[1].items() if k != key}
    corpus_error(tmp_path, jsonl([DOCS[0], bad]), 2, f'missing "{key}"')


@pytest.mark.parametrize("key,value", [("_id", 7), ("title", None), ("text", ["a"])])
def test_non_string_field(tmp_path, key, value):
    corpus_error(tmp_path, jsonl(DOCS[:2] + [{**DOCS[2], key: value}]), 3, f'"{key}" must be a string')


@pytest.mark.parametrize("bad_id", ["", "a b", "a\tb"])
def test_bad_id(tmp_path, bad_id):
    corpus_error(tmp_path, jsonl([DOCS[0], {**DOCS[1], "_id": bad_id}]), 2, "empty or contains whitespace")


def test_duplicate_doc_id_names_both_lines(tmp_path):
    e = corpus_error(tmp_path, jsonl(DOCS[:3]) + "\n" + jsonl([{**DOCS[3], "_id": "d2"}]), 5,
                     "duplicate doc id 'd2'")
    assert "also at line 2" in e.reason


def test_duplicate_query_id_names_both_lines(tmp_path):
    root = write_beir(tmp_path / "b", queries=jsonl(QUERIES + [QUERIES[1]]))
    e = raises_at(root / "queries.jsonl", 5, "duplicate query id 'q2'", load_dataset, root)
    assert "also at line 2" in e.reason


def test_duplicate_tsv_id(tmp_path):
    root = write_msmarco(tmp_path / "m")
    (root / "collection.tsv").write_text("10\ta\n20\tb\n10\tc\n")
    raises_at(root / "collection.tsv", 3, r"duplicate passage id '10', also at line 1", load_dataset, root)
    (root / "collection.tsv").write_text("10\ta\n20 b\n")
    raises_at(root / "collection.tsv", 2, "2 tab-separated columns", load_dataset, root)


def test_invalid_utf8(tmp_path):
    root = write_beir(tmp_path / "b")
    (root / "corpus.jsonl").write_bytes(jsonl(DOCS[:2]).encode() + b'{"_id": "x", "text": "caf\xe9"}\n')
    raises_at(root / "corpus.jsonl", 3, "not valid UTF-8", load_dataset, root)


def test_empty_corpus(tmp_path):
    corpus_error(tmp_path, "\n\n", None, "no documents")


def qrels_error(tmp_path, text: str, line: int | None, match: str, **kwargs):
    root = write_beir(tmp_path / "b", qrels={"train": text})
    return raises_at(root / "qrels" / "train.tsv", line, match, load_dataset, root, **kwargs)


def test_qrels_wrong_column_count(tmp_path):
    qrels_error(tmp_path, TRAIN + "q1\td2\n", 7, "expected 3 columns like line 1, got 2")
    qrels_error(tmp_path, "q1 d2 1 0 0\n", 1, "expected 3 columns .* or 4")


def test_qrels_non_integer_score(tmp_path):
    qrels_error(tmp_path, TRAIN + "\nq1\td2\t0.5\n", 8, "score '0.5' is not an integer")


def test_qrels_conflicting_judgements(tmp_path):
    e = qrels_error(tmp_path, TRAIN + "q1\td4\t0\n", 7, "judges doc 'd4' 0")
    assert "line 3 says 2" in e.reason


def test_qrels_unknown_query(tmp_path):
    e = qrels_error(tmp_path, TRAIN + "q9\td1\t1\n", 7, "query id 'q9' is not in")
    assert "queries.jsonl" in e.reason


@pytest.mark.parametrize("subset", [{}, {"max_docs": 3}])
def test_qrels_unknown_doc(tmp_path, subset):
    # ids are checked against the whole corpus, so a typo is an error in subset mode too
    qrels_error(tmp_path, TRAIN + "q1\tnope\t1\n", 7, "doc id 'nope' is not in .*corpus.jsonl", **subset)


def test_split_without_qrels_lists_the_splits(tmp_path):
    root = write_beir(tmp_path / "b")
    e = raises_at(root / "qrels" / "test.tsv", None, "no qrels for split 'test'", load_dataset, root,
                  splits="test")
    assert "dev, train" in e.reason
    m = write_msmarco(tmp_path / "m")
    e = raises_at(m / "qrels.eval.tsv", None, "no qrels for split 'eval'", load_dataset, m, splits="eval")
    assert "dev, train" in e.reason


def test_empty_split(tmp_path):
    qrels_error(tmp_path, "query-id\tcorpus-id\tscore\n\n", None, "no judgements")


def test_missing_files_and_directory(tmp_path):
    raises_at(tmp_path / "nope", None, "no such file or directory", load_dataset, tmp_path / "nope")
    raises_at(tmp_path / "nope", None, "no such file or directory", load_dataset, tmp_path / "nope", format="beir")
    (tmp_path / "f.jsonl").write_text("{}\n")  # a file where a folder is expected is not "no such directory"
    raises_at(tmp_path / "f.jsonl", None, "a file, not a folder", load_dataset, tmp_path / "f.jsonl", format="beir")
    root = write_beir(tmp_path / "b")
    (root / "queries.jsonl").unlink()
    raises_at(root / "queries.jsonl", None, "file not found", load_dataset, root)
    raises_at(root / "collection.tsv", None, "file not found", load_dataset, root, format="msmarco")


def test_unknown_layout_and_bad_arguments(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "docs.txt").write_text("hi")
    with pytest.raises(ConfigError, match=r"corpus\.jsonl.*collection\.tsv.*found docs\.txt"):
        detect_format(tmp_path / "x")
    root = write_beir(tmp_path / "b")
    for kwargs, match in [({"format": "trec"}, "format 'trec'"), ({"max_docs": 0}, "max_docs"),
                          ({"max_queries": -1}, "max_queries"), ({"splits": []}, "splits")]:
        with pytest.raises(ConfigError, match=match):
            load_dataset(root, **kwargs)


# --------------------------------------------------------------------------- subsetting


def test_subset_drops_judgements_of_dropped_docs(tmp_path):
    root = write_beir(tmp_path / "b")
    full = load_dataset(root, splits=["train", "dev"])
    ds = load_dataset(root, splits=["train", "dev"], max_docs=3, max_queries=2, seed=0)
    # kept queries: train q2, q1 and dev q4; their positives d3, d4, d1, d2 are all kept (above max_docs)
    assert ds.corpus.ids == ["d1", "d2", "d3", "d4"]
    assert ds.split("train").qrels == {"q2": {"d3": 1}, "q1": {"d4": 2, "d1": 1}}  # d5 (relevance 0) dropped
    assert [p.tolist() for p in ds.split("train").positives] == [[2], [0, 3]]
    assert ds.corpus.source_hash.startswith(full.corpus.source_hash + "~")
    # max_docs at or above the corpus size changes nothing, so the token cache is shared
    same = load_dataset(root, splits=["train", "dev"], max_docs=99)
    assert same.corpus.source_hash == full.corpus.source_hash and same.fingerprint == full.fingerprint


@needs_scifact
def test_scifact_counts_and_speed():
    t = time.perf_counter()
    ds = load_dataset(SCIFACT, splits=("train", "dev"))
    assert time.perf_counter() - t < 1.0
    assert len(ds.corpus) == 5183 and len(set(ds.corpus.ids)) == 5183
    tr, dev = ds.split("train"), ds.split("dev")
    assert (len(tr), sum(len(p) for p in tr.positives)) == (648, 733)
    assert (len(dev), sum(len(p) for p in dev.positives)) == (161, 186)
    assert not set(tr.ids) & set(dev.ids)
    assert tr.ids[:3] == ["0", "2", "4"] and tr.texts[0] == "0-dimensional biomaterials lack inductive properties."
    assert ds.corpus.ids[tr.positives[0][0]] == "31715818"
    assert all(len(p) >= 1 for p in tr.positives + dev.positives)
    assert ds.corpus.passage(0).startswith("Microstructural development of human newborn cerebral white matter")


@needs_scifact
def test_scifact_subset_keeps_positives_and_is_seeded():
    full = load_dataset(SCIFACT, splits=("train", "dev"))
    a = load_dataset(SCIFACT, splits=("train", "dev"), max_docs=400, max_queries=100, seed=3)
    assert len(a.corpus) == 400 and [len(s) for s in a.splits.values()] == [100, 100]
    for name, split in a.splits.items():
        ref = full.split(name)
        assert split.ids == ref.ids[:100]
        for q, pos in zip(split.ids, split.positives):
            want = sorted(d for d, r in ref.qrels[q].items() if r > 0)
            assert sorted(a.corpus.ids[i] for i in pos) == want
    kept = [full.corpus.index_of[d] for d in a.corpus.ids]
    assert kept == sorted(kept)  # original corpus order
    assert a.corpus.texts[7] == full.corpus.texts[kept[7]] and a.corpus.index_of[a.corpus.ids[7]] == 7

    again = load_dataset(SCIFACT, splits=("train", "dev"), max_docs=400, max_queries=100, seed=3)
    other = load_dataset(SCIFACT, splits=("train", "dev"), max_docs=400, max_queries=100, seed=4)
    assert again.corpus.ids == a.corpus.ids and again.fingerprint == a.fingerprint
    assert again.corpus.source_hash == a.corpus.source_hash
    assert other.corpus.ids != a.corpus.ids and other.fingerprint != a.fingerprint
    assert other.corpus.source_hash != a.corpus.source_hash
    assert len({full.fingerprint, a.fingerprint,
                load_dataset(SCIFACT, splits=("train", "dev"), max_queries=100).fingerprint}) == 3
