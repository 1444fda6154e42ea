"""Readers of the files a dataset is made of: BEIR JSON lines and TSV, MS MARCO TSV, qrels.

Each reader streams its file once, checks every line (ids non-empty, without
whitespace, unique; fields present; valid UTF-8, no lone surrogates) and fails
at once with a :class:`~ance.run.errors.DataError` naming ``file:line`` and what to
do. The ``*_hashed`` readers also return a digest of the file's bytes, the
corpus's identity for token caches (:mod:`ance.model.tokcache`); how the files are
put together into a :class:`~ance.data.dataset.Dataset` is :mod:`ance.data.dataset`'s.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from ance.run.errors import DataError


def _lines(path: Path, hasher: Any = None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of every non-blank line, UTF-8; feeds the raw bytes to ``hasher``."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            if hasher is not None:
                hasher.update(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                              "re-encode the file as UTF-8") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")  # a byte-order mark is not part of the data
            if line.strip():
                yield lineno, line.rstrip("\r\n")


def _check_id(value: str, what: str, path: Path, lineno: int) -> str:
    if value.split() != [value]:  # empty, or whitespace somewhere; one C call, fast on millions of ids
        raise DataError(path, lineno, f"{what} {value!r} is empty or contains whitespace; run and negatives "
                                      "files separate fields by whitespace, so rename it")
    return value


class _Unique:
    """Remembers where each id was first seen, to name both lines of a duplicate."""

    def __init__(self, what: str, path: Path):
        self.what, self.path, self.first = what, path, {}

    def add(self, key: str, lineno: int) -> None:
        first = self.first.setdefault(key, lineno)
        if first != lineno:
            raise DataError(self.path, lineno, f"duplicate {self.what} {key!r}, also at line {first}; "
                                               "ids must be unique")


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_object(path: Path, lineno: int, line: str, shape: str = "one JSON object") -> dict:
    """Line ``lineno`` of a JSON-lines file as an object, or :class:`DataError` naming file and line;
    ``shape`` says what a line should hold."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(path, lineno, f"malformed JSON ({e.msg} at column {e.colno}); each line must be {shape}") \
            from None
    if not isinstance(rec, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _json_lines(path: Path, hasher: Any, what: str) -> Iterator[tuple[int, str, str, str]]:
    """``(line, id, title, text)`` of a BEIR JSON-lines file."""
    seen = _Unique(what, path)
    for lineno, line in _lines(path, hasher):
        rec = json_object(path, lineno, line, 'one object like {"_id": "1", "title": "...", "text": "..."}')
        fields = []
        for key in ("_id", "title", "text"):
            if key not in rec:
                if key == "title":
                    fields.append("")
                    continue
                raise DataError(path, lineno, f'missing "{key}"; every line needs "_id" and "text" '
                                              '("title" is optional)')
            value = rec[key]
            if not isinstance(value, str):
                raise DataError(path, lineno, f'"{key}" must be a string, got {type(value).__name__} '
                                              f'{value!r:.40}; quote it in the file')
            if _SURROGATE.search(value):  # "\ud800" escapes decode to text no tokenizer (or UTF-8) takes
                at = _SURROGATE.search(value).start()
                raise DataError(path, lineno, f'"{key}" holds a lone surrogate {value[at]!r} at character {at} '
                                              "(an unpaired \\uD800-\\uDFFF escape); fix or drop that line")
            fields.append(value)
        doc_id, title, text = fields
        _check_id(doc_id, what, path, lineno)
        seen.add(doc_id, lineno)
        yield lineno, doc_id, title, text


def _tsv_pairs(path: Path, hasher: Any, what: str) -> Iterator[tuple[int, str, str]]:
    """``(line, id, text)`` of an ``id<TAB>text`` file."""
    seen = _Unique(what, path)
    for lineno, line in _lines(path, hasher):
        parts = line.split("\t", 1)
        if len(parts) != 2:
            raise DataError(path, lineno, f"expected 2 tab-separated columns ({what}, text), got 1")
        key = _check_id(parts[0].strip(), what, path, lineno)
        seen.add(key, lineno)
        yield lineno, key, parts[1]


def _digest(hasher: Any) -> str:
    return hasher.hexdigest()[:16]


def read_beir_corpus_hashed(path: Path) -> tuple[list[str], list[str], list[str], str]:
    h = hashlib.sha256()
    ids, titles, texts = [], [], []
    for _, doc_id, title, text in _json_lines(Path(path), h, "doc id"):
        ids.append(doc_id)
        titles.append(title)
        texts.append(text)
    return ids, titles, texts, _digest(h)


def read_msmarco_collection_hashed(path: Path) -> tuple[list[str], list[str], list[str], str]:
    h = hashlib.sha256()
    ids, texts = [], []
    for _, pid, text in _tsv_pairs(Path(path), h, "passage id"):
        ids.append(pid)
        texts.append(text)
    return ids, [""] * len(ids), texts, _digest(h)


def read_beir_corpus(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, titles, texts)`` of a BEIR ``corpus.jsonl``."""
    return read_beir_corpus_hashed(Path(path))[:3]


def read_beir_queries(path: str | Path) -> dict[str, str]:
    """qid -> text of a BEIR ``queries.jsonl`` (a title, if any, is ignored as BEIR does)."""
    return {qid: text for _, qid, _, text in _json_lines(Path(path), None, "query id")}


def read_msmarco_collection(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, titles, texts)`` of an MS MARCO ``collection.tsv``; titles are empty."""
    return read_msmarco_collection_hashed(Path(path))[:3]


def read_msmarco_queries(path: str | Path) -> dict[str, str]:
    """qid -> text of an MS MARCO ``queries.<split>.tsv``."""
    return {qid: text for _, qid, text in _tsv_pairs(Path(path), None, "query id")}


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def read_qrels_located(path: Path) -> tuple[dict[str, dict[str, int]], dict[tuple[str, str], int]]:
    """Judgements and the line of each ``(qid, did)``.

    BEIR: ``query-id corpus-id score`` (a header line is skipped); TREC:
    ``qid iteration docid rel``. Tab-separated, or whitespace when a line has no tab.
    """
    qrels: dict[str, dict[str, int]] = {}
    where: dict[tuple[str, str], int] = {}
    ncols = first = None
    for lineno, line in _lines(path):
        line = line.strip()
        parts = line.split("\t") if "\t" in line else line.split()
        if ncols is None:
            if len(parts) not in (3, 4):
                raise DataError(path, lineno, f"expected 3 columns (query-id, corpus-id, score) or 4 "
                                              f"(TREC: qid 0 docid rel), got {len(parts)}")
            ncols, first = len(parts), lineno
            if not _is_int(parts[-1].strip()):
                continue  # the header
        elif len(parts) != ncols:
            raise DataError(path, lineno, f"expected {ncols} columns like line {first}, got {len(parts)}")
        qid, did, score = parts[0].strip(), parts[-2].strip(), parts[-1].strip()
        try:
            rel = int(score)
        except ValueError:
            raise DataError(path, lineno, f"score {score!r} is not an integer") from None
        _check_id(qid, "query id", path, lineno)
        _check_id(did, "doc id", path, lineno)
        judged = qrels.setdefault(qid, {})
        if did in judged:
            if judged[did] != rel:
                raise DataError(path, lineno, f"query {qid!r} judges doc {did!r} {rel}, but line "
                                              f"{where[qid, did]} says {judged[did]}; keep one")
            continue
        judged[did] = rel
        where[qid, did] = lineno
    return qrels, where


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """qid -> {doc id: relevance}, queries in order of first appearance."""
    return read_qrels_located(Path(path))[0]
