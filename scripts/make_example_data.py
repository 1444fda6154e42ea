#!/usr/bin/env python
"""Write one small SciFact subset in every training-data format ance reads.

    python scripts/make_example_data.py [--src ../shared/data/scifact] [--out tests/data/formats]
                                        [--queries 12] [--negatives 3]

The same queries, positives, corpus and negatives in each (ids differ where a format has none:
sentence-transformers rows are texts, ance hashes them)::

    beir/          corpus.jsonl, queries.jsonl, qrels/train.tsv, negatives.tsv (an ance negatives file)
    msmarco/       collection.tsv, queries.train.tsv, qrels.train.tsv, negatives.tsv
    tevatron/      train.jsonl ({query_id, query, positive_passages, negative_passages}), corpus.jsonl
    triplets.jsonl, triplets.csv, triplets.parquet    (anchor, positive, negative_1..n), sentence-transformers
    hf/            a Hugging Face DatasetDict (save_to_disk) of the triplets, split "train" (needs `datasets`)

The corpus is the passages the records name, in order of first appearance over the triplet rows,
so a format without a corpus of its own (the triplets) gives the same corpus as one with it. Whitespace
in texts is collapsed (TSV files cannot hold tabs or newlines). Used by tests/test_formats_same.py.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from ance.data.readers import read_beir_corpus, read_beir_queries, read_qrels
from ance.negatives.files import header_line


def _clean(text: str) -> str:
    return " ".join(text.split())


def subset(src: Path, n_queries: int, n_negatives: int, seed: int = 0) -> dict:
    """Queries (id, text, positive doc ids, negative doc ids) and the corpus they need, in canonical order."""
    ids, titles, texts = read_beir_corpus(src / "corpus.jsonl")
    queries = read_beir_queries(src / "queries.jsonl")
    qrels = read_qrels(src / "qrels" / "train.tsv")
    docs = {d: (_clean(t), _clean(x)) for d, t, x in zip(ids, titles, texts)}
    rng = np.random.default_rng(seed)
    picked = [q for q in qrels if any(r > 0 for r in qrels[q].values())][:n_queries]
    # one query with two positives, so merging rows of one anchor is exercised
    multi = next((q for q in qrels if sum(r > 0 for r in qrels[q].values()) > 1), None)
    if multi is not None and multi not in picked:
        picked[-1] = multi
    records = []
    for i, q in enumerate(picked):
        pos = [d for d, r in qrels[q].items() if r > 0]
        negs: list[str] = []
        if i % 3 == 0 and i + 1 < len(picked):  # another query's positive as this one's negative
            other = next(d for d, r in qrels[picked[i + 1]].items() if r > 0)
            if other not in pos:
                negs.append(other)
        while len(negs) < n_negatives:
            d = ids[int(rng.integers(len(ids)))]
            if d not in pos and d not in negs:
                negs.append(d)
        records.append({"qid": q, "query": _clean(queries[q]), "pos": pos, "neg": negs})
    order: list[str] = []
    for r in records:  # the triplet rows' order: per positive, the positive then the negatives
        for p in r["pos"]:
            for d in [p, *r["neg"]]:
                if d not in order:
                    order.append(d)
    return {"records": records, "corpus": [(d, *docs[d]) for d in order]}


def passage(title: str, text: str) -> str:
    return (title + " " + text).strip()


def triplet_rows(data: dict) -> list[dict]:
    text = {d: passage(t, x) for d, t, x in data["corpus"]}
    rows = []
    for r in data["records"]:
        for p in r["pos"]:
            row = {"anchor": r["query"], "positive": text[p]}
            row.update({f"negative_{k + 1}": text[n] for k, n in enumerate(r["neg"])})
            rows.append(row)
    return rows


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _negatives_file(path: Path, data: dict) -> None:
    lines = [header_line({"source": "make_example_data"})]
    lines += [f"{r['qid']}\t{','.join(r['neg'])}\n" for r in data["records"]]
    path.write_text("".join(lines), encoding="utf-8")


def write_beir(out: Path, data: dict) -> None:
    _write_jsonl(out / "corpus.jsonl", ({"_id": d, "title": t, "text": x} for d, t, x in data["corpus"]))
    _write_jsonl(out / "queries.jsonl", ({"_id": r["qid"], "text": r["query"]} for r in data["records"]))
    (out / "qrels").mkdir(exist_ok=True)
    (out / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{r['qid']}\t{p}\t1\n" for r in data["records"] for p in r["pos"]))
    _negatives_file(out / "negatives.tsv", data)


def write_msmarco(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "collection.tsv").write_text("".join(f"{d}\t{passage(t, x)}\n" for d, t, x in data["corpus"]))
    (out / "queries.train.tsv").write_text("".join(f"{r['qid']}\t{r['query']}\n" for r in data["records"]))
    (out / "qrels.train.tsv").write_text("".join(f"{r['qid']}\t0\t{p}\t1\n" for r in data["records"] for p in r["pos"]))
    _negatives_file(out / "negatives.tsv", data)


def write_tevatron(out: Path, data: dict) -> None:
    doc = {d: {"docid": d, "title": t, "text": x} for d, t, x in data["corpus"]}
    _write_jsonl(out / "train.jsonl", ({"query_id": r["qid"], "query": r["query"],
                                        "positive_passages": [doc[p] for p in r["pos"]],
                                        "negative_passages": [doc[n] for n in r["neg"]]} for r in data["records"]))
    _write_jsonl(out / "corpus.jsonl", doc.values())


def write_triplets(out: Path, data: dict, parquet: bool = True) -> None:
    rows = triplet_rows(data)
    cols = list(dict.fromkeys(k for row in rows for k in row))
    _write_jsonl(out / "triplets.jsonl", rows)
    with open(out / "triplets.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out / "triplets.parquet")


def write_hf(out: Path, data: dict) -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(triplet_rows(data))}).save_to_disk(str(out))


def write_all(src: Path, out: Path, n_queries: int = 12, n_negatives: int = 3, hf: bool = True) -> dict:
    data = subset(src, n_queries, n_negatives)
    out.mkdir(parents=True, exist_ok=True)
    write_beir(out / "beir", data)
    write_msmarco(out / "msmarco", data)
    write_tevatron(out / "tevatron", data)
    write_triplets(out, data)
    if hf:
        write_hf(out / "hf", data)
    return data


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", type=Path, default=root.parent / "shared" / "data" / "scifact")
    p.add_argument("--out", type=Path, default=root / "tests" / "data" / "formats")
    p.add_argument("--queries", type=int, default=12)
    p.add_argument("--negatives", type=int, default=3)
    args = p.parse_args()
    data = write_all(args.src, args.out, args.queries, args.negatives)
    print(f"{len(data['records'])} queries, {len(data['corpus'])} passages in every format under {args.out}")


if __name__ == "__main__":
    main()
