"""A complete negatives version's seal: its row count and SHA-256, beside it in ``step-N.tsv.sum``.

Written (atomically, fsynced) before ``step-N.partial.tsv`` is renamed complete,
so every complete file has one. A restarted broker reloads a version only when
the file still has every train query and the bytes the seal names: a file cut
short (10 of 40 rows), or edited, is refused with one error line and the
previous version is used; the newer checkpoint is then refreshed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ance.run.fsio import atomic_write_lines

SUFFIX = ".sum"


def seal_path(path: str | Path) -> Path:
    return Path(f"{path}{SUFFIX}")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_seal(data_file: str | Path, final: str | Path, rows: int) -> None:
    """Seal ``data_file`` (still under its partial name) as ``final``'s: rows and checksum."""
    atomic_write_lines(seal_path(final), [json.dumps({"rows": int(rows), "sha256": file_sha256(data_file)}) + "\n"])


def check_seal(path: str | Path, rows: int, expected_rows: int) -> str | None:
    """Why the complete version ``path`` (``rows`` read) cannot be trusted, or None when it can."""
    if rows != expected_rows:
        return f"{rows} rows, not one per train query ({expected_rows}): cut short or edited"
    seal = seal_path(path)
    if not seal.is_file():
        return None  # written before seals existed: the row count is all there is to check
    try:
        meta = json.loads(seal.read_text(encoding="utf-8")[:4096])
        want_rows, want_sum = int(meta["rows"]), str(meta["sha256"])
    except (ValueError, KeyError, TypeError, OSError):
        return f"its seal {seal.name} is unreadable"
    if want_rows != rows:
        return f"{rows} rows, its seal says {want_rows}"
    if file_sha256(path) != want_sum:
        return f"its checksum differs from its seal {seal.name}: edited or damaged"
    return None
