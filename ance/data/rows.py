"""Rows of a table file as dicts, each with where it came from: JSON lines (``.gz`` too), CSV/TSV
with a header, Parquet (through pyarrow, an optional dependency).

Every reader yields ``(line, row)``: the file's line number (JSON lines, CSV) or the 1-based row
(Parquet), so an error names the record. Malformed input (bad JSON, a non-object line, a ragged
CSV row, undecodable bytes) raises :class:`~ance.run.errors.DataError` at once.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path
from typing import Any, Iterator

from ance.data.readers import json_object
from ance.run.errors import ConfigError, DataError

TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
PARQUET_HINT = "reading Parquet needs pyarrow: pip install 'ance-retriever[hf]' (or pip install pyarrow)"


def suffix(path: Path) -> str:
    """The data suffix, ``.gz`` looked through: ``x.jsonl.gz`` -> ``.jsonl``."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return Path(name).suffix


def _open_text(path: Path):
    try:
        raw = gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    return raw


def json_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, object)`` of every non-blank line of a JSON-lines file."""
    with _open_text(path) as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, lineno, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line); "
                                              "re-encode the file as UTF-8") from None
            except (OSError, EOFError) as e:  # a truncated or corrupt .gz
                raise DataError(path, lineno, f"cannot read: {e}") from None
            if lineno == 1:
                line = line.lstrip("\ufeff")
            if not line.strip():
                continue
            yield lineno, json_object(path, lineno, line)


def first_json_row(path: Path) -> dict | None:
    for _, rec in json_rows(path):
        return rec
    return None


def csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line, {column: value})`` of a CSV (``,``) or TSV (tab) file whose first line names the columns."""
    delimiter = "\t" if suffix(path) == ".tsv" else ","
    csv.field_size_limit(2**31 - 1)  # a passage may be longer than the csv module's default of 128 KiB
    with _open_text(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(path, 1, "empty file: expected a header line naming the columns "
                                         "(e.g. anchor,positive,negative)")
            if len(set(header)) != len(header):
                raise DataError(path, 1, f"the header names a column twice: {header}")
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != len(header):
                    raise DataError(path, start, f"{len(row)} fields, but the header names {len(header)} "
                                                 f"({', '.join(header)}); quote fields holding "
                                                 f"{'tabs' if delimiter == chr(9) else 'commas'}")
                yield start, dict(zip(header, row))
        except UnicodeDecodeError as e:
            raise DataError(path, reader.line_num + 1, f"not valid UTF-8 ({e.reason}); re-encode the file "
                                                       "as UTF-8") from None
        except csv.Error as e:
            raise DataError(path, reader.line_num, f"malformed CSV: {e}") from None


def parquet_columns(path: Path) -> list[str]:
    pq = _pyarrow_parquet()
    try:
        return list(pq.read_schema(path).names)
    except Exception as e:  # pyarrow raises ArrowInvalid and OSError kinds for a file that is not Parquet
        raise DataError(path, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None


def parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(row, dict)`` of a Parquet file, 1-based rows, read a record batch at a time."""
    pq = _pyarrow_parquet()
    try:
        f = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(path, None, f"not a readable Parquet file ({str(e).splitlines()[0]})") from None
    n = 0
    for batch in f.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq  # optional: only Parquet files need it
    except ImportError:
        raise ConfigError(PARQUET_HINT) from None
    return pq


def table_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a JSON-lines, CSV/TSV or Parquet file, by its suffix."""
    kind = suffix(path)
    if kind == ".parquet":
        return parquet_rows(path)
    if kind in (".csv", ".tsv"):
        return csv_rows(path)
    return json_rows(path)


def columns_of(path: Path) -> list[str]:
    """The column names of a table file: its header, schema, or first JSON object's keys."""
    kind = suffix(path)
    if kind == ".parquet":
        return parquet_columns(path)
    for _, row in table_rows(path):
        return list(row)
    return []
