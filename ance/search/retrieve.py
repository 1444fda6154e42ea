"""Encode, index, search: the library behind ``ance retrieve/encode/search/mine``.

The commands only parse flags and write files; everything they share lives
here: loading the model and the data the same way, the corpus token cache,
searching an index and mapping its rows to documents (FirstP or MaxP).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ance.data.dataset import detect_format, load_dataset
from ance.model.encode import encode_texts, read_embeddings
from ance.model.stream import tokenize_and_encode
from ance.model.inference import for_inference
from ance.run.errors import AnceError, ConfigError
from ance.run.fsio import default_cache_dir
from ance.run.rundir import resolve_alias
from ance.search.index import make_index
from ance.model import prompts as prompting
from ance.model.biencoder import BiEncoder, resolve_model
from ance.search.topk import maxp_collapse, merge_topk

log = logging.getLogger(__name__)


def load_encoder(name_or_path: str, *, device: str = "cpu", pooling: str | None = None,
                 normalize: bool | None = None, prompts=None, precision: str | None = None, kernels: str = "hf",
                 compile: str = "off"):
    """``resolve_model`` + ``BiEncoder.load``, on ``device``, in eval mode; a run's checkpoint alias
    (``RUN_DIR/checkpoints/best`` or ``final``, :func:`ance.run.rundir.resolve_alias`) is followed.
    ``prompts`` (an object with ``query_prefix``, ``passage_prefix``, ``query_template``, ``task``, None =
    the model's) override the model's prompts. With ``precision``, the weights are cast for
    inference (:func:`ance.model.inference.for_inference`: bf16 on a GPU for ``auto``), the towers given
    ``kernels``' forward and compiled as ``compile`` says."""

    name_or_path = str(resolve_alias(name_or_path))
    model = BiEncoder.load(resolve_model(name_or_path), pooling=pooling, normalize=normalize)
    if prompts is not None:
        model.prompts = prompting.resolve(prompts, model.prompts)
    if precision is not None:
        return for_inference(model, device, precision, compile, kernels)
    return model.to(device).eval()


def load_data(path: str | Path, split: str | None = None, *, format: str = "auto", max_docs: int | None = None,
              max_queries: int | None = None, seed: int = 0, train_split: str | None = None,
              splits: Sequence[str] | None = None, corpus: str | None = None, columns=None):
    """The dataset with ``split`` loaded; ``split=None`` (corpus only) takes any split the folder has.

    The subset rule is the training run's (:func:`ance.data.dataset.load_for_config`): with
    ``max_docs`` the corpus keeps the positives of ``train_split`` (when the folder has it) and of
    ``split``, so ``ance retrieve --split dev --max-docs N`` searches the corpus a run with
    ``data.eval_split=dev, data.max_docs=N`` trained and evaluated on. ``splits`` (a run's train and
    eval splits) overrides that choice.
    """
    if splits is None:
        if split is None:
            if max_docs is not None:
                raise ConfigError("--max-docs keeps the positives of a split: give --split too "
                                  "(the same split as for `ance search`)")
            split = _any_split(Path(path), format)
        splits = [split]
        if max_docs is not None and train_split and train_split != split and has_split(path, format, train_split):
            splits = [train_split, split]
    return load_dataset(path, splits=splits, format=format, max_docs=max_docs, max_queries=max_queries,
                        seed=seed, corpus=corpus, columns=columns)


def has_split(path: str | Path, format: str, split: str) -> bool:
    from ance.data.download import resolve_data_path

    root = resolve_data_path(path)
    fmt = detect_format(root) if format == "auto" else format
    if fmt not in ("beir", "msmarco"):  # record formats: their splits come with the file (train, or a dict's)
        return False
    return (root / "qrels" / f"{split}.tsv" if fmt == "beir" else root / f"qrels.{split}.tsv").is_file()


def _any_split(root: Path, format: str) -> str:

    fmt = detect_format(root) if format == "auto" else format
    if fmt not in ("beir", "msmarco"):
        return "train"  # a record file's one split; a Hugging Face dataset dict's training split
    pattern = "qrels/*.tsv" if fmt == "beir" else "qrels.*.tsv"
    names = sorted(p.name[len("qrels."):] if fmt != "beir" else p.name for p in root.glob(pattern))
    names = [n[: -len(".tsv")] for n in names]
    if not names:
        raise ConfigError(f"{root}: no qrels files ({pattern}); the corpus alone cannot be loaded")
    return "train" if "train" in names else names[0]


def search_docs(index, owner: np.ndarray, queries: np.ndarray, k: int, *, long_doc: str = "firstp",
                n_windows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` documents: ``(scores float32 [m, k], doc ids int64 [m, k], -1 pad)``.

    ``owner[row]`` is the corpus index of index row ``row``. MaxP searches
    ``k * n_windows`` windows, then keeps each document's best window.
    """

    owner = np.asarray(owner, dtype=np.int64)
    if long_doc == "maxp":
        scores, rows = index.search(queries, k * n_windows)
        return maxp_collapse(scores, rows, owner, k)
    scores, rows = index.search(queries, k)
    return scores, np.where(rows >= 0, owner[np.maximum(rows, 0)], -1)


def retrieve(model, dataset, split: str, *, k: int = 1000, max_length: int = 256, query_max_length: int | None = None,
             device: str = "cpu", backend: str = "auto", cache_root: str | Path | None = None,
             batch_size: int = 128, long_doc: str = "firstp", n_windows: int = 4, precision: str = "auto",
             progress: bool = True) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Encode the corpus and ``split``'s queries, search exactly.

    Returns ``(query_ids, ids int64 [nq, k] corpus indices (-1 pad), scores float32 [nq, k])``.
    """

    queries = dataset.split(split)
    _, emb, owner = tokenize_and_encode(model, dataset.corpus, max_length=max_length, long_doc=long_doc,
                                        n_windows=n_windows, cache_root=cache_root or default_cache_dir(),
                                        batch_size=batch_size, device=device, precision=precision, progress=progress,
                                        prefix=model.prompt("passage"))
    index = make_index(backend, model.dim, device)
    index.add(emb)
    del emb
    q = encode_texts(model, queries.texts, query_max_length or max_length, kind="query", batch_size=batch_size,
                     device=device, precision=precision, progress=progress)
    scores, ids = search_docs(index, owner, q, k, long_doc=long_doc, n_windows=n_windows)
    return list(queries.ids), ids, scores


def search_shards(emb_dirs: Sequence[str | Path], queries: np.ndarray, k: int, *, backend: str = "auto",
                  device: str = "cpu", corpus=None) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Search the embeddings dirs of ``ance encode`` and merge: ``(scores, doc ids, metas)``.

    Each dir is searched on its own (MaxP per its meta), then :func:`merge_topk`.
    With ``corpus``, every dir must come from it (same ``source_hash`` and
    size); overlapping shards are refused, missing ones warned about.
    """

    results, metas = [], []
    for d in emb_dirs:
        emb, owner, _, meta = read_embeddings(d)
        if corpus is not None and (meta.get("corpus_hash") != corpus.source_hash or
                                   meta.get("n_docs") != len(corpus)):
            raise AnceError(f"{d}: embeddings of another corpus ({meta.get('n_docs')} docs, hash "
                            f"{meta.get('corpus_hash')}); this data has {len(corpus)} docs, hash "
                            f"{corpus.source_hash} (same --data, --split, --max-docs as `ance encode`?)")
        index = make_index(backend, int(meta["dim"]), device)
        index.add(emb)
        results.append(search_docs(index, owner, queries, k, long_doc=meta.get("long_doc", "firstp"),
                                   n_windows=int(meta.get("n_windows", 1))))
        metas.append(meta)
        del index, emb
    spans = sorted((int(m.get("lo", 0)), int(m.get("hi", 0)), str(d)) for m, d in zip(metas, emb_dirs))
    for (lo_a, hi_a, a), (lo_b, hi_b, b) in zip(spans, spans[1:]):
        if lo_b < hi_a:
            raise AnceError(f"{a} [{lo_a}, {hi_a}) and {b} [{lo_b}, {hi_b}) overlap: give each shard once")
    covered = sum(hi - lo for lo, hi, _ in spans)
    if corpus is not None and covered != len(corpus):
        log.warning("the embeddings cover %d of %d documents: missing shards?", covered, len(corpus))
    scores, ids = merge_topk([r[0] for r in results], [r[1] for r in results], k)
    return scores, ids, metas


def expand_emb_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Each path is an embeddings dir, or a dir holding ``shard-i-of-n`` embeddings dirs."""
    out = []
    for p in map(Path, paths):
        if (p / "meta.json").is_file() or not p.is_dir():
            out.append(p)
            continue
        shards = sorted(p.glob("shard-*-of-*"))
        out.extend(shards if shards else [p])
    return out
