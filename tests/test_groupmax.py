"""The group maxima of a score tile (ance.search.groupmax): the Triton kernel against torch's amax."""

import pytest
import torch

from ance.search import groupmax
from ance.search.groupmax import group_max


def test_group_max_is_the_maximum_of_each_group_on_the_cpu():
    s = torch.tensor([[1.0, -2.0], [3.0, 5.0], [-1.0, 0.5], [0.0, 0.25]])
    assert group_max(s, 2).tolist() == [[3.0, 5.0], [0.0, 0.5]]
    assert group_max(s, 1).tolist() == s.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernel runs on a CUDA GPU")
@pytest.mark.parametrize("q", [1, 300, 4096])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_group_max_equals_amax(q, dtype):
    g = torch.Generator(device="cuda").manual_seed(q)
    s = torch.randn(32 * 70, q, device="cuda", generator=g).to(dtype)
    s[5, 0] = float("inf")
    got = group_max(s, 32)
    assert groupmax._KERNEL and groupmax._KERNEL[0] is not None, "Triton is missing on this GPU machine"
    want = s.view(70, 32, q).amax(dim=1)
    assert torch.equal(got, want)
