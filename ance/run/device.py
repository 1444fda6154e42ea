"""Where and in which precision a process computes: one rule for every role and command.

``auto`` means this process's GPU when torch sees one (``cuda:$LOCAL_RANK``,
so each torchrun rank takes its own), else the CPU; ``auto`` precision means
bf16 autocast on CUDA and fp32 elsewhere. Asking for CUDA where torch has none
is a :class:`~ance.run.errors.ConfigError` that says what to do.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ance.run.errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_device(name: str, what: str = "device") -> str:
    """``auto`` -> ``cuda:$LOCAL_RANK`` (0 when unset) or ``cpu``; ``cpu``, ``cuda``, ``cuda:<i>`` checked.

    ``what`` names the setting in errors (``train.device``, ``--device``).
    """
    name = str(name)
    if name == "auto":
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ConfigError(f"{what}={name!r}: use auto, cpu, cuda or cuda:<i>")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name} but torch {torch.__version__} sees no CUDA GPU (a CPU build, or no "
                          f"driver); use {what}=cpu, or install a CUDA build of torch")
    return name


def device_type(device: str) -> str:
    """``cuda:1`` -> ``cuda``: the kind ``torch.autocast`` and ``GradScaler`` take."""
    return str(device).split(":")[0]


def describe_device(device: str) -> str:
    """``cuda:0`` with the physical GPU it is when CUDA_VISIBLE_DEVICES renumbers them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if device.startswith("cuda") and visible:
        index = int(device.split(":")[1]) if ":" in device else 0
        gpus = [g.strip() for g in visible.split(",")]
        if index < len(gpus) and gpus[index] != str(index):
            return f"{device} (GPU {gpus[index]})"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; the others checked and kept."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return precision


def autocast_dtype(device: str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision``: ``auto`` is bf16 on CUDA and None (fp32) elsewhere."""
    return _DTYPES[resolve_precision(precision, device)]


def autocast(device: str, precision: str = "auto") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``precision`` on ``device``; a no-op context for fp32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type(device), dtype=dtype)
