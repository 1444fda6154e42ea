"""Datasets: a corpus, queries and judgements, read from a BEIR or MS MARCO folder.

Two layouts are understood (``detect_format`` tells them apart)::

    BEIR                          MS MARCO (TSV)
    corpus.jsonl                  collection.tsv          pid<TAB>text
    queries.jsonl                 queries.<split>.tsv     qid<TAB>text
    qrels/<split>.tsv             qrels.<split>.tsv       qid<TAB>0<TAB>pid<TAB>rel

A split's queries are those with at least one judgement, in order of first
appearance in its qrels file; corpus indices follow the corpus file. Every
process loads the same data the same way, so these indices agree everywhere
and ``Dataset.fingerprint`` proves it (docs/design.md, "Identities").

Bad input fails at once with a ``DataError`` naming ``file:line``, what was
wrong and what to do. Ids must be non-empty and free of whitespace, since run
files (TREC) and negatives files separate fields by whitespace.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ance.data.download import resolve_data_path
from ance.data.formats import RECORD_FORMATS, add_split, detect_file, read_records
from ance.data.hfdata import is_hf_folder
from ance.data.lazylist import LazyList
from ance.data.records import RawData, RawSplit
from ance.data.snapshot import read_corpus_cached
from ance.run.errors import ConfigError, DataError
from ance.data.readers import (read_beir_corpus_hashed, read_beir_queries, read_msmarco_collection_hashed,
                      read_msmarco_queries, read_qrels_located)

log = logging.getLogger(__name__)

FORMATS = ("auto", "beir", "msmarco", *RECORD_FORMATS)
_EXPECTED = ("a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), an MS MARCO folder "
             "(collection.tsv, queries.<split>.tsv, qrels.<split>.tsv) or a Hugging Face save_to_disk folder")


# --------------------------------------------------------------------------- containers


@dataclass(repr=False)
class Corpus:
    """Documents in file order (after subsetting); index i is the document's corpus index."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    path: Path
    source_hash: str  # sha256 of the file bytes, 16 hex, + "~<digest of kept ids>" when subsetted

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Corpus({len(self)} docs from {self.path}, source_hash={self.source_hash})"

    def passage(self, i: int) -> str:
        """Title and text joined as BEIR does."""
        return (self.titles[i] + " " + self.texts[i]).strip()

    def passages(self) -> "Passages":
        """Every document's passage, joined on access: a tokenizer reads them in blocks, and a token cache
        already built needs only their number, so 8.8M of them are never held twice."""
        return Passages(self)

    @cached_property
    def index_of(self) -> dict[str, int]:
        """Doc id -> corpus index."""
        return {d: i for i, d in enumerate(self.ids)}


class Passages(LazyList):
    """``corpus.passage(i)`` for every i, as a read-only sequence (slices are lists)."""

    def __init__(self, corpus: Corpus):
        self._corpus = corpus

    def __len__(self) -> int:
        return len(self._corpus.ids)

    def _one(self, i: int) -> str:
        return self._corpus.passage(i)

    def __repr__(self) -> str:
        return f"Passages({len(self)} of {self._corpus!r})"


@dataclass(repr=False)
class QuerySplit:
    """One split's judged queries; query index i is position i in ``ids``."""

    name: str
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]  # qid -> {doc id: relevance}, zero judgements kept
    positives: list[np.ndarray]  # per query: sorted int64 corpus indices with relevance > 0
    negatives: list[np.ndarray] | None = None  # per query: the data's own negatives, in file order (or None)

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"QuerySplit({self.name!r}, {len(self)} queries)"


@dataclass(repr=False)
class Dataset:
    corpus: Corpus
    splits: dict[str, QuerySplit]
    fingerprint: str  # sha256 over corpus ids and every split's query ids, 16 hex
    source: Path
    note: str | None = None  # what a user must know once (e.g. the corpus is only the file's passages)

    def split(self, name: str) -> QuerySplit:
        try:
            return self.splits[name]
        except KeyError:
            raise ConfigError(f"split {name!r} was not loaded from {self.source}; loaded: "
                              f"{sorted(self.splits)} (pass it in load_dataset(splits=...))") from None

    def __repr__(self) -> str:
        return (f"Dataset({self.source}, {len(self.corpus)} docs, "
                f"splits={ {k: len(v) for k, v in self.splits.items()} }, fingerprint={self.fingerprint})")


# --------------------------------------------------------------------------- line readers


# --------------------------------------------------------------------------- layouts


def detect_format(path: str | Path) -> str:
    """``beir``, ``msmarco``, ``tevatron``, ``pairs`` or ``hf``, from the path and the first record."""
    root = Path(path)
    if not root.is_dir() or str(path).startswith("hf:"):
        return detect_file(path)  # a file, hf:NAME, or nothing there (which says so)
    if (root / "corpus.jsonl").is_file():
        return "beir"
    if (root / "collection.tsv").is_file():
        return "msmarco"
    if is_hf_folder(root):
        return "hf"
    found = sorted(p.name for p in root.iterdir())
    more = ", ..." if len(found) > 10 else ""
    raise ConfigError(f"{root}: cannot tell the data format: expected {_EXPECTED}; found "
                      f"{', '.join(found[:10]) or 'nothing'}{more}")


class _Layout:
    """File names of one format."""

    def __init__(self, root: Path, fmt: str):
        self.root, self.fmt = root, fmt
        self.corpus = root / ("corpus.jsonl" if fmt == "beir" else "collection.tsv")

    def qrels(self, split: str) -> Path:
        return self.root / "qrels" / f"{split}.tsv" if self.fmt == "beir" else self.root / f"qrels.{split}.tsv"

    def queries(self, split: str) -> Path:
        return self.root / "queries.jsonl" if self.fmt == "beir" else self.root / f"queries.{split}.tsv"

    def available_splits(self) -> list[str]:
        if self.fmt == "beir":
            return sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))
        return sorted(p.name[len("qrels."):-len(".tsv")] for p in self.root.glob("qrels.*.tsv"))

    def read_corpus(self) -> tuple[list[str], list[str], list[str], str]:
        if not self.corpus.is_file():
            raise DataError(self.corpus, None, f"file not found; a {self.fmt} folder needs it")
        if self.fmt == "beir":
            return read_corpus_cached(self.corpus, "beir-corpus", read_beir_corpus_hashed)
        return read_corpus_cached(self.corpus, "msmarco-collection", read_msmarco_collection_hashed)

    def read_queries(self, split: str) -> dict[str, str]:
        path = self.queries(split)
        if not path.is_file():
            raise DataError(path, None, f"file not found; split {split!r} needs its queries here")
        return (read_beir_queries if self.fmt == "beir" else read_msmarco_queries)(path)


# --------------------------------------------------------------------------- loading


def _positive_int(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


def _fingerprint(doc_ids: Sequence[str], splits: dict[str, QuerySplit]) -> str:
    h = hashlib.sha256()
    h.update("\n".join(doc_ids).encode())
    for name in sorted(splits):
        h.update(f"\n\x00split {name}\n".encode())
        h.update("\n".join(splits[name].ids).encode())
    return h.hexdigest()[:16]


def _subset_docs(n_docs: int, positive: np.ndarray, max_docs: int, seed: int) -> np.ndarray:
    """Sorted corpus indices: every positive, then a seeded sample of the rest up to ``max_docs``."""
    if len(positive) > max_docs:
        log.warning("max_docs=%d is below the %d positives of the kept queries; keeping them all",
                    max_docs, len(positive))
    others = np.setdiff1d(np.arange(n_docs, dtype=np.int64), positive, assume_unique=True)
    n_fill = min(max(max_docs - len(positive), 0), len(others))
    fill = np.random.default_rng(seed).choice(others, size=n_fill, replace=False)
    return np.union1d(positive, fill)


def load_dataset(path: str | Path, splits: str | Iterable[str] = ("train",), format: str = "auto",
                 max_docs: int | None = None, max_queries: int | None = None, seed: int = 0, *,
                 corpus: str | None = None, columns: Any = None, eval_path: str | None = None) -> Dataset:
    """Read the corpus and the named splits (only those) of ``path``.

    ``path``: a BEIR or MS MARCO folder, or a record format (:mod:`ance.data.formats`: Tevatron,
    sentence-transformers pairs/triplets, Hugging Face datasets) with its corpus ``corpus`` (else
    the union of its passages) and ``columns`` mapped. ``eval_path``: the last split named is read
    from there instead, over the same corpus. Subset mode, for tests and quick runs:
    ``max_queries`` keeps the first N queries of each split; ``max_docs`` keeps every positive of
    the kept queries and fills up to ``max_docs`` with a ``seed``-ed sample of the other
    documents, in corpus order, then drops the judgements of dropped documents. Ids are always
    checked against the full files first.
    """
    names = [splits] if isinstance(splits, str) else list(dict.fromkeys(splits))
    if not names or not all(isinstance(s, str) and s for s in names):
        raise ConfigError(f"splits must be a non-empty list of split names, got {splits!r}")
    if format not in FORMATS:
        raise ConfigError(f"data format {format!r} is not one of {', '.join(FORMATS)}")
    max_docs = _positive_int("max_docs", max_docs)
    max_queries = _positive_int("max_queries", max_queries)
    extra = names[1:] if eval_path and len(names) > 1 else []
    own = [n for n in names if n not in extra]
    root = resolve_data_path(path)  # hf:NAME stays a name
    fmt = detect_format(root) if format == "auto" else format
    if fmt in ("beir", "msmarco"):
        if corpus:
            raise ConfigError(f"data.corpus={corpus}: a {fmt} folder has its own corpus; data.corpus is for "
                              "Tevatron, pairs and Hugging Face data (set it to null)")
        if not root.is_dir():
            what = "a file, not a folder" if root.exists() else "no such file or directory"
            raise DataError(root, None, f"{what}; data.format={fmt} needs {_EXPECTED}")
        raw = _read_folder(root, fmt, own)
    else:
        raw = read_records(str(root), fmt, own, corpus=corpus, columns=columns)
    eval_fmt = detect_format(eval_path) if extra else None
    if eval_fmt in ("beir", "msmarco"):
        raise ConfigError(f"data.eval_path={eval_path}: a {eval_fmt} folder; data.eval_path takes Tevatron, pairs or "
                          "Hugging Face data over data.path's corpus (a folder's own splits are data.eval_split)")
    for name in extra:
        add_split(raw, name, str(eval_path), eval_fmt, columns)
    return _assemble(raw, names, max_docs, max_queries, seed, root)


def _read_folder(root: Path, fmt: str, names: list[str]) -> RawData:
    """A BEIR or MS MARCO folder's corpus and splits, every id checked."""
    layout = _Layout(root, fmt)
    doc_ids, titles, texts, source_hash = layout.read_corpus()
    if not doc_ids:
        raise DataError(layout.corpus, None, "no documents; the corpus must hold at least one")
    doc_index = set(doc_ids)
    shared_queries = layout.read_queries(names[0]) if fmt == "beir" else None
    raw = {}
    for name in names:
        qrels_path = layout.qrels(name)
        if not qrels_path.is_file():
            raise DataError(qrels_path, None, f"no qrels for split {name!r}; splits in {root}: "
                                              f"{', '.join(layout.available_splits()) or 'none'}")
        qrels, where = read_qrels_located(qrels_path)
        if not qrels:
            raise DataError(qrels_path, None, f"no judgements; split {name!r} is empty")
        queries = shared_queries if shared_queries is not None else layout.read_queries(name)
        for qid, judged in qrels.items():
            if qid not in queries:
                raise DataError(qrels_path, where[qid, next(iter(judged))],
                                f"query id {qid!r} is not in {layout.queries(name)}")
            for did in judged:
                if did not in doc_index:
                    raise DataError(qrels_path, where[qid, did], f"doc id {did!r} is not in {layout.corpus}")
        raw[name] = RawSplit(list(qrels), queries, qrels)
    return RawData(doc_ids, titles, texts, source_hash, layout.corpus, raw)


def _assemble(raw: RawData, names: list[str], max_docs: int | None, max_queries: int | None, seed: int,
              root: Path) -> Dataset:
    """Subset (``max_queries``, ``max_docs``), index, fingerprint."""
    doc_ids, titles, texts, source_hash = raw.ids, raw.titles, raw.texts, raw.source_hash
    if not doc_ids:
        raise DataError(raw.corpus_path, None, "no documents; the corpus must hold at least one")
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    kept_q = {}
    for name in names:
        qids = raw.splits[name].qids[:max_queries]
        if not qids:
            raise DataError(root, None, f"no queries in split {name!r}")
        kept_q[name] = qids
    if max_docs is not None and max_docs < len(doc_ids):
        positive = np.array(sorted({doc_index[d] for name, qids in kept_q.items() for q in qids
                                    for d, r in raw.splits[name].qrels[q].items() if r > 0}), dtype=np.int64)
        keep = _subset_docs(len(doc_ids), positive, max_docs, seed)
        doc_ids = [doc_ids[i] for i in keep]
        titles = [titles[i] for i in keep]
        texts = [texts[i] for i in keep]
        source_hash += "~" + hashlib.sha256("\n".join(doc_ids).encode()).hexdigest()[:16]
        doc_index = {d: i for i, d in enumerate(doc_ids)}
        log.info("subset of %s: %d docs kept (seed %d)", root, len(doc_ids), seed)

    corpus = Corpus(doc_ids, titles, texts, raw.corpus_path, source_hash)
    corpus.__dict__["index_of"] = doc_index  # fill the cached property
    loaded = {}
    for name, qids in kept_q.items():
        split = raw.splits[name]
        kept = {q: {d: r for d, r in split.qrels[q].items() if d in doc_index} for q in qids}
        positives = [np.array(sorted(doc_index[d] for d, r in kept[q].items() if r > 0), dtype=np.int64)
                     for q in qids]
        negatives = None
        if split.negatives is not None:
            negatives = [np.array([doc_index[d] for d in split.negatives.get(q, ()) if d in doc_index], dtype=np.int64)
                         for q in qids]
        loaded[name] = QuerySplit(name, qids, [split.queries[q] for q in qids], kept, positives, negatives)
    return Dataset(corpus, loaded, _fingerprint(doc_ids, loaded), root, raw.note)


def load_for_config(cfg: Any) -> Dataset:
    """The run's dataset as every role loads it: train split plus eval split, subset as configured."""
    d = cfg.data
    splits = [d.train_split] + ([d.eval_split] if d.eval_split else [])
    return load_dataset(d.path, splits=splits, format=d.format, max_docs=d.max_docs,
                        max_queries=d.max_queries, seed=getattr(d, "subset_seed", 0),
                        corpus=getattr(d, "corpus", None), columns=getattr(d, "columns", None),
                        eval_path=getattr(d, "eval_path", None))
