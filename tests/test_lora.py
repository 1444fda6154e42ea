"""LoRA (peft) on BiEncoder towers: only adapters train, checkpoints hold the adapter and load back,
an inferencer swaps adapters into a kept base, merging gives the same vectors, bad target modules are
refused; gradient checkpointing under GradCache gives the same gradients as without."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from ance.learn.gradcache import GradCache  # noqa: E402
from ance.learn.losses import InfoNCE  # noqa: E402
from ance.model import lora, tuning  # noqa: E402
from ance.model.biencoder import BiEncoder, resolve_model  # noqa: E402
from ance.model.encode import encode_texts  # noqa: E402
from ance.model.tokcache import build_inputs  # noqa: E402
from ance.run.errors import ConfigError  # noqa: E402

from helpers_models import tiny_decoder  # noqa: E402

TEXTS = ["dense retrieval", "the quick brown fox jumps over the lazy dog", "a query and a passage"]


def _train_cfg(r=4, targets=(), gc=False):
    return SimpleNamespace(lora=SimpleNamespace(r=r, alpha=8.0, dropout=0.0, target_modules=list(targets)),
                           gradient_checkpointing=gc)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    return {"bert": resolve_model("tiny-bert", cache_dir=root),
            "llama": str(tiny_decoder("llama", root / "llama"))}


def _perturb(model: BiEncoder, seed: int) -> None:
    """Move the adapters off their zero start (lora_B = 0), as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _vectors(model: BiEncoder) -> np.ndarray:
    return encode_texts(model, TEXTS, 32, kind="passage", batch_size=4, device="cpu")


@pytest.mark.parametrize("family,pooling", [("bert", "mean"), ("llama", "last")])
def test_adapter_checkpoint_swap_and_merge(bases, tmp_path, family, pooling):
    model = BiEncoder.load(bases[family], pooling=pooling)
    tuning.for_training(model, _train_cfg())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), "only adapter parameters train"
    _perturb(model, 1)
    model.save(tmp_path / "v1")
    files = {p.name for p in (tmp_path / "v1").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files, "the checkpoint holds the adapter, not the model"
    assert json.loads((tmp_path / "v1" / "ance.json").read_text())["lora_base"] == bases[family]
    want = _vectors(model)

    loaded = BiEncoder.load(str(tmp_path / "v1"))
    assert lora.is_lora(loaded) and loaded.pooling == pooling
    np.testing.assert_allclose(_vectors(loaded), want, atol=1e-5)

    # an inferencer: base + adapter kept, the next version's adapter swapped in
    _perturb(model, 2)
    model.save(tmp_path / "v2")
    assert lora.same_adapter_shape(loaded, tmp_path / "v2")
    lora.swap_adapter(loaded, tmp_path / "v2")
    want2 = _vectors(model)
    assert np.abs(want2 - want).max() > 1e-3
    np.testing.assert_allclose(_vectors(loaded), want2, atol=1e-5)

    merged = lora.merge_adapter(tmp_path / "v2", tmp_path / "merged")
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    plain = BiEncoder.load(str(merged))
    assert not lora.is_lora(plain)
    np.testing.assert_allclose(_vectors(plain), want2, atol=1e-5)

    # `ance export` of an adapter checkpoint: merged, a model card, no adapter files
    from ance.model.export import export_model

    out = export_model(tmp_path / "v2", tmp_path / "exported")
    assert (out / "README.md").is_file() and not (out / "adapter_config.json").exists()
    np.testing.assert_allclose(_vectors(BiEncoder.load(str(out))), want2, atol=1e-5)


def test_bad_target_module_is_refused(bases):
    model = BiEncoder.load(bases["llama"], pooling="last")
    with pytest.raises(ConfigError, match=r"train.lora.target_modules.*its linear layers: .*q_proj"):
        tuning.for_training(model, _train_cfg(targets=["no_such_proj"]))


@pytest.mark.parametrize("use_lora", [False, True])
def test_gradient_checkpointing_under_gradcache_gives_the_same_gradients(bases, use_lora):
    """Dropout on: GradCache's RNG replay and checkpointing's recomputation must draw the same masks."""
    def grads(gc: bool):
        torch.manual_seed(0)
        model = BiEncoder.load(bases["bert"])
        model.query_encoder.config.hidden_dropout_prob = 0.1
        tuning.for_training(model, _train_cfg(r=4 if use_lora else 0, gc=gc))
        if use_lora:
            _perturb(model, 3)
        model.train()
        tok = model.tokenizer
        q = build_inputs(tok(TEXTS, add_special_tokens=False)["input_ids"], tok, 16)
        p = build_inputs(tok(TEXTS[::-1] * 2, add_special_tokens=False)["input_ids"], tok, 16)
        torch.manual_seed(1)
        loss = GradCache(model, InfoNCE(0.05), 2).step(q, p, pos_index=torch.arange(3))
        return float(loss), {n: t.grad.clone() for n, t in model.named_parameters() if t.grad is not None}

    loss_a, ga = grads(False)
    loss_b, gb = grads(True)
    assert ga and ga.keys() == gb.keys()
    assert abs(loss_a - loss_b) < 1e-6
    for name in ga:
        torch.testing.assert_close(gb[name], ga[name], atol=1e-6, rtol=1e-5, msg=name)
