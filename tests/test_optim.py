"""trainer/optim.py: AdamW's parameter groups and the fused kernel it takes by default."""

from __future__ import annotations

import torch
from torch import nn

from ance.trainer.optim import build_optimizer


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 8)
        self.LayerNorm = nn.LayerNorm(8)
        self.frozen = nn.Linear(8, 2)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.LayerNorm(self.dense(x)).sum()


def train(fused: bool | None, steps: int = 5) -> tuple[torch.optim.AdamW, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = Tiny()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1, fused=fused)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        model(torch.randn(4, 8, generator=g)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt, [p.detach().clone() for p in model.parameters()]


def test_biases_and_norms_are_not_decayed_and_frozen_weights_are_left_out():
    opt = build_optimizer(Tiny(), lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [tuple(p.shape) for p in decay["params"]] == [(8, 8)]              # dense.weight only
    assert sorted(tuple(p.shape) for p in no_decay["params"]) == [(8,), (8,), (8,)]  # bias, norm weight and bias


def test_cpu_parameters_take_the_fused_kernel_with_the_same_updates():
    opt, fused = train(None)
    assert opt.defaults["fused"] is True
    ref_opt, ref = train(False)
    assert not ref_opt.defaults["fused"]
    for a, b in zip(fused, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # a state the per-tensor loop saved loads into the fused optimizer (a run resumed on another torch)
    opt2 = build_optimizer(Tiny(), lr=1e-2, weight_decay=0.1)
    opt2.load_state_dict(ref_opt.state_dict())
    assert int(opt2.state_dict()["state"][0]["step"]) == 5
