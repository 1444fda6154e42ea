"""The lean BERT forward (ance.model.leanbert): transformers' representations from the same weights,
for ragged (masked) and full batches, every mask form a caller passes, installed in place without
changing what a checkpoint loads into."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from ance.model import leanbert
from ance.model.biencoder import BiEncoder, resolve_model, sdpa_mask
from ance.model.inference import copy_weights


def tiny(hidden_act: str = "gelu", **kw) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, hidden_act=hidden_act, **kw)
    return BertModel(cfg).eval()


def batch(n: int = 5, length: int = 11):
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 1000, (n, length), generator=gen)
    lengths = torch.tensor([length, 1, 4, length - 1, 7][:n])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids, mask, torch.randint(0, 2, (n, length), generator=gen)


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("gelu", leanbert.GELU_MODES)
def test_same_hidden_states_as_transformers_on_a_ragged_batch(act, gelu):
    model = tiny(act)
    ids, mask, tt = batch()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        assert leanbert.install(model, gelu)
        got = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    keep = mask.bool()
    # on the CPU the epilogue GELU is exact (a GPU's cuBLASLt epilogue takes the tanh approximation)
    assert torch.allclose(ref[keep], got[keep], atol=1e-5), (ref[keep] - got[keep]).abs().max()


def test_every_mask_form_gives_the_same_states():
    model = tiny()
    ids, mask, _ = batch()
    leanbert.install(model)
    keep = mask.bool()
    with torch.no_grad():
        two_d = model(input_ids=ids, attention_mask=mask).last_hidden_state
        four_d = model(input_ids=ids, attention_mask=mask[:, None, None, :].bool()).last_hidden_state
        additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        added = model(input_ids=ids, attention_mask=additive).last_hidden_state
        full = model(input_ids=ids[:1], attention_mask=None).last_hidden_state
        full_masked = model(input_ids=ids[:1], attention_mask=torch.ones_like(ids[:1])).last_hidden_state
    assert torch.allclose(two_d[keep], four_d[keep], atol=1e-6)
    assert torch.allclose(two_d[keep], added[keep], atol=1e-5)
    assert torch.allclose(full, full_masked, atol=1e-6)


def test_bf16_within_rounding_of_the_fp32_forward():
    model = tiny()
    ids, mask, tt = batch()
    keep = mask.bool()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        half = copy.deepcopy(model).to(torch.bfloat16)
        leanbert.install(half, "epilogue")
        got = half(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state.float()
    cos = torch.nn.functional.cosine_similarity(ref[keep], got[keep], dim=-1)
    assert cos.min() > 0.999


def test_the_biencoders_vectors_and_a_checkpoints_weights_load_as_before():
    enc = BiEncoder.load(resolve_model("tiny-bert")).eval()
    lean = copy.deepcopy(enc)
    keys = list(lean.query_encoder.state_dict())
    assert all(leanbert.install(t) for t in lean.towers())
    assert list(lean.query_encoder.state_dict()) == keys and type(lean.query_encoder) is type(enc.query_encoder)
    ids, mask, tt = batch()
    ids = ids % enc.query_encoder.config.vocab_size
    with torch.no_grad():
        # the 4-D boolean mask the BiEncoder prepares on a GPU, and the 2-D one
        assert torch.allclose(enc(ids, mask, tt), lean(ids, mask, tt), atol=1e-5)
        assert sdpa_mask(lean.query_encoder, mask) is not None
        trained = copy.deepcopy(enc)
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
        copy_weights(lean, trained)  # the worker's path for each new checkpoint
        assert torch.allclose(trained(ids, mask, tt), lean(ids, mask, tt), atol=1e-5)


def test_other_towers_keep_their_forward():
    torch.manual_seed(0)
    roberta = RobertaModel(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64))
    assert not leanbert.install(roberta) and "forward" not in vars(roberta)
    relative = tiny(position_embedding_type="relative_key")
    assert not leanbert.supports(relative)
    assert not leanbert.supports(tiny("relu"))
    with pytest.raises(ValueError, match="gelu must be one of"):
        leanbert.install(tiny(), "fast")


def test_a_lora_wrapped_tower_keeps_its_forward():
    from ance.model import lora

    enc = BiEncoder.load(resolve_model("tiny-bert")).eval()
    lora.apply(enc, 4, 8, 0.0, ["query", "value"])
    assert not any(leanbert.install(t) for t in enc.towers())


def test_for_inference_installs_the_named_kernels():
    from ance.model.inference import for_inference
    from ance.run.errors import ConfigError

    enc = for_inference(BiEncoder.load(resolve_model("tiny-bert")), "cpu", "auto", kernels="lean")
    assert all("forward" in vars(t) for t in enc.towers())
    assert "forward" not in vars(for_inference(BiEncoder.load(resolve_model("tiny-bert")), "cpu").query_encoder)
    with pytest.raises(ConfigError, match="inferencer.kernels must be one of"):
        for_inference(BiEncoder.load(resolve_model("tiny-bert")), "cpu", kernels="fast")
