"""Corpus snapshots (ance.data.snapshot): parsed once, read back the same; an edited file, a damaged
snapshot, a NUL in the text or an unwritable cache dir fall back to parsing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ance.data import snapshot
from ance.data.readers import read_beir_corpus_hashed, read_msmarco_collection_hashed


def write_beir(path: Path, n: int, titles: bool = True, extra: str = "") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"_id": f"d{i}", "title": f"T{i}" if titles and i % 3 else "",
                                "text": f"passage {i} ünï — \t tab\nnewline{extra}"}) + "\n")
    return path


class Counting:
    def __init__(self, parse):
        self.parse, self.calls = parse, 0

    def __call__(self, path):
        self.calls += 1
        return self.parse(path)


@pytest.fixture(autouse=True)
def small_min_docs(monkeypatch):
    monkeypatch.setattr(snapshot, "MIN_DOCS", 10)


@pytest.mark.parametrize("titles", [True, False])
def test_a_second_read_comes_from_the_snapshot_and_is_the_same(tmp_path, titles):
    path, root = write_beir(tmp_path / "corpus.jsonl", 40, titles), tmp_path / "cache"
    first, second = Counting(read_beir_corpus_hashed), Counting(read_beir_corpus_hashed)
    a = snapshot.read_corpus_cached(path, "beir-corpus", first, root)
    b = snapshot.read_corpus_cached(path, "beir-corpus", second, root)
    assert first.calls == 1 and second.calls == 0
    assert a == b == read_beir_corpus_hashed(path)
    texts = b[2]  # read through the memory map, decoded on access
    assert type(texts).__name__ == "MappedTexts" and texts[-1] == a[2][-1] and texts[3:7] == a[2][3:7]
    assert list(texts) == a[2] and texts == a[2] and texts != a[2][:-1]
    with pytest.raises(IndexError):
        texts[len(texts)]
    (snap,) = root.iterdir()
    assert sorted(p.name for p in snap.iterdir()) == sorted(["ids.bin", "texts.bin", "texts.offsets", "meta.json"]
                                                            + (["titles.bin"] if titles else []))


def test_msmarco_collections_too(tmp_path):
    path, root = tmp_path / "collection.tsv", tmp_path / "cache"
    path.write_text("".join(f"{i}\tpassage {i}\n" for i in range(30)))
    a = snapshot.read_corpus_cached(path, "msmarco-collection", read_msmarco_collection_hashed, root)
    again = Counting(read_msmarco_collection_hashed)
    assert snapshot.read_corpus_cached(path, "msmarco-collection", again, root) == a and again.calls == 0


def test_an_edited_or_replaced_file_is_parsed_again(tmp_path):
    path, root = write_beir(tmp_path / "corpus.jsonl", 40), tmp_path / "cache"
    snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, root)
    write_beir(path, 41)  # other content, size and mtime
    counting = Counting(read_beir_corpus_hashed)
    got = snapshot.read_corpus_cached(path, "beir-corpus", counting, root)
    assert counting.calls == 1 and len(got[0]) == 41 and got == read_beir_corpus_hashed(path)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: parsed again, to be safe
    counting = Counting(read_beir_corpus_hashed)
    snapshot.read_corpus_cached(path, "beir-corpus", counting, root)
    assert counting.calls == 1


def test_a_damaged_snapshot_is_parsed_again_and_replaced(tmp_path):
    path, root = write_beir(tmp_path / "corpus.jsonl", 40), tmp_path / "cache"
    want = snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, root)
    (snap,) = root.iterdir()
    texts = snap / "texts.bin"
    texts.write_bytes(texts.read_bytes()[:-5])  # truncated
    counting = Counting(read_beir_corpus_hashed)
    assert snapshot.read_corpus_cached(path, "beir-corpus", counting, root) == want and counting.calls == 1
    assert snapshot.load(snap, "beir-corpus") == want  # replaced by a whole one
    assert [p.name for p in root.iterdir()] == [snap.name]  # nothing set aside is left
    offsets = snap / "texts.offsets"
    offsets.write_bytes(offsets.read_bytes()[:-8] + (10**9).to_bytes(8, "little"))  # size kept, content wrong
    assert snapshot.load(snap, "beir-corpus") is None
    (snap / "meta.json").write_text("{not json")
    assert snapshot.load(snap, "beir-corpus") is None
    assert snapshot.load(snap, "msmarco-collection") is None


def test_no_snapshot_for_small_corpora_nul_characters_or_an_unwritable_cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    small = write_beir(tmp_path / "small.jsonl", 5)
    snapshot.read_corpus_cached(small, "beir-corpus", read_beir_corpus_hashed, root)
    assert not root.exists()
    nul = write_beir(tmp_path / "nul.jsonl", 40, extra="\u0000")
    got = snapshot.read_corpus_cached(nul, "beir-corpus", read_beir_corpus_hashed, root)
    assert got == read_beir_corpus_hashed(nul) and not any(root.glob("corpus-*"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ok = write_beir(tmp_path / "ok.jsonl", 40)
    assert snapshot.read_corpus_cached(ok, "beir-corpus", read_beir_corpus_hashed, blocker / "sub") == \
        read_beir_corpus_hashed(ok)


def test_bad_input_still_fails_as_before(tmp_path):
    from ance.run.errors import DataError

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i % 20}", "text": "x"}) + "\n" for i in range(40)))
    with pytest.raises(DataError, match="corpus.jsonl:21"):
        snapshot.read_corpus_cached(path, "beir-corpus", read_beir_corpus_hashed, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_load_dataset_reads_a_folder_through_the_snapshot(tmp_path, monkeypatch):
    from ance.data.dataset import load_dataset

    monkeypatch.setenv("ANCE_CACHE_DIR", str(tmp_path / "user"))
    root = tmp_path / "b"
    root.mkdir()
    write_beir(root / "corpus.jsonl", 40)
    (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "a query"}) + "\n")
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\n")
    a = load_dataset(root)
    assert len(list((tmp_path / "user" / "corpus").glob("corpus-*"))) == 1
    b = load_dataset(root)
    assert (a.corpus.ids, a.corpus.titles, a.corpus.texts, a.corpus.source_hash, a.fingerprint) == \
        (b.corpus.ids, b.corpus.titles, b.corpus.texts, b.corpus.source_hash, b.fingerprint)


def test_a_token_cache_built_from_mapped_texts_is_the_same(tmp_path, monkeypatch):
    """SciFact through its snapshot: the passages (title + mapped text) tokenize to exactly the ids the
    parsed corpus gives, and subsetting (data.max_docs) picks the same documents."""
    from ance.data.dataset import load_dataset
    from ance.model.biencoder import resolve_model
    from ance.model.tokcache import TokenCache

    scifact = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    if not (scifact / "corpus.jsonl").is_file():
        pytest.skip("SciFact not found (shared test data)")
    monkeypatch.setenv("ANCE_CACHE_DIR", str(tmp_path / "user"))
    parsed = load_dataset(scifact)
    mapped = load_dataset(scifact)  # the snapshot written by the first load
    assert type(mapped.corpus.texts).__name__ == "MappedTexts" and type(parsed.corpus.texts) is list
    assert mapped.corpus.passages() == parsed.corpus.passages() and mapped.fingerprint == parsed.fingerprint
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model("tiny-bert"))
    a = TokenCache.open(parsed.corpus.passages(), tok, 30, tmp_path / "a", parsed.corpus.source_hash, progress=False)
    b = TokenCache.open(mapped.corpus.passages(), tok, 30, tmp_path / "b", mapped.corpus.source_hash, progress=False)
    assert a.key == b.key and np.array_equal(a._ids, b._ids) and np.array_equal(a.lengths, b.lengths)
    small_a, small_b = load_dataset(scifact, max_docs=300), load_dataset(scifact, max_docs=300)
    assert small_b.corpus.ids == small_a.corpus.ids and small_b.corpus.texts == small_a.corpus.texts


def test_snapshots_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("ANCE_CORPUS_SNAPSHOTS", "0")
    path, root = write_beir(tmp_path / "corpus.jsonl", 40), tmp_path / "cache"
    counting = Counting(read_beir_corpus_hashed)
    for _ in range(2):
        snapshot.read_corpus_cached(path, "beir-corpus", counting, root)
    assert counting.calls == 2 and not root.exists()
