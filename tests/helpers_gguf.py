"""A tiny llama.cpp GGUF file written offline with the gguf package's GGUFWriter, from a tiny random HF
Llama dir (helpers_models.tiny_decoder): the tensors under llama.cpp's names, attn_q/attn_k permuted
the way llama.cpp's convert_hf_to_gguf.py does (transformers undoes it on load), the hyperparameters
under ``llama.*`` and the byte-level BPE tokenizer as ``tokenizer.ggml.*`` (model ``gpt2``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (rotary halves interleaved), as in its convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(hf_dir: str | Path, out: str | Path, qtype: str = "F32", name: str = "tiny-llama") -> Path:
    """Write the Llama model + tokenizer in ``hf_dir`` as the GGUF file ``out``; matrices as ``qtype``
    (``F32``: exact; ``Q8_0``/``Q4_1``: quantized by gguf's reference quantizer), vectors as F32."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir, out = Path(hf_dir), Path(out)
    cfg = json.loads((hf_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama", cfg["model_type"]
    n_head, n_kv, n_layer = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_name(name)
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
                                     or 10000.0))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    _add_tokenizer(writer, hf_dir)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    quant = gguf.GGMLQuantizationType[qtype]
    for key, value in load_file(str(hf_dir / "model.safetensors")).items():
        base, suffix = key.rsplit(".", 1)
        target = names.get_name(base.removeprefix("model."))
        assert target is not None, key
        value = value.astype(np.float32)
        if target.endswith("attn_q"):
            value = _permute(value, n_head)
        elif target.endswith("attn_k"):
            value = _permute(value, n_kv)
        if value.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{target}.{suffix}", gguf.quants.quantize(value, quant), raw_dtype=quant)
        else:
            writer.add_tensor(f"{target}.{suffix}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_tokenizer(writer, hf_dir: Path) -> None:
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    assert [vocab[t] for t in tokens] == list(range(len(tokens)))
    special = {t["content"] for t in tok.get("added_tokens", []) if t.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    conf = json.loads((hf_dir / "tokenizer_config.json").read_text())
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in special else 1 for t in tokens])  # 3: control, 1: normal
    writer.add_token_merges(merges)
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("unk_token", writer.add_unk_token_id)):
        if conf.get(key):
            add(vocab[conf[key]])
    from transformers import AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(str(hf_dir))  # BOS may come from a post-processor, not a flag
    writer.add_add_bos_token(hf_tok.bos_token_id is not None and hf_tok("a")["input_ids"][0] == hf_tok.bos_token_id)
    writer.add_add_eos_token(False)
