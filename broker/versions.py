"""The broker's negatives versions on disk and in memory: :class:`NegativesVersions`.

Files (``RUN_DIR/negatives/``): ``step-N.partial.tsv`` grows chunk by chunk
(fsynced per chunk, so a chunk is on disk before the broker sends it) and is
renamed to ``step-N.tsv`` when the version is complete. On start the partial
files are removed (an interrupted refresh is redone from scratch) and the
newest complete file is reloaded, refused when it was made from other data.

Each version also lives in memory as a :class:`Version` table (one row of
``keep`` doc indices per train query), so the broker can re-stream it and
compute the overlap with the next one. No sockets or clocks here; the file
format is :mod:`ance.negatives.files`', the file names :mod:`ance.run.rundir`'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import IO, Any, Sequence

import numpy as np

from ance.run.errors import AnceError
from ance.run.fsio import disk_full_error, fsync_dir
from ance.negatives.files import IdTable, header_line, read_negatives
from ance.run.rundir import RunDir
from .refresh import chunk_range, n_chunks
from .seal import check_seal, write_seal

log = logging.getLogger(__name__)


class Version:
    """The negatives table of one version being built (or the latest complete one)."""

    def __init__(self, version: int, n_train: int, keep: int):
        self.version = version
        self.neg = np.full((n_train, keep), -1, np.int32)
        self.chunks: set[int] = set()     # merged train chunks
        self.stats: dict[str, Any] = {}
        self.n_shards = 0


class NegativesVersions:
    """The versions of one run: ``latest`` (complete) and ``current`` (in progress, its partial file open).

    ``query_ids``/``doc_ids``: the train split's query ids and the corpus ids
    (row ``i`` of a table is ``query_ids[i]``; entries index ``doc_ids``).
    ``keep``: negatives per query; ``chunk_queries``: queries per chunk;
    ``fingerprint``: the data fingerprint written in, and required of, every file.

    Life of a version: :meth:`begin` (partial file with its header) →
    :meth:`append` per merged chunk (written and fsynced) → :meth:`finish`
    (renamed complete; it becomes ``latest``) or :meth:`drop` (partial removed).
    """

    def __init__(self, run_dir: str | Path, query_ids: Sequence[str], doc_ids: Sequence[str], *, keep: int,
                 chunk_queries: int, fingerprint: str | None):
        self.run_dir = Path(run_dir)
        self.paths = RunDir(run_dir)
        self.dir = self.paths.negatives_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.query_ids = query_ids
        self.doc_ids = doc_ids
        self._ids = IdTable(query_ids, doc_ids)  # checked once here, not at every chunk of every version
        self.n_train = len(query_ids)
        self.keep = keep
        self.chunk_queries = chunk_queries
        self.fingerprint = fingerprint
        self.latest: Version | None = None
        self.current: Version | None = None
        self._partial: IO[str] | None = None  # open file of the version in progress

    @property
    def n_chunks(self) -> int:
        """Train chunks in a version."""
        return n_chunks(self.n_train, self.chunk_queries)

    def chunk(self, v: Version, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(q_idx int32, neg int32 [nq, keep])``: the rows of ``chunk`` in ``v``'s table."""
        lo, hi = chunk_range(chunk, self.n_train, self.chunk_queries)
        return np.arange(lo, hi, dtype=np.int32), v.neg[lo:hi]

    # ------------------------------------------------------------ startup
    def restore(self) -> Version | None:
        """Remove interrupted partial files; load the newest complete version as ``latest`` (None if none).

        Raises :class:`AnceError` when that file was made from other data (its
        ``data_fingerprint`` differs), and ``DataError`` when it does not parse.
        """

        for stale in self.dir.glob("step-*.partial.tsv"):  # an interrupted version: redone from scratch
            log.info("removing %s (the refresh it belongs to was interrupted)", stale)
            stale.unlink()
        versions = self.paths.complete_negatives()
        t0 = time.time()
        q_index = {q: i for i, q in enumerate(self.query_ids)}
        d_index = {d: i for i, d in enumerate(self.doc_ids)}
        while versions:  # the newest version whose file is whole (row count and seal)
            version, path = versions.pop()
            header, q_idx, neg = read_negatives(path, q_index, d_index, keep=self.keep)
            fp = header.get("data_fingerprint")
            if fp is not None and fp != self.fingerprint:
                raise AnceError(f"{path} was made from other data (fingerprint {fp}, ours {self.fingerprint}); "
                                "use the run's config or move the negatives/ directory away")
            bad = check_seal(path, len(q_idx), self.n_train)
            if bad is None:
                break
            log.error("%s: refused, %s; left in place, an older version is used and the refresh redone", path, bad)
        else:
            return None
        latest = Version(version, self.n_train, self.keep)
        latest.neg[q_idx] = neg
        latest.chunks = set(range(self.n_chunks))
        latest.stats = {"replayed": True}
        latest.n_shards = int(header.get("n_shards", 0))
        self.latest = latest
        log.info("reloaded negatives version %d (%d queries) from %s in %.2fs", version, len(q_idx), path,
                 time.time() - t0)
        return latest

    # ------------------------------------------------------------ a version
    def begin(self, version: int, n_shards: int, *, checkpoint: str, depth: int, rank_window: Sequence[int],
              sampling: str, seed: int, model: str) -> Version:
        """Start ``version`` (dropping one still in progress): its table, and its partial file with the header."""

        if self._partial is not None:
            self.drop()
        cur = Version(version, self.n_train, self.keep)
        cur.n_shards = n_shards
        path = self.paths.negatives(version, partial=True)
        fh = open(path, "w", encoding="utf-8", newline="\n")
        self._partial = fh
        self.current = cur
        with disk_full_error(path, f"negatives version {version}"):
            fh.write(header_line({
                "version": version, "checkpoint": checkpoint, "keep": self.keep, "depth": depth,
                "rank_window": list(rank_window), "sampling": sampling, "seed": seed, "n_shards": n_shards,
                "n_docs": len(self.doc_ids), "n_queries": self.n_train, "data_fingerprint": self.fingerprint,
                "model": model}))
            fh.flush()
            os.fsync(fh.fileno())
        return cur

    def append(self, chunk: int, q_lo: int, q_hi: int, neg: np.ndarray) -> None:
        """Put train chunk ``chunk`` (queries ``[q_lo, q_hi)``) in the table and append it to the file, fsynced."""

        cur = self._in_progress("append")
        cur.neg[q_lo:q_hi] = neg
        cur.chunks.add(chunk)
        with disk_full_error(self._partial.name, f"negatives version {cur.version}"):
            self._ids.append(self._partial, np.arange(q_lo, q_hi, dtype=np.int32), neg)

    def finish(self) -> Path:
        """Make the version in progress complete (fsync, rename, fsync the dir) and ``latest``; return its file."""
        cur = self._in_progress("finish")
        final = self.paths.negatives(cur.version)
        with disk_full_error(final, f"negatives version {cur.version}"):
            self._close_partial()
            write_seal(self.paths.negatives(cur.version, partial=True), final, self.n_train)  # rows + checksum
        os.replace(self.paths.negatives(cur.version, partial=True), final)
        fsync_dir(final.parent)
        self.current, self.latest = None, cur
        return final

    def drop(self) -> None:
        """Forget the version in progress and remove its partial file (an abandoned refresh)."""
        if self._partial is not None:
            path = Path(self._partial.name)
            with contextlib.suppress(OSError):  # its buffer cannot go out (a full disk): the file goes anyway
                self._partial.close()
            self._partial = None
            path.unlink(missing_ok=True)
        self.current = None

    def close(self) -> None:
        """Flush and close the partial file, left on disk (a restarted broker removes it)."""
        if self._partial is not None:
            try:
                self._close_partial()
            except OSError:  # a full disk: the partial file is incomplete either way, and removed on restart
                self._partial = None

    def _close_partial(self) -> None:
        self._partial.flush()
        os.fsync(self._partial.fileno())
        self._partial.close()
        self._partial = None

    def _in_progress(self, what: str) -> Version:
        if self.current is None or self._partial is None:
            raise RuntimeError(f"{what}() with no version in progress: begin() first")
        return self.current
