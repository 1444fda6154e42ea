"""Record formats (Tevatron, sentence-transformers pairs/triplets, Hugging Face datasets): telling
them apart from the path and the first record, and reading them into :class:`~ance.data.records.RawData`.

``data.format``: ``tevatron`` and ``pairs`` name the shape of the records in a JSON-lines,
CSV/TSV or Parquet file; ``hf`` reads through the ``datasets`` library (a ``save_to_disk``
folder, ``.arrow`` files, ``hf:NAME[:CONFIG]``), the shape told by the columns. ``data.corpus``
(:func:`read_corpus`) is what is indexed: a Tevatron corpus (``{docid, title, text}``), a BEIR
``corpus.jsonl`` or folder, an MS MARCO ``collection.tsv``, or a Hugging Face corpus dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ance.data.hfdata import PREFIX as HF_PREFIX, HFSplits, is_hf_folder
from ance.data.pairs import pair_records, resolve_columns
from ance.data.readers import read_beir_corpus_hashed, read_msmarco_collection_hashed
from ance.data.snapshot import read_corpus_cached
from ance.data.records import CorpusBuilder, RawData, Record, build, build_split, corpus_hash
from ance.data.rows import TABLE_SUFFIXES, columns_of, suffix, table_rows
from ance.data.tevatron import corpus_rows, ids_only, is_tevatron, tevatron_records
from ance.run.errors import DataError

RECORD_FORMATS = ("tevatron", "pairs", "hf")
FILES = ("a Tevatron JSONL(.gz) training file, sentence-transformers pairs/triplets (JSONL, CSV, TSV, Parquet), "
         "a Hugging Face dataset (save_to_disk folder, .arrow file, hf:NAME)")


def detect_file(path: str | Path) -> str:
    """``tevatron``, ``pairs`` or ``hf`` for a file, an HF folder or ``hf:NAME``; DataError otherwise."""
    text = str(path)
    if text.startswith(HF_PREFIX):
        return "hf"
    root = Path(path)
    if is_hf_folder(root):
        return "hf"
    if root.is_dir():
        raise DataError(root, None, f"a folder, but neither BEIR (corpus.jsonl), MS MARCO (collection.tsv) nor a "
                                    "Hugging Face save_to_disk folder; data.path takes a folder of those or "
                                    f"{FILES}")
    if not root.exists():
        raise DataError(root, None, f"no such file or directory; data.path takes a BEIR or MS MARCO folder, {FILES}")
    kind = suffix(root)
    if kind == ".arrow":
        return "hf"
    if kind not in TABLE_SUFFIXES:
        raise DataError(root, None, f"cannot tell the format of a {kind or 'suffix-less'} file; name it .jsonl, "
                                    ".jsonl.gz, .csv, .tsv, .parquet or .arrow, or set data.format")
    return "tevatron" if is_tevatron(columns_of(root)) else "pairs"


def _records(rows: Iterator[tuple[int, dict]], cols: list[str], where: str, columns: Any,
             fmt: str, has_corpus: bool) -> Iterator[Record]:
    if ids_only(cols) and not has_corpus:
        raise DataError(where, None, "its records name documents by id only (positive_document_ids): give the "
                                     "corpus they come from with data.corpus=FILE")
    if is_tevatron(cols):
        return tevatron_records(rows, where)
    if fmt == "tevatron":
        raise DataError(where, None, f'no "positive_passages" column: not a Tevatron file (columns: '
                                     f"{', '.join(cols)}); pairs or triplets are data.format=pairs")
    return pair_records(rows, resolve_columns(cols, columns, where), where)


def split_records(spec: str, fmt: str, names: list[str], columns: Any = None,
                  has_corpus: bool = False) -> dict[str, Iterator[Record]]:
    """The records of splits ``names`` of one source (the first is the training split)."""
    if fmt == "hf":
        hf = HFSplits(spec)
        out = {}
        for i, name in enumerate(names):
            split = hf.split(name, first=i == 0)
            out[name] = _records(hf.rows(split), hf.columns(split), hf.where(name), columns, fmt, has_corpus)
        return out
    path = Path(spec)
    if not path.is_file():
        raise DataError(path, None, f"not a file; data.format={fmt} reads a JSONL(.gz), CSV, TSV or Parquet file")
    if len(names) > 1:
        raise DataError(path, None, f"a {fmt} file holds one split (the training split); split {names[1]!r} needs "
                                    "data.eval_path=FILE (its queries and positives), or set data.eval_split=null")
    return {names[0]: _records(table_rows(path), columns_of(path), str(path), columns, fmt, has_corpus)}


def read_corpus(spec: str) -> tuple[list[str], list[str], list[str], str, Path]:
    """``(ids, titles, texts, source hash, path)`` of ``data.corpus``."""
    root = Path(spec)
    if not spec.startswith(HF_PREFIX) and root.is_dir():
        if (root / "corpus.jsonl").is_file():
            return (*read_corpus_cached(root / "corpus.jsonl", "beir-corpus", read_beir_corpus_hashed),
                    root / "corpus.jsonl")
        if (root / "collection.tsv").is_file():
            return (*read_corpus_cached(root / "collection.tsv", "msmarco-collection", read_msmarco_collection_hashed),
                    root / "collection.tsv")
    if spec.startswith(HF_PREFIX) or is_hf_folder(root) or suffix(root) == ".arrow":
        hf = HFSplits(spec)
        split = hf.split(hf.names()[0], first=True) if hf.names() else hf.split("corpus", first=True)
        ids, titles, texts = corpus_rows(hf.rows(split), spec)
        return ids, titles, texts, corpus_hash(ids, titles, texts), root
    if not root.is_file():
        raise DataError(root, None, "data.corpus: no such file or directory; give a Tevatron corpus JSONL "
                                    "{docid, title, text}, a BEIR corpus.jsonl or folder, or an MS MARCO "
                                    "collection.tsv")
    if suffix(root) == ".tsv":
        return (*read_corpus_cached(root, "msmarco-collection", read_msmarco_collection_hashed), root)
    ids, titles, texts = corpus_rows(table_rows(root), root)
    return ids, titles, texts, corpus_hash(ids, titles, texts), root


def read_records(spec: str, fmt: str, names: list[str], *, corpus: str | None = None,
                 columns: Any = None) -> RawData:
    """A record format's splits over ``corpus`` (or the union of their passages)."""
    given = None
    corpus_path: str | Path = spec
    file_hash = None
    if corpus:
        ids, titles, texts, file_hash, corpus_path = read_corpus(corpus)
        if not ids:
            raise DataError(corpus_path, None, "data.corpus holds no documents")
        given = (ids, titles, texts)
    return build(split_records(spec, fmt, names, columns, given is not None), given, corpus_path, spec, file_hash)


def add_split(raw: RawData, name: str, spec: str, fmt: str, columns: Any = None) -> None:
    """Split ``name`` from another source (``data.eval_path``), over ``raw``'s corpus: docids must be in it
    when the corpus was given, passages without one are found by text (or added)."""
    builder = CorpusBuilder((raw.ids, raw.titles, raw.texts), raw.corpus_path, strict=raw.note is None)
    raw.splits[name] = build_split(split_records(spec, fmt, [name], columns, raw.note is None)[name], builder)
    if len(builder.ids) != len(raw.ids):
        raw.ids, raw.titles, raw.texts = builder.ids, builder.titles, builder.texts
        raw.source_hash = corpus_hash(raw.ids, raw.titles, raw.texts)
