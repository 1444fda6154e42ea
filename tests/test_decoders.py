"""Decoder (LLM) embedders: last-token / mean pooling with left and right padding against a hand
computation, EOS and pad handling, and checkpoints that sentence-transformers and transformers load
(tiny random Llama, Qwen3 and Gemma 3, and BERT; tokenizers built offline: tests/helpers_models.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ance.model import pooling
from ance.model.biencoder import BiEncoder, resolve_model
from ance.model.encode import encode_texts
from ance.model.tokcache import build_inputs
from ance.run.errors import ConfigError

from helpers_models import tiny_decoder

TEXTS = ["dense retrieval", "the quick brown fox jumps over the lazy dog and a query", "a",
         "scientific claims and evidence about rain"]
FAMILIES = ["llama", "qwen3", "gemma3"]


# --------------------------------------------------------------------------- the pure maths


def test_pool_left_and_right_padding_equal_the_unpadded_rows():
    torch.manual_seed(0)
    lengths = [3, 5, 1]
    rows = [torch.randn(n, 4) for n in lengths]
    width = max(lengths)
    for side in ("left", "right"):
        hidden = torch.full((3, width, 4), float("nan"))  # pads hold garbage (NaN): must not leak
        mask = torch.zeros(3, width, dtype=torch.long)
        for i, r in enumerate(rows):
            cols = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            hidden[i, cols], mask[i, cols] = r, 1
        torch.testing.assert_close(pooling.pool(hidden, mask, "last"), torch.stack([r[-1] for r in rows]))
        torch.testing.assert_close(pooling.pool(hidden, mask, "cls"), torch.stack([r[0] for r in rows]))
        torch.testing.assert_close(pooling.pool(hidden, mask, "mean"), torch.stack([r.mean(0) for r in rows]))
        pos = pooling.position_ids(mask)
        for i, n in enumerate(lengths):
            assert pos[i][mask[i].bool()].tolist() == list(range(n))


@pytest.mark.parametrize("how", pooling.POOLINGS)
def test_pool_of_bf16_states_is_the_float32_pool_and_full_is_an_all_ones_mask(how):
    """bf16 states are pooled with float32 accumulation (no float32 copy): the float32 pool of the same
    values; ``full`` (a batch without padding) skips the mask and gives the all-ones mask's vectors."""
    torch.manual_seed(1)
    hidden = torch.randn(4, 7, 8).bfloat16()
    mask = torch.ones(4, 7, dtype=torch.long)
    mask[1, 5:] = 0
    got = pooling.pool(hidden, mask, how)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, pooling.pool(hidden.float(), mask, how), rtol=1e-6, atol=1e-6)
    ones = torch.ones_like(mask)
    full = pooling.pool(hidden, None, how, full=True)
    assert full.dtype == torch.float32
    torch.testing.assert_close(full, pooling.pool(hidden.float(), ones, how), rtol=1e-6, atol=1e-6)
    leaf = hidden.float().requires_grad_()  # the training path: gradients through the float32 sum
    pooling.pool(leaf, mask, how).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


# --------------------------------------------------------------------------- real towers


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {fam: tiny_decoder(fam, root / fam) for fam in FAMILIES}


def _by_hand(model: BiEncoder, texts, pooling_name: str) -> torch.Tensor:
    """Each text alone, no padding: the tokenizer's own ids (EOS included for a decoder)."""
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([model.tokenizer(text)["input_ids"]])
            hidden = model.query_encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            vec = {"last": hidden[-1], "mean": hidden.mean(0), "cls": hidden[0]}[pooling_name]
            out.append(F.normalize(vec.float(), dim=-1))
    return torch.stack(out)


@pytest.mark.parametrize("family", FAMILIES + ["bert"])
@pytest.mark.parametrize("pool_name", ["last", "mean"])
def test_pooling_with_left_and_right_padding_equals_hand_computation(decoders, tmp_path, family, pool_name):
    path = resolve_model("tiny-bert", cache_dir=tmp_path) if family == "bert" else str(decoders[family])
    if family == "bert" and pool_name == "last":
        pool_name = "cls"
    model = BiEncoder.load(path, pooling=pool_name).eval()
    if family != "bert":
        assert model.causal
        assert model.tokenizer(TEXTS[0])["input_ids"][-1] == model.tokenizer.eos_token_id, "EOS appended"
        assert model.tokenizer.pad_token_id is not None
    want = _by_hand(model, TEXTS, pool_name)
    content = model.tokenizer(TEXTS, add_special_tokens=False)["input_ids"]
    for side in ("right", "left"):
        model.tokenizer.padding_side = side
        inputs = build_inputs(content, model.tokenizer, 64)
        if side == "left":
            assert inputs["attention_mask"][:, 0].tolist().count(0) > 0, "left padding really used"
        with torch.no_grad():
            got = model(**inputs)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_decoder_checkpoint_loads_in_sentence_transformers_and_transformers(decoders, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    model = BiEncoder.load(str(decoders["qwen3"]), pooling="last")
    model.prompts = {"query": "Instruct: retrieve documents\nQuery: ", "passage": ""}
    model.max_seq_length = 32
    model.save(tmp_path / "ckpt")
    st = SentenceTransformer(str(tmp_path / "ckpt"), device="cpu")
    assert st.max_seq_length == 32
    for kind in ("query", "passage"):
        ours = encode_texts(model, TEXTS, 32, kind=kind, batch_size=2, device="cpu")
        theirs = st.encode(TEXTS, prompt_name=kind if kind == "query" else None, convert_to_numpy=True)
        assert abs(ours - theirs).max() <= 1e-4, kind
    again = BiEncoder.load(str(tmp_path / "ckpt"))
    assert again.pooling == "last" and again.prompts["query"].startswith("Instruct:")
    hf = AutoModel.from_pretrained(str(tmp_path / "ckpt"))
    assert type(hf).__name__ == "Qwen3Model"


def test_decoder_without_eos_is_refused(tmp_path):
    path = tiny_decoder("qwen3", tmp_path / "noeos", eos=False)
    with pytest.raises(ConfigError, match="no EOS token"):
        BiEncoder.load(str(path), pooling="last")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("how", pooling.POOLINGS)
def test_pool_of_bf16_states_on_the_gpu(how):
    """On a GPU the bf16 sum accumulates in float32 inside the reduction: the float32 pool, to rounding."""
    torch.manual_seed(2)
    hidden = torch.randn(64, 128, 384, device="cuda").bfloat16()
    mask = torch.ones(64, 128, dtype=torch.long, device="cuda")
    mask[3, 100:] = 0
    torch.testing.assert_close(pooling.pool(hidden, mask, how), pooling.pool(hidden.float(), mask, how),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooling.pool(hidden, None, how, full=True),
                               pooling.pool(hidden.float(), torch.ones_like(mask), how), rtol=1e-5, atol=1e-5)
