"""Corpus snapshots: a large corpus file parsed once, read back in a fraction of the time.

Every process of a run (broker, trainer, each inferencer, each restart) reads the corpus; parsing
MS MARCO's 8.8M JSONL lines or TSV rows takes half a minute or more a process. The first read writes
what it parsed to ``$ANCE_CACHE_DIR/corpus/corpus-<key>/`` (else ``~/.cache/ance``); later reads of the
same file load that instead (1M passages: 0.5 s against 3.8 s here)::

    ids.bin     the doc ids, UTF-8, NUL-separated
    titles.bin  the titles, likewise (absent when every title is empty)
    texts.bin   the texts, likewise; read through a memory map, never copied into the process: the
                processes of a host share its pages (8.8M MS MARCO passages: 3 GB once, not once each)
    texts.offsets  int64 [n + 1]: text i is texts.bin[offsets[i] : offsets[i + 1] - 1]
    meta.json   written last: format, reader, n, each file's size, the source hash of the parse

``key`` hashes the file's resolved path, size, modification time (ns) and inode with the reader's
name and the snapshot format, so an edited or replaced file is parsed again. A snapshot is written
only for corpora of at least ``MIN_DOCS`` documents with no NUL character in them; it is built in a
temporary directory and renamed into place (``ance.run.cachedirs``), so a reader never sees half of
one, and one that fails its checks is ignored and parsed again. Writing one is an economy: where the
cache dir cannot be written, the corpus is parsed as before. ``ANCE_CORPUS_SNAPSHOTS=0`` turns them off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ance.run.cachedirs import building_dir, install, set_aside
from ance.data.lazylist import LazyList
from ance.run.fsio import default_cache_dir, fsync_dir

log = logging.getLogger(__name__)

FORMAT = 2
MIN_DOCS = 50_000  # smaller corpora parse in well under a second
Parsed = tuple[list[str], list[str], list[str], str]  # ids, titles, texts, source hash


def snapshot_key(path: Path, reader: str) -> str:
    """16 hex naming the snapshot of ``path`` as ``reader`` parses it; another file, an edit or a
    replacement (path, size, mtime, inode) gives another key."""
    st = os.stat(path)
    ident = f"{FORMAT}\0{reader}\0{Path(path).resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}"
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def read_corpus_cached(path: Path, reader: str, parse: Callable[[Path], Parsed],
                       root: str | Path | None = None) -> Parsed:
    """``parse(path)``, through a snapshot under ``root`` (default: the user's cache dir /corpus)."""
    path = Path(path)
    if os.environ.get("ANCE_CORPUS_SNAPSHOTS", "1").strip().lower() in ("0", "false", "no", "off"):
        return parse(path)
    try:
        key = snapshot_key(path, reader)
    except OSError:
        return parse(path)
    where = Path(root) if root is not None else default_cache_dir() / "corpus"
    final = where / f"corpus-{key}"
    got = load(final, reader)
    if got is not None:
        return got
    parsed = parse(path)
    if final.exists():  # damaged: set it aside, so the new one can take its place
        set_aside(final)
    if len(parsed[0]) >= MIN_DOCS:
        save(final, reader, parsed)
    return parsed


def _blob(items: list[str]) -> bytes | None:
    """``items`` joined by NUL as UTF-8; None when an item holds a NUL (it could not be split back)."""
    joined = "\0".join(items)
    if joined.count("\0") != max(len(items) - 1, 0):
        return None
    return joined.encode("utf-8", "surrogatepass")


def nul_offsets(blob: bytes, n: int, chunk: int = 1 << 26) -> np.ndarray:
    """Start offsets of the ``n`` NUL-separated items of ``blob`` plus ``len(blob) + 1``: int64 [n + 1]."""
    view = np.frombuffer(blob, dtype=np.uint8)
    out = np.empty(n + 1, dtype=np.int64)
    out[0], k = 0, 1
    for lo in range(0, len(view), chunk):  # chunked: no blob-sized temporary
        nul = np.flatnonzero(view[lo:lo + chunk] == 0) + lo + 1
        out[k:k + len(nul)] = nul
        k += len(nul)
    out[k] = len(blob) + 1
    if k != n:
        raise ValueError(f"{k} items in the blob, expected {n}")
    return out


class MappedTexts(LazyList):
    """The texts of a snapshot, decoded on access from its memory-mapped ``texts.bin``."""

    def __init__(self, path: Path, offsets: np.ndarray):
        self._offsets = offsets
        self._map = b""
        if os.path.getsize(path):
            with open(path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def _one(self, i: int) -> str:
        return self._map[int(self._offsets[i]):int(self._offsets[i + 1]) - 1].decode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        return f"MappedTexts({len(self)})"


def save(final: Path, reader: str, parsed: Parsed) -> bool:
    """Write ``parsed`` as the snapshot ``final`` (atomically); False where it is not written."""
    ids, titles, texts, source_hash = parsed
    t0 = time.perf_counter()
    blobs = {"ids.bin": _blob(ids), "texts.bin": _blob(texts)}
    if any(titles):
        blobs["titles.bin"] = _blob(titles)
    if any(b is None for b in blobs.values()):
        log.info("corpus %s holds a NUL character; not snapshotted", final.name)
        return False
    try:
        with building_dir(final) as tmp:
            for name, data in blobs.items():
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            offsets = nul_offsets(blobs["texts.bin"], len(texts))
            offsets.tofile(tmp / "texts.offsets")
            sizes = {name: len(data) for name, data in blobs.items()} | {"texts.offsets": offsets.nbytes}
            meta = {"format": FORMAT, "reader": reader, "n": len(ids), "source_hash": source_hash,
                    "sizes": sizes, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))  # last: marks the snapshot complete
            fsync_dir(tmp)
            install(tmp, final)
        log.info("corpus snapshot %s: %d docs in %.1fs", final, len(ids), time.perf_counter() - t0)
        return True
    except OSError as e:
        log.info("corpus snapshot: cannot write %s (%s); parsing each time", final, e)
        return False


def load(final: Path, reader: str) -> Parsed | None:
    """The snapshot ``final``, or None when there is none or it fails a check (then it is parsed again)."""
    meta_path = final / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("reader") != reader:
            raise ValueError("another format or reader")
        n, sizes = int(meta["n"]), dict(meta["sizes"])
        for name, size in sizes.items():
            if (final / name).stat().st_size != int(size):
                raise ValueError(f"{name} holds {(final / name).stat().st_size} bytes, meta.json says {size}")
        parts = {}
        for name in ("ids.bin", "titles.bin"):
            if name in sizes:
                parts[name] = (final / name).read_bytes().decode("utf-8", "surrogatepass").split("\0") if n else []
        offsets = np.fromfile(final / "texts.offsets", dtype=np.int64)
        if len(offsets) != n + 1 or (n and (offsets[0] != 0 or offsets[-1] != int(sizes["texts.bin"]) + 1
                                            or bool(np.any(np.diff(offsets) < 1)))):
            raise ValueError("texts.offsets disagrees with texts.bin")
        ids, texts = parts["ids.bin"], MappedTexts(final / "texts.bin", offsets)
        titles = parts.get("titles.bin", [""] * n)
        if not len(ids) == len(titles) == len(texts) == n:
            raise ValueError(f"{len(ids)} ids, {len(titles)} titles, {len(texts)} texts for n = {n}")
        return ids, titles, texts, str(meta["source_hash"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("corpus snapshot %s unusable (%s); parsing the file again", final, e)
        return None
