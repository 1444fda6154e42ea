"""The fast encode path: weights cast for inference, batches without padding sent without a mask.

Both must give the plain forward's vectors: exactly for the dropped mask, within bf16 rounding for
the cast weights (a GPU casts them; here the CPU runs the same code in bf16).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ance.model.biencoder import BiEncoder, resolve_model
from ance.model.encode import encode_token_lists
from ance.model.inference import for_inference, half_weights
from ance.model.tokcache import build_inputs


@pytest.fixture(scope="module")
def model():
    return BiEncoder.load(resolve_model("tiny-bert")).eval()


def ragged(n: int, seed: int = 0) -> list[list[int]]:
    """Token lists of lengths 1..40 with runs of equal lengths, so some batches are full and some padded."""
    rng = np.random.default_rng(seed)
    lengths = np.concatenate([np.full(8, 30), rng.integers(1, 41, n - 16), np.full(8, 12)])
    return [rng.integers(1000, 29000, int(k)).tolist() for k in lengths]


def plain(model, tokens, max_length: int) -> np.ndarray:
    """One row at a time, the tower given its mask: the reference."""
    out = []
    with torch.inference_mode():
        for t in tokens:
            inputs = build_inputs([t], model.tokenizer, max_length)
            out.append(model(**inputs, kind="passage").float().numpy())
    return np.concatenate(out)


def test_batches_without_padding_give_the_masked_vectors(model):
    tokens = ragged(64)
    got = encode_token_lists(model, tokens, np.arange(len(tokens)), model.tokenizer, 32, kind="passage",
                             batch_size=8, device="cpu", progress=False)
    np.testing.assert_allclose(got, plain(model, tokens, 32), atol=2e-5)


def test_dense_forward_equals_the_masked_one(model):
    inputs = build_inputs([list(range(1000, 1020))] * 4, model.tokenizer, 64)
    assert bool(inputs["attention_mask"].all())
    with torch.inference_mode():
        a = model(**inputs, kind="passage")
        b = model(**inputs, kind="passage", dense=True)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_bf16_weights_give_the_fp32_vectors_within_rounding(model):
    tokens = ragged(48, seed=1)
    ref = plain(model, tokens, 32)
    half = BiEncoder.load(resolve_model("tiny-bert")).eval().to(torch.bfloat16)
    assert half_weights(half) and not half_weights(model)
    got = encode_token_lists(half, tokens, np.arange(len(tokens)), half.tokenizer, 32, kind="passage",
                             batch_size=8, device="cpu", progress=False)
    assert got.dtype == np.float32 and got.shape == ref.shape
    cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.995, cos.min()  # bf16 keeps 8 bits of mantissa
    # the ranking a search makes from them barely moves
    q = ref[:8]
    assert np.mean(np.argsort(-(q @ ref.T), axis=1)[:, :5] == np.argsort(-(q @ got.T), axis=1)[:, :5]) > 0.8


def test_for_inference_casts_on_a_gpu_only():
    m = BiEncoder.load(resolve_model("tiny-bert"))
    assert for_inference(m, "cpu", "auto") is m and not half_weights(m) and not m.training
    assert not half_weights(for_inference(m, "cpu", "bf16"))  # the CPU keeps fp32 (autocast decides there)


def test_copy_weights_gives_the_new_checkpoints_vectors(tmp_path):
    from ance.model.inference import copy_weights, same_architecture

    kept = for_inference(BiEncoder.load(resolve_model("tiny-bert")), "cpu", "auto", compile="on")
    newer = BiEncoder.load(resolve_model("tiny-bert"))
    with torch.no_grad():
        for p in newer.parameters():
            p.add_(0.01 * torch.randn_like(p))
    newer.save(tmp_path / "ckpt")
    newer = BiEncoder.load(str(tmp_path / "ckpt")).eval()
    assert same_architecture(kept, newer)
    tokens = ragged(24, seed=2)
    before = encode_token_lists(kept, tokens, np.arange(24), kept.tokenizer, 32, kind="passage", batch_size=8,
                                device="cpu", progress=False)
    copy_weights(kept, newer)
    got = encode_token_lists(kept, tokens, np.arange(24), kept.tokenizer, 32, kind="passage", batch_size=8,
                             device="cpu", progress=False)
    want = encode_token_lists(newer, tokens, np.arange(24), newer.tokenizer, 32, kind="passage", batch_size=8,
                              device="cpu", progress=False)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.abs(got - before).max() > 1e-3


def test_a_compile_mode_that_does_not_exist_is_one_line():
    from ance.run.errors import ConfigError

    with pytest.raises(ConfigError, match="inferencer.compile must be one of off, on, max-autotune"):
        for_inference(BiEncoder.load(resolve_model("tiny-bert")), "cpu", "auto", compile="fast")


def test_a_compiling_inferencer_keeps_its_model_and_takes_each_checkpoints_weights(tmp_path):
    """inferencer.compile: the model is built (and compiled, on a GPU) once; later checkpoints' weights are
    copied into it, and it encodes as the checkpoint itself does."""
    from helpers_refresh import free_port, make_checkpoint, write_config

    from ance.run.config import load_config
    from ance.inferencer.worker import Worker

    cfg = load_config(write_config(tmp_path, free_port(), inferencer={"compile": "on"}))
    worker = Worker(cfg, device="cpu", name="c")
    first = worker._load_model(make_checkpoint(tmp_path / "run", 1))
    ckpt = make_checkpoint(tmp_path / "run", 2)
    changed = BiEncoder.load(str(ckpt))
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(1.05)
    changed.save(ckpt)
    second = worker._load_model(ckpt)
    assert second is first
    tokens = ragged(16, seed=3)
    want = encode_token_lists(BiEncoder.load(str(ckpt)), tokens, np.arange(16), changed.tokenizer, 32,
                              kind="passage", batch_size=8, device="cpu", progress=False)
    got = encode_token_lists(second, tokens, np.arange(16), second.tokenizer, 32, kind="passage", batch_size=8,
                             device="cpu", progress=False)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_trainers_evaluation_encodes_as_the_inferencers_do():
    """On a GPU the in-loop evaluation takes a bf16 copy (what `ance retrieve` and the inferencers hold);
    on the CPU, and in fp32, the model itself."""
    from ance.trainer.evaluator import inference_copy

    m = BiEncoder.load(resolve_model("tiny-bert"))
    assert inference_copy(m, "cpu", "auto") is m and inference_copy(m, "cpu", "bf16") is m
    assert inference_copy(m, "cuda:0", "fp32") is m
