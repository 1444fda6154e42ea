"""The ``data`` section's own rules: ``data.columns`` (a column mapping) and whether ``data.path`` may
bring its own negatives (so ``negatives.source=static`` needs no ``negatives.static_file``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ance.run.errors import ConfigError

COLUMN_KEYS = ("query", "positive", "negatives")
RECORD_FORMATS = ("tevatron", "pairs", "hf")


def check_columns(columns: Any) -> dict[str, Any]:
    """``data.columns`` as given: keys among query/positive/negatives, values column names
    (``negatives``: one or a list); a tuple for negatives once checked."""
    if columns is None:
        return {}
    if not isinstance(columns, Mapping):
        raise ConfigError(f"data.columns: expected a mapping like {{query: anchor, positive: pos, negatives: "
                          f"[neg]}}, got {columns!r}")
    out: dict[str, Any] = {}
    for key, value in columns.items():
        if key not in COLUMN_KEYS:
            raise ConfigError(f"data.columns: unknown key {key!r}; valid keys: {', '.join(COLUMN_KEYS)}")
        if key == "negatives":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"data.columns.negatives: expected a column name or a list of them, got {value!r}")
            out[key] = tuple(value)
        elif isinstance(value, str) and value:
            out[key] = value
        else:
            raise ConfigError(f"data.columns.{key}: expected a column name, got {value!r}")
    return out


def is_record_data(data: Any) -> bool:
    """Whether ``data.path`` is (or may be) a record format (Tevatron, pairs, HF), not a BEIR or MS MARCO
    folder: its records may hold negatives, and its errors are worth checking before a run starts;
    the trainer checks that they do once the data is loaded."""
    if data.format in RECORD_FORMATS:
        return True
    if data.format != "auto" or str(data.path).startswith("beir:"):
        return False
    root = Path(data.path)
    return not (root.is_dir() and ((root / "corpus.jsonl").is_file() or (root / "collection.tsv").is_file()))
