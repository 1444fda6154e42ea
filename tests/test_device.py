"""ance.run.device: one rule for device and precision, for every role and command."""

from __future__ import annotations

import pytest
import torch

from ance.run.device import autocast, autocast_dtype, describe_device, device_type, resolve_device, resolve_precision
from ance.run.errors import ConfigError


def test_autocast_dtype():
    assert autocast_dtype("cpu") is None and autocast_dtype("cuda:1") is torch.bfloat16
    assert autocast_dtype("cpu", "bf16") is torch.bfloat16 and autocast_dtype("cuda", "fp32") is None
    assert autocast_dtype("cuda", "fp16") is torch.float16
    with pytest.raises(ConfigError, match="precision"):
        autocast_dtype("cpu", "int8")


def test_describe_device_names_the_physical_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert describe_device("cuda:0") == "cuda:0 (GPU 3)"
    assert describe_device("cuda") == "cuda (GPU 3)"
    assert describe_device("cpu") == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert describe_device("cuda:1") == "cuda:1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert describe_device("cuda:2") == "cuda:2"


def test_resolve_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="train.device=cuda:1 but torch .* sees no CUDA GPU"):
        resolve_device("cuda:1", "train.device")
    for bad in ("gpu", "cpu:0", "cuda:x"):
        with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:<i>"):
            resolve_device(bad, "--device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")  # each torchrun rank its own GPU
    assert resolve_device("auto") == "cuda:3" and resolve_device("cuda") == "cuda"
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == "cuda:0"
    assert device_type("cuda:3") == "cuda" and device_type("cpu") == "cpu"


def test_resolve_precision_and_autocast():
    assert resolve_precision("auto", "cuda:0") == "bf16" and resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("fp16", "cpu") == "fp16"
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("int8", "cpu")
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
