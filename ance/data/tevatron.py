"""Tevatron training records and corpus rows.

A Tevatron training file (JSON lines, ``.jsonl.gz``, or the same columns in Parquet or a Hugging
Face dataset) holds one query a line::

    {"query_id": "1", "query": "...", "positive_passages": [{"docid": "7", "title": "...", "text": "..."}],
     "negative_passages": [{"docid": "9", "title": "...", "text": "..."}, ...]}

and its corpus one passage a line, ``{"docid", "title", "text"}`` (a BEIR corpus writes ``_id``). A
passage without a docid is known by its text (a hash of it, or the corpus passage of the same text).
Every field is checked; an error names the file, the line (or row) and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from ance.data.records import Passage, Record
from ance.run.errors import DataError

EXAMPLE = ('{"query_id": "1", "query": "...", "positive_passages": [{"docid": "7", "title": "", '
           '"text": "..."}], "negative_passages": [...]}')


def is_tevatron(columns: Iterable[str]) -> bool:
    """Whether a record with these keys is a Tevatron training record (passages, or document ids only)."""
    return bool({"positive_passages", "positive_document_ids"} & set(columns))


def ids_only(columns: Iterable[str]) -> bool:
    """Tevatron's newer records name their documents by id only (``positive_document_ids``): they need a corpus."""
    cols = set(columns)
    return "positive_document_ids" in cols and "positive_passages" not in cols


def _doc_ids(row: dict, key: str, path: str, line: int | None) -> list[Passage]:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(path, line, f'"{key}" must be a list of document ids, got {type(value).__name__}')
    return [Passage("", "", _ident(v, path, line, f"{key}[{i}]")) for i, v in enumerate(value)]


def _ident(value: Any, path: str, line: int | None, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, line, f'"{what}" must be a string (or an integer), got '
                                    f"{type(value).__name__} {value!r:.40}")
    text = str(value)
    if text.split() != [text]:
        raise DataError(path, line, f'"{what}" {text!r} is empty or contains whitespace; run and negatives '
                                    "files separate fields by whitespace, so rename it")
    return text


def _text(row: dict, key: str, path: str, line: int | None, what: str, optional: bool = False) -> str:
    if key not in row or row[key] is None:
        if optional:
            return ""
        raise DataError(path, line, f'missing "{what}"; a Tevatron record looks like {EXAMPLE}')
    value = row[key]
    if not isinstance(value, str):
        raise DataError(path, line, f'"{what}" must be a string, got {type(value).__name__} {value!r:.40}')
    return value


def _passages(row: dict, key: str, path: str, line: int | None) -> list[Passage]:
    value = row.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DataError(path, line, f'"{key}" must be a list of {{docid, title, text}} objects, got '
                                    f"{type(value).__name__}")
    out = []
    for i, p in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(p, dict):
            raise DataError(path, line, f'"{where}" must be an object {{docid, title, text}}, got '
                                        f"{type(p).__name__}")
        # without a docid a passage is known by its text (a hash, as for sentence-transformers rows)
        docid = None if p.get("docid") is None else _ident(p["docid"], path, line, f"{where}.docid")
        text = _text(p, "text", path, line, f"{where}.text")
        title = _text(p, "title", path, line, f"{where}.title", optional=True)
        out.append(Passage(text, title, docid))
    return out


def tevatron_records(rows: Iterable[tuple[int, dict]], path: str | Path) -> Iterator[Record]:
    """Records of Tevatron training rows ``(line, dict)``."""
    path = str(path)
    for line, row in rows:
        if "query_id" not in row or row["query_id"] is None:
            raise DataError(path, line, f'missing "query_id"; a Tevatron record looks like {EXAMPLE}')
        qid = _ident(row["query_id"], path, line, "query_id")
        qkey = "query_text" if "query" not in row and "query_text" in row else "query"
        query = _text(row, qkey, path, line, qkey)
        if "positive_passages" in row or "positive_document_ids" not in row:
            pkey, nkey, read = "positive_passages", "negative_passages", _passages
        else:
            pkey, nkey, read = "positive_document_ids", "negative_document_ids", _doc_ids
        if pkey not in row:
            raise DataError(path, line, f'missing "{pkey}"; a Tevatron record looks like {EXAMPLE}')
        positives = read(row, pkey, path, line)
        if not positives:
            raise DataError(path, line, f'"{pkey}" is empty; every query needs at least one positive '
                                        "passage (drop the record)")
        yield Record(path, line, query, positives, read(row, nkey, path, line), qid)


def corpus_rows(rows: Iterable[tuple[int, dict]], path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """``(ids, titles, texts)`` of corpus rows ``{docid, title, text}`` (or BEIR's ``{_id, title, text}``)."""
    path = str(path)
    ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    first: dict[str, int | None] = {}
    for line, row in rows:
        key = "docid" if "docid" in row else "_id"
        if row.get(key) is None:
            raise DataError(path, line, 'missing "docid"; a corpus line looks like {"docid": "7", "title": "...", '
                                        '"text": "..."} (or BEIR\'s "_id")')
        did = _ident(row[key], path, line, key)
        if did in first:
            raise DataError(path, line, f"duplicate {key} {did!r}, also at line {first[did]}; ids must be unique")
        first[did] = line
        ids.append(did)
        titles.append(_text(row, "title", path, line, "title", optional=True))
        texts.append(_text(row, "text", path, line, "text"))
    return ids, titles, texts
