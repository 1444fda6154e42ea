"""What ance understood of a dataset, before a long run: ``ance data inspect PATH``.

:func:`inspect_data` loads ``PATH`` as a run would (every split it holds) and :func:`summary` says
what came out: the detected format, counts (queries, passages, positives and negatives per query,
duplicate texts), a sample record, and what is indexed (a corpus, or only the file's passages,
among which an async refresh then mines).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ance.data.dataset import Dataset, _Layout, detect_format, load_dataset
from ance.data.download import resolve_data_path
from ance.data.hfdata import HFSplits


def _splits(root: Path, fmt: str) -> list[str]:
    if fmt in ("beir", "msmarco"):
        return _Layout(root, fmt).available_splits()
    if fmt == "hf":
        names = HFSplits(str(root)).names()
        return names or ["train"]
    return ["train"]


def inspect_data(path: str, format: str = "auto", corpus: str | None = None, columns: Any = None,
                 splits: list[str] | None = None) -> tuple[str, Dataset]:
    """``(format, dataset)``: ``path`` loaded with every split it holds (or ``splits``)."""
    root = resolve_data_path(path)
    fmt = detect_format(root) if format == "auto" else format
    names = splits or _splits(root, fmt)
    if fmt not in ("beir", "msmarco", "hf"):
        names = names[:1]
    return fmt, load_dataset(path, splits=names, format=fmt, corpus=corpus, columns=columns)


def _stats(counts: list[int]) -> dict[str, float]:
    a = np.asarray(counts or [0])
    return {"min": int(a.min()), "mean": round(float(a.mean()), 2), "max": int(a.max())}


def summary(fmt: str, data: Dataset, sample_chars: int = 120) -> dict[str, Any]:
    """Counts, a sample record and the corpus used, as plain values (JSON-ready)."""
    c = data.corpus
    passages = c.passages()
    dup_docs = sum(n - 1 for n in Counter(passages).values() if n > 1)
    out: dict[str, Any] = {
        "path": str(data.source), "format": fmt, "fingerprint": data.fingerprint,
        "corpus": {"passages": len(c), "from": str(c.path), "duplicate_texts": dup_docs,
                   "only_the_records_passages": data.note is not None},
        "splits": {},
    }
    for name, split in data.splits.items():
        s: dict[str, Any] = {
            "queries": len(split), "duplicate_query_texts": sum(n - 1 for n in Counter(split.texts).values() if n > 1),
            "positives_per_query": _stats([len(p) for p in split.positives]),
            "negatives_per_query": None if split.negatives is None else _stats([len(n) for n in split.negatives]),
        }
        if len(split):
            neg = [] if split.negatives is None else split.negatives[0][:3]

            def docs(idx) -> list[dict[str, str]]:
                return [{"docid": c.ids[i], "text": passages[i][:sample_chars]} for i in idx]

            s["sample"] = {"query_id": split.ids[0], "query": split.texts[0][:sample_chars],
                           "positives": docs(split.positives[0][:3]), "negatives": docs(neg)}
        out["splits"][name] = s
    out["note"] = data.note
    return out


def render(s: dict[str, Any]) -> str:
    """:func:`summary` as lines for a terminal."""
    c = s["corpus"]
    lines = [f"{s['path']}: format {s['format']}, fingerprint {s['fingerprint']}",
             f"corpus: {c['passages']} passages from {c['from']}"
             + (" (the records' own passages: an async refresh mines only among them)"
                if c["only_the_records_passages"] else "")
             + (f", {c['duplicate_texts']} duplicate texts" if c["duplicate_texts"] else "")]
    for name, sp in s["splits"].items():
        pos, neg = sp["positives_per_query"], sp["negatives_per_query"]
        lines.append(f"split {name}: {sp['queries']} queries; positives per query {pos['min']}-{pos['max']} "
                     f"(mean {pos['mean']}); negatives per query "
                     + (f"{neg['min']}-{neg['max']} (mean {neg['mean']}), the static negatives / warm-up "
                        "version 0 with negatives.source or warmup static" if neg else "none in the data")
                     + (f"; {sp['duplicate_query_texts']} duplicate query texts"
                        if sp["duplicate_query_texts"] else ""))
        if "sample" in sp:
            smp = sp["sample"]
            lines.append(f"  sample {smp['query_id']}: {smp['query']!r}")
            lines += [f"    + {p['docid']}: {p['text']!r}" for p in smp["positives"]]
            lines += [f"    - {p['docid']}: {p['text']!r}" for p in smp["negatives"]]
    if s.get("note"):
        lines.append(f"note: {s['note']}")
    return "\n".join(lines)


QRELS_SUFFIXES = ("", ".tsv", ".txt", ".qrels", ".trec")


def judgements(spec: str, split: str | None = None) -> dict[str, dict[str, int]] | None:
    """The qrels of a dataset given where a qrels file may be (``ance eval --qrels``): ``None`` for a
    qrels file (BEIR TSV, TREC), else split ``split`` (default: the training split) of the dataset."""
    root = Path(spec)
    if root.is_file() and root.suffix.lower() in QRELS_SUFFIXES:
        return None
    fmt, data = inspect_data(spec, splits=[split] if split else None)
    name = split or ("train" if "train" in data.splits else next(iter(data.splits)))
    return data.split(name).qrels
