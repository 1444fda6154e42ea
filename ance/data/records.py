"""Training data as records: a query with its positive and negative passages, as Tevatron files,
sentence-transformers tables and Hugging Face datasets hold it, turned into what a BEIR folder gives.

A :class:`Record` is one query (an id, or none: the id is then a hash of the text), its positive
passages and its negative passages; a :class:`Passage` has a ``docid`` or none (a hash of its
text, so identical texts are one document and a passage that is one query's positive and another's
negative is recognised). :class:`CorpusBuilder` gives every passage its corpus id: with a corpus
given (``data.corpus``) a docid must be in it and a passage without one is found by its text
(appended when the corpus lacks it); without one the corpus is the union of the records' passages
in order of first appearance. :func:`build_split` turns one split's records into queries, qrels
and the records' own negatives (the static negatives, version 0). The result, :class:`RawData`, is
what :func:`ance.data.dataset.load_dataset` subsets and checks like a BEIR folder's files.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ance.run.errors import DataError

log = logging.getLogger(__name__)


def text_id(text: str) -> str:
    """A stable id of a text: 16 hex of its sha256 (identical texts, one id)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Passage:
    text: str
    title: str = ""
    docid: str | None = None  # None: the hash of the passage (title and text, joined as BEIR does)

    def joined(self) -> str:
        return (self.title + " " + self.text).strip()


@dataclass
class Record:
    path: str            # the file (or dataset) the record came from, for errors
    line: int | None     # its line (or row, 1-based)
    query: str
    positives: list[Passage]
    negatives: list[Passage] = field(default_factory=list)
    query_id: str | None = None


@dataclass
class RawSplit:
    """One split before subsetting: judged queries in order, their texts, qrels, own negatives."""

    qids: list[str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    negatives: dict[str, list[str]] | None = None   # qid -> doc ids in file order (positives removed)


@dataclass
class RawData:
    """A corpus and splits, before subsetting; ``note`` says what a user should know (once)."""

    ids: list[str]
    titles: list[str]
    texts: list[str]
    source_hash: str
    corpus_path: Path
    splits: dict[str, RawSplit]
    note: str | None = None


def corpus_hash(ids: Iterable[str], titles: Iterable[str], texts: Iterable[str]) -> str:
    """16 hex over every document: the corpus's identity for token caches when it is not one file."""
    h = hashlib.sha256()
    for d, t, x in zip(ids, titles, texts):
        h.update(f"{d}\x00{t}\x00{x}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


class CorpusBuilder:
    """Corpus ids for passages: found in a given corpus, or added in order of first appearance."""

    def __init__(self, corpus: tuple[list[str], list[str], list[str]] | None = None, path: str | Path = "",
                 strict: bool | None = None):
        self.given = corpus is not None
        self.strict = self.given if strict is None else strict  # a docid must be in the corpus
        self.path = str(path)
        self.ids, self.titles, self.texts = (list(c) for c in corpus) if corpus else ([], [], [])
        self.index = {d: i for i, d in enumerate(self.ids)}
        self.first: dict[str, tuple[str, int | None]] = {}
        self._by_text: dict[str, str] | None = None
        self._by_id = False  # a passage was added under its own docid (not a hash of its text)
        self.appended = 0

    def _add(self, did: str, p: Passage, where: tuple[str, int | None]) -> str:
        self.index[did] = len(self.ids)
        self.ids.append(did)
        self.titles.append(p.title)
        self.texts.append(p.text)
        self.first[did] = where
        if self._by_text is not None:
            self._by_text.setdefault(p.joined(), did)
        return did

    def doc(self, p: Passage, path: str, line: int | None, what: str) -> str:
        """The corpus id of ``p`` (``what`` names its field in errors)."""
        if p.docid is not None:
            i = self.index.get(p.docid)
            if i is not None:
                if not self.given and p.docid in self.first and (self.titles[i], self.texts[i]) != (p.title, p.text):
                    fpath, fline = self.first[p.docid]
                    raise DataError(path, line, f"{what}: docid {p.docid!r} has another title or text than at "
                                                f"{fpath}:{fline}; one docid, one passage")
                return p.docid
            if self.strict:
                raise DataError(path, line, f"{what}: docid {p.docid!r} is not in the corpus {self.path}; "
                                            "give the corpus these passages come from (data.corpus)")
            self._by_id = True
            return self._add(p.docid, p, (path, line))
        joined = p.joined()
        did = text_id(joined)
        if did in self.index and did in self.first:  # a passage of the records, seen before
            return did
        if self.given or self._by_id:  # texts may hide behind other ids: look them up (built once)
            if self._by_text is None:
                self._by_text = {}
                for d, t, x in zip(self.ids, self.titles, self.texts):
                    self._by_text.setdefault((t + " " + x).strip(), d)
            found = self._by_text.get(joined)
            if found is not None:
                return found
        if self.given:
            self.appended += 1
        return self._add(did, p, (path, line))


def build_split(records: Iterable[Record], builder: CorpusBuilder) -> RawSplit:
    """Queries (merged by id: a query on several rows keeps every positive and negative), qrels, negatives."""
    qids: list[str] = []
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negs: dict[str, dict[str, None]] = {}
    seen_at: dict[str, tuple[str, int | None]] = {}
    for rec in records:
        qid = rec.query_id if rec.query_id is not None else text_id(rec.query)
        if qid in queries:
            if queries[qid] != rec.query:
                fpath, fline = seen_at[qid]
                raise DataError(rec.path, rec.line, f"query_id {qid!r} has another query text than at "
                                                    f"{fpath}:{fline}; one id, one query")
        else:
            qids.append(qid)
            queries[qid] = rec.query
            seen_at[qid] = (rec.path, rec.line)
            qrels[qid], negs[qid] = {}, {}
        for p in rec.positives:
            qrels[qid][builder.doc(p, rec.path, rec.line, "positive")] = 1
        for p in rec.negatives:
            negs[qid][builder.doc(p, rec.path, rec.line, "negative")] = None
    negatives = {q: [d for d in negs[q] if d not in qrels[q]] for q in qids}
    return RawSplit(qids, queries, qrels, negatives)


def build(splits: dict[str, Iterable[Record]], corpus: tuple[list[str], list[str], list[str]] | None,
          corpus_path: str | Path, source: str, corpus_hash_: str | None = None) -> RawData:
    """Every split's records over one corpus (given, or the union of their passages)."""
    builder = CorpusBuilder(corpus, corpus_path)
    raw = {name: build_split(records, builder) for name, records in splits.items()}
    note = None
    if not builder.given:
        note = (f"no corpus given: the corpus is the {len(builder.ids)} passages of {source}, so ANCE mines "
                "negatives only among them; give the full corpus with data.corpus=FILE (Tevatron corpus "
                "JSONL {docid, title, text}, a BEIR corpus.jsonl or folder)")
    elif builder.appended:
        log.warning("%d passages of %s are not in the corpus %s (by text); they were added to it",
                    builder.appended, source, corpus_path)
    source_hash = corpus_hash_ if corpus_hash_ and not builder.appended else corpus_hash(
        builder.ids, builder.titles, builder.texts)
    return RawData(builder.ids, builder.titles, builder.texts, source_hash, Path(str(corpus_path or source)),
                   raw, note)
