"""The group maxima of a corpus-major score tile in one pass: ``[B, Q] -> [B / G, Q]``.

:func:`ance.search.knn.tile_topk` and :func:`~ance.search.knn.tile_above` reduce every group of ``G``
neighbouring corpus rows of a float16 score tile to its maximum per query. torch's ``amax`` over the
middle dimension of ``[B / G, G, Q]`` read a 2 GB tile at about half of an H200's memory bandwidth
(0.87 ms); the Triton kernel here reads each program's ``G x BLOCK_Q`` strip with wide loads and keeps
the maximum in registers. Same values as ``amax`` (a maximum is exact in any order).

:func:`group_max` takes the kernel on a CUDA tensor where Triton is importable and ``amax`` anywhere
else, so the CPU tests and the GPU path share one contract (tests/test_knn.py).
"""

from __future__ import annotations

from typing import Callable

import torch

BLOCK_Q = 256   # queries per program (a 32 x 256 float16 strip: 16 KB)
NUM_WARPS = 4

_KERNEL: list = []   # [the launcher, or None where Triton is missing]
USE_TRITON = True    # benchmarks/bench_knn.py --gmax torch turns it off to compare


def _triton_group_max() -> Callable[[torch.Tensor, int], torch.Tensor] | None:
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - a torch build without Triton: amax does the work
        return None

    @triton.jit
    def _kernel(s_ptr, out_ptr, n_q, G: tl.constexpr, BQ: tl.constexpr):
        g = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BQ + tl.arange(0, BQ)
        rows = tl.arange(0, G)
        ok = cols < n_q
        ptrs = s_ptr + (g * G + rows[:, None]) * n_q + cols[None, :]
        x = tl.load(ptrs, mask=ok[None, :], other=float("-inf"))
        tl.store(out_ptr + g * n_q + cols, tl.max(x, axis=0), mask=ok)

    def launch(scores_t: torch.Tensor, group: int) -> torch.Tensor:
        b, q = scores_t.shape
        out = torch.empty((b // group, q), dtype=scores_t.dtype, device=scores_t.device)
        _kernel[(b // group, triton.cdiv(q, BLOCK_Q))](scores_t, out, q, G=group, BQ=BLOCK_Q,
                                                        num_warps=NUM_WARPS)
        return out

    return launch


def group_max(scores_t: torch.Tensor, group: int) -> torch.Tensor:
    """``scores_t [B, Q]`` (contiguous, ``B`` a multiple of ``group``) -> ``[B / group, Q]``, each
    entry the maximum of its group's ``group`` rows."""
    b, q = scores_t.shape
    if (USE_TRITON and scores_t.is_cuda and scores_t.is_contiguous() and group & (group - 1) == 0
            and scores_t.dtype in (torch.float16, torch.bfloat16, torch.float32)):
        if not _KERNEL:
            _KERNEL.append(_triton_group_max())
        if _KERNEL[0] is not None:
            return _KERNEL[0](scores_t, group)
    return scores_t.view(b // group, group, q).amax(dim=1)
