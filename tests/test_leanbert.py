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
    checkpointed = tiny()
    checkpointed.gradient_checkpointing_enable()
    assert not leanbert.supports(checkpointed)
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


def test_training_without_dropout_gives_transformers_loss_and_gradients():
    ids, mask, tt = batch()
    grads = []
    for lean in (False, True):
        model = tiny(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
        if lean:
            assert leanbert.install(model)
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
        loss = (out * mask[..., None]).pow(2).sum()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ref_loss, ref), (got_loss, got) = grads
    torch.testing.assert_close(got_loss, ref_loss, rtol=1e-5, atol=0)
    assert ref.keys() == got.keys()  # the pooler gets no gradient either way
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-6)


def test_dropout_in_training_only_and_gradcache_replays_it():
    from test_gradcache import B, InfoNCE, TinyEncoder, GradCache, assert_tensors_close, plain_step, tokens

    model = tiny(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    leanbert.install(model)
    ids, mask, _ = batch()
    with torch.no_grad():
        model.train()
        a, b = (model(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(2))
        model.eval()
        c, d = (model(input_ids=ids, attention_mask=mask).last_hidden_state for _ in range(2))
    assert not torch.allclose(a, b) and torch.equal(c, d)

    gen = torch.Generator().manual_seed(1)
    queries, passages = tokens(B, 7, gen), tokens(2 * B, 11, gen)
    pos, loss_fn = torch.arange(B), InfoNCE(0.05)

    def step(run):
        torch.manual_seed(0)
        enc = TinyEncoder(0.1).train()
        assert leanbert.install(enc.bert)
        torch.manual_seed(123)
        loss = run(enc)
        return loss, {n: p.grad.clone() for n, p in enc.named_parameters() if p.grad is not None}

    ref = step(lambda m: plain_step(m, loss_fn, queries, passages, chunk_size=3, pos_index=pos))
    got = step(lambda m: GradCache(m, loss_fn, 3).step(queries, passages, pos_index=pos))
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=0)
    assert_tensors_close(got[1], ref[1])


def test_ance_train_with_lean_kernels(tmp_path):
    """`ance train ... train.kernels=lean` trains (two steps, tiny BERT, SciFact), its losses those of a run
    with transformers' forward up to dropout's draws; a wrong value is a one-line config error."""
    from pathlib import Path

    from ance.cli import main as ance_main
    from ance.run.config import load_config
    from ance.run.errors import ConfigError
    from ance.run.telemetry import read_metrics

    root = Path(__file__).resolve().parents[1]
    scifact = root.parent / "shared" / "data" / "scifact"
    if not (scifact / "corpus.jsonl").is_file():
        pytest.skip(f"no SciFact at {scifact}")
    losses = {}
    for kernels in ("hf", "lean"):
        run = tmp_path / kernels
        assert ance_main(["train", str(root / "configs" / "tiny-cpu.yaml"), f"run_dir={run}", f"data.path={scifact}",
                          "data.eval_split=null", "data.max_docs=200", "data.max_queries=40",
                          "model.passage_max_length=32", "train.batch_size=4", "train.chunk_size=4",
                          "train.max_steps=2", "train.checkpoint_every=100", "train.device=cpu",
                          "negatives.source=inbatch", "telemetry.tensorboard=false", f"train.kernels={kernels}",
                          "train.compile=on"]) == 0   # on the CPU: not compiled (tests/test_train_compile.py)
        losses[kernels] = [ev["loss"] for ev in read_metrics(run) if ev["event"] == "step"]
    assert len(losses["lean"]) == 2 and all(x > 0 for x in losses["lean"])
    assert losses["lean"][0] == pytest.approx(losses["hf"][0], rel=0.2)
    with pytest.raises(ConfigError, match="train.kernels"):
        load_config(root / "configs" / "tiny-cpu.yaml", ["train.kernels=fast"])
