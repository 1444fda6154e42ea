"""sentence-transformers style pairs and triplets: (anchor, positive), (anchor, positive, negative),
(anchor, positive, negative_1, ..., negative_n), in JSON lines, CSV/TSV, Parquet or a Hugging Face
dataset.

Columns are mapped by ``data.columns`` (``{query: anchor, positive: pos, negatives: [neg]}``) or
guessed from the common names (anchor/query/question, positive/pos, negative/neg/negative_1...);
when no name is known, by position as sentence-transformers does (query, positive, negatives...).
A cell may hold a string or a list of strings (``{"query", "pos": [...], "neg": [...]}``). Texts
have no ids: a passage's id is a hash of its text (:func:`ance.data.records.text_id`), and so is a
query's, so a query on several rows is one query with every positive and negative of its rows.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ance.data.records import Passage, Record
from ance.run.data_checks import check_columns
from ance.run.errors import DataError

log = logging.getLogger(__name__)

QUERY_NAMES = ("anchor", "query", "question", "queries", "sentence1", "sentence_a", "text1")
POSITIVE_NAMES = ("positive", "pos", "positives", "document", "passage", "answer", "sentence2", "sentence_b",
                  "text2")
NEGATIVE_NAMES = ("negative", "neg", "negatives", "hard_negative", "hard_negatives")
_NUMBERED = re.compile(r"^(?:negative|neg|hard_negative)[_ -]?(\d+)$")
_LABELS = ("label", "labels", "score", "scores")
MAPPING_HINT = "map the columns: data.columns='{query: COL, positive: COL, negatives: [COL, ...]}'"


@dataclass(frozen=True)
class Columns:
    query: str
    positive: str
    negatives: tuple[str, ...]


def resolve_columns(names: list[str], mapping: Any, path: str | Path) -> Columns:
    """The query, positive and negative columns among ``names`` (mapped, guessed, or by position)."""
    given = check_columns(mapping)
    for key, value in given.items():
        for col in (value if isinstance(value, tuple) else (value,)):
            if col not in names:
                raise DataError(path, None, f'no column "{col}" (data.columns.{key}); the columns are: '
                                            f"{', '.join(names) or 'none'}")
    lower = {n.lower(): n for n in names}
    labels = [lower[n] for n in _LABELS if n in lower]
    if labels:  # (sentence1, sentence2, label): label 0 rows are not positives, and silently training on them hurts
        raise DataError(path, None, f'a "{labels[0]}" column: labelled pairs (sentence-transformers\' (sentence1, '
                                    "sentence2, label/score)) are not (query, positive) pairs; keep the positive "
                                    "rows and drop the column")

    def guess(choices: tuple[str, ...]) -> str | None:
        return next((lower[c] for c in choices if c in lower), None)

    query = given.get("query") or guess(QUERY_NAMES)
    positive = given.get("positive") or guess(POSITIVE_NAMES)
    if "negatives" in given:
        negatives = given["negatives"]
    else:
        numbered = sorted((int(m.group(1)), n) for n in names if (m := _NUMBERED.match(n.lower())))
        negatives = tuple(n for _, n in numbered) or tuple(lower[c] for c in NEGATIVE_NAMES if c in lower)[:1]
    if query is None and positive is None and not given:
        usable = list(names)
        if len(usable) < 2:
            raise DataError(path, None, f"cannot tell the query and positive columns among "
                                        f"{', '.join(names) or 'no columns'}; {MAPPING_HINT}")
        query, positive, negatives = usable[0], usable[1], tuple(usable[2:])
        log.info("%s: columns by position (as sentence-transformers): query=%s, positive=%s, negatives=%s",
                 path, query, positive, list(negatives))
    if query is None or positive is None:
        raise DataError(path, None, f"cannot tell the {'query' if query is None else 'positive'} column among "
                                    f"{', '.join(names)}; {MAPPING_HINT}")
    return Columns(query, positive, tuple(negatives))


def _cell_texts(row: dict, col: str, key: str, path: str, line: int | None) -> list[str]:
    if col not in row:
        raise DataError(path, line, f'missing "{col}" (the {key} column); every record needs it')
    value = row[col]
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, str):
            raise DataError(path, line, f'"{col}" (the {key} column) must be a string or a list of strings, got '
                                        f"{type(v).__name__} {v!r:.40}")
    return [v for v in values if v.strip()]


def pair_records(rows: Iterable[tuple[int, dict]], columns: Columns, path: str | Path) -> Iterator[Record]:
    """Records of table rows ``(line, dict)`` under ``columns``."""
    path = str(path)
    for line, row in rows:
        queries = _cell_texts(row, columns.query, "query", path, line)
        if len(queries) != 1:
            raise DataError(path, line, f'"{columns.query}" (the query column) must be one non-empty string, '
                                        f"got {row.get(columns.query)!r:.60}")
        positives = _cell_texts(row, columns.positive, "positive", path, line)
        if not positives:
            raise DataError(path, line, f'"{columns.positive}" (the positive column) is empty; every record needs '
                                        "a positive passage")
        negatives = [t for col in columns.negatives for t in _cell_texts(row, col, "negative", path, line)]
        yield Record(path, line, queries[0], [Passage(t) for t in positives], [Passage(t) for t in negatives])
