"""The encode loop's traffic between host and GPU (:func:`ance.model.encode.encode_token_lists`): batches'
inputs built ahead on a thread (:func:`prefetched`), copied to the device with what only the ids determine
made there (:func:`to_device`), and the vectors gathered back (:class:`Results`)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np
import torch


class Results:
    """Batch outputs into one array. CPU: float32 numpy. CUDA: float16 (the index keeps float16 on a
    GPU, and the host never holds the corpus in float32), either in a GPU tensor (``on_device``:
    nothing crosses to the host) or in numpy through two pinned buffers, one batch behind.

    ``on_device`` writes each batch at its positions through ``order`` (every batch's positions in the
    order they come, uploaded once): a batch's positions copied from pageable host memory each time let the
    driver synchronise with the stream (CUDA's "API synchronization behavior"), which idles the GPU between
    batches. On a CPU ``on_device`` gives a float32 tensor (the same code, which the CPU tests run)."""

    def __init__(self, n: int, dim: int, batch_size: int, device: str, on_device: bool = False,
                 order: np.ndarray | None = None):
        self.cuda = device.startswith("cuda")
        self.on_device = on_device
        self.pending = None  # (event, host tensor, positions)
        if self.on_device:
            self.out = torch.empty((n, dim), dtype=torch.float16 if self.cuda else torch.float32, device=device)
            self.order = None if order is None else torch.from_numpy(np.asarray(order, np.int64)).to(device)
            self.cursor = 0
        else:
            self.out = np.empty((n, dim), dtype=np.float16 if self.cuda else np.float32)
        if self.cuda and not self.on_device:
            self.buffers = [torch.empty((batch_size, dim), dtype=torch.float16, pin_memory=True) for _ in range(2)]
            self.turn = 0

    def put(self, reps: torch.Tensor, pos: np.ndarray) -> None:
        if self.on_device:
            if self.order is not None:  # this batch's positions, already on the device
                at = self.order[self.cursor:self.cursor + len(pos)]
                self.cursor += len(pos)
            else:
                at = torch.from_numpy(np.asarray(pos, np.int64)).to(self.out.device, non_blocking=True)
            self.out[at] = reps.to(self.out.dtype)
            return
        if not self.cuda:
            self.out[pos] = reps.float().numpy()
            return
        host = self.buffers[self.turn][: len(pos)]
        self.turn ^= 1
        host.copy_(reps.half(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.flush()  # the previous batch: its copy finished before this batch's kernels ran
        self.pending = (event, host, pos)

    def flush(self) -> None:
        if self.pending is not None:
            event, host, pos = self.pending
            event.synchronize()
            self.out[pos] = host.numpy()
            self.pending = None


def prefetched(make: Callable[[np.ndarray], Any], batches: list[np.ndarray], depth: int = 2) -> Iterator:
    """``(pos, make(pos))`` for each batch, ``make`` running ``depth`` batches ahead on a thread.

    The inputs of batch ``i + 1`` (gather from the memory map, special tokens,
    pinning) are built while the GPU runs batch ``i``; numpy and the pinned
    copy release the GIL, so the two overlap.
    """
    if len(batches) <= 1:
        for pos in batches:
            yield pos, make(pos)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for pos in batches:
                if stop.is_set():
                    return
                q.put((pos, make(pos), None))
        except BaseException as exc:  # handed to the consumer, raised there
            q.put((None, None, exc))

    thread = threading.Thread(target=produce, name="encode-prefetch", daemon=True)
    thread.start()
    try:
        for _ in batches:
            pos, item, exc = q.get()
            if exc is not None:
                raise exc
            yield pos, item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


#: the inputs a batch leaves for the device to make: ``build_padded_inputs``' token types are zeros, and a
#: batch without padding has an all-ones mask
_MADE_ON_DEVICE = {"token_type_ids": torch.zeros_like, "attention_mask": torch.ones_like}


def to_device(host: dict[str, torch.Tensor | None], device: str) -> dict[str, torch.Tensor]:
    """A batch's inputs on ``device``: each pinned tensor copied, each ``None`` (token types; a full batch's
    mask) made there from ``input_ids``' shape: what ``build_padded_inputs`` gives."""
    ids = host["input_ids"].to(device, non_blocking=True)
    return {k: ids if k == "input_ids" else _MADE_ON_DEVICE[k](ids) if v is None else v.to(device, non_blocking=True)
            for k, v in host.items()}
