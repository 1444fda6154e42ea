"""Exact inner-product search behind one interface (the top-k maths: :mod:`ance.search.topk`).

Two backends implement :class:`SearchIndex`:

* :class:`FaissIndex` — ``IndexFlatIP`` on the CPU, ``GpuIndexFlatIP`` on one
  GPU, or one ``GpuIndexFlatIP`` per GPU with the corpus split between them.
* :class:`TorchIndex` — blocked matmul + ``topk`` on any torch device, for
  machines where faiss (or faiss-gpu) is not installed.

Both return ``(scores float32 [m, k], ids int64 [m, k])`` where ids are
positions in add order, rows are sorted by score descending with ties broken by
the smaller id, and ``-1`` ids with ``-inf`` scores pad rows when the index
holds fewer than ``k`` vectors. :func:`merge_topk` combines per-shard results
(the broker's job) and :func:`maxp_collapse` turns window hits into document
hits (MaxP).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch

try:
    import faiss
except ImportError:  # optional: TorchIndex serves without it
    faiss = None

from ance.search.fused import fused_search
from ance.search.knn import block_search
from ance.search.topk import _check_k, _sort_rows, maxp_collapse, merge_topk  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

# Rows converted to float32 at a time when adding, so a float16 memmap of the
# whole corpus is never copied to float32 in one piece.
_ADD_CHUNK = 65536
# Largest k faiss-gpu's k-selection supports (GPU_MAX_SELECTION_K).
_FAISS_GPU_MAX_K = 2048


@runtime_checkable
class SearchIndex(Protocol):
    dim: int

    @property
    def ntotal(self) -> int: ...

    @property
    def backend_name(self) -> str: ...

    def add(self, emb: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


# --------------------------------------------------------------------------- faiss


def faiss_available() -> bool:
    """True when ``import faiss`` works."""
    return faiss is not None


def faiss_gpus() -> int:
    """Number of GPUs faiss can use (0 for faiss-cpu or when faiss is missing)."""
    if not faiss_available():
        return 0
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def _as_matrix(x, dim: int, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{what} must have shape [n, {dim}], got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what} must be float16 or float32, got {x.dtype}")
    return x


def _pads(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)


def _order_rows(values, ids):
    """A torch search's rows (every id valid) in :func:`ance.search.topk.merge_topk`'s order, where they are:
    score descending, the smaller id first on ties, NaN as -inf, -0.0 as 0.0. On a GPU this replaces a
    sort of every row on the host (about 10 ms for 4,096 queries x 200, the GPU idle meanwhile)."""
    values = values.float()
    values = torch.where(torch.isnan(values), float("-inf"), values) + 0.0
    by_id = ids.argsort(dim=1, stable=True)
    values, ids = values.gather(1, by_id), ids.gather(1, by_id)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values, ids.gather(1, order)


class FaissIndex:
    """Exact inner-product index (flat) through faiss, on CPU or GPU(s).

    ``device``: ``"cpu"``; ``"cuda:i"`` (GPU i); ``"cuda"`` (all GPUs faiss
    sees, the corpus split between them when there are several); ``"auto"``
    (GPU 0 when faiss has GPUs, else CPU). ``gpus=[0, 2]`` splits the corpus
    over exactly those GPUs. ``fp16`` stores vectors as float16 on GPU (half the
    memory; scores still come back float32); the CPU index stores float32.

    Multi-GPU sharding is done here rather than with faiss ``IndexShards``
    because ``IndexShards`` numbers vectors consecutively only when everything
    is added in a single ``add`` call; here each GPU holds contiguous pieces of
    every ``add``, results are mapped back to add-order ids and merged with
    :func:`merge_topk`, searching the GPUs in parallel threads.
    """

    def __init__(
        self, dim: int, device: str = "auto", gpus: Sequence[int] | None = None, fp16: bool = True
    ):
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not faiss_available():
            raise ValueError(
                "faiss is not installed: pip install faiss-cpu (or faiss-gpu), or use backend 'torch'"
            )
        self.dim = int(dim)
        self.fp16 = bool(fp16)
        self._faiss = faiss
        devices = self._resolve_devices(device, gpus)
        self.devices: list[int] = devices  # [] = CPU
        self._resources = []  # kept alive as long as the GPU indexes use them
        self._shards = []
        # per shard: add-order id of the first vector of each piece, local start of each piece
        self._global_starts: list[list[int]] = []
        self._local_starts: list[list[int]] = []
        for gpu in devices or [None]:
            self._shards.append(self._new_shard(gpu))
            self._global_starts.append([])
            self._local_starts.append([])
        self._ntotal = 0

    def _new_shard(self, gpu: int | None):
        faiss = self._faiss
        if gpu is None:
            return faiss.IndexFlatIP(self.dim)
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = int(gpu)
        cfg.useFloat16 = self.fp16
        self._resources.append(res)
        return faiss.GpuIndexFlatIP(res, self.dim, cfg)

    @staticmethod
    def _resolve_devices(device: str, gpus: Sequence[int] | None) -> list[int]:
        n_gpus = faiss_gpus()
        no_gpu = (
            f"device={device!r} needs faiss with GPU support, but the installed faiss sees no GPU "
            "(faiss.get_num_gpus() == 0 or a faiss-cpu build): install faiss-gpu, or use backend "
            "'torch' (inferencer.backend=torch)"
        )
        if gpus is not None:
            gpus = [int(g) for g in gpus]
            if not gpus:
                raise ValueError("gpus is empty: give GPU numbers, e.g. gpus=[0, 1], or leave it None")
            if device not in ("auto", "cuda"):
                raise ValueError(f"gpus={gpus} conflicts with device={device!r}: use device 'cuda' with a gpus list")
            if n_gpus == 0:
                raise ValueError(no_gpu)
            bad = [g for g in gpus if not 0 <= g < n_gpus]
            if bad or len(set(gpus)) != len(gpus):
                raise ValueError(f"gpus={gpus}: faiss sees GPUs 0..{n_gpus - 1}, each may appear once")
            return gpus
        if device == "cpu":
            return []
        if device == "auto":
            return [0] if n_gpus > 0 else []
        if device == "cuda":
            if n_gpus == 0:
                raise ValueError(no_gpu)
            return list(range(n_gpus))
        if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
            gpu = int(device[5:])
            if n_gpus == 0:
                raise ValueError(no_gpu)
            if gpu >= n_gpus:
                raise ValueError(f"device={device!r}: faiss sees GPUs 0..{n_gpus - 1}")
            return [gpu]
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {device!r}")

    @property
    def backend_name(self) -> str:
        if not self.devices:
            return "faiss-cpu"
        if len(self.devices) == 1:
            return "faiss-gpu"
        return f"faiss-gpu x{len(self.devices)}"

    @property
    def ntotal(self) -> int:
        return self._ntotal

    def add(self, emb: np.ndarray) -> None:
        """Append vectors (float16 or float32 ``[n, dim]``); their ids continue from ``ntotal``."""
        emb = _as_matrix(emb, self.dim, "embeddings")
        n, n_shards = emb.shape[0], len(self._shards)
        for s, index in enumerate(self._shards):
            lo, hi = s * n // n_shards, (s + 1) * n // n_shards
            if hi == lo:
                continue
            self._global_starts[s].append(self._ntotal + lo)
            self._local_starts[s].append(int(index.ntotal))
            for c in range(lo, hi, _ADD_CHUNK):
                part = emb[c : min(c + _ADD_CHUNK, hi)]
                index.add(np.ascontiguousarray(part, dtype=np.float32))
        self._ntotal += n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ``(scores float32 [m, k], ids int64 [m, k])``, -1/-inf padded."""
        k = _check_k(k)
        q = np.ascontiguousarray(_as_matrix(queries, self.dim, "queries"), dtype=np.float32)
        m = q.shape[0]
        if m == 0 or self._ntotal == 0:
            return _pads(m, k)
        if self.devices and min(k, max(int(ix.ntotal) for ix in self._shards)) > _FAISS_GPU_MAX_K:
            raise ValueError(
                f"faiss-gpu returns at most {_FAISS_GPU_MAX_K} neighbours per query, asked k={k}: "
                "lower the depth (or maxp_windows), or use backend 'torch'"
            )
        results: list = [None] * len(self._shards)
        errors: list[BaseException] = []

        def run(s: int) -> None:
            try:
                index = self._shards[s]
                kk = min(k, int(index.ntotal))
                if kk == 0:
                    results[s] = _pads(m, 1)
                    return
                d, i = index.search(q, kk)
                results[s] = (d, self._to_global(s, i))
            except BaseException as exc:  # re-raised in the caller's thread below
                errors.append(exc)

        if len(self._shards) == 1:
            run(0)
        else:  # faiss releases the GIL while searching: the GPUs work in parallel
            threads = [threading.Thread(target=run, args=(s,)) for s in range(len(self._shards))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return merge_topk([r[0] for r in results], [r[1] for r in results], k)

    def _to_global(self, s: int, local: np.ndarray) -> np.ndarray:
        local = np.asarray(local, dtype=np.int64)
        starts = np.asarray(self._local_starts[s], dtype=np.int64)
        gstarts = np.asarray(self._global_starts[s], dtype=np.int64)
        if len(starts) == 1 and starts[0] == 0 and gstarts[0] == 0:
            return local
        piece = np.searchsorted(starts, np.maximum(local, 0), side="right") - 1
        out = gstarts[piece] + (local - starts[piece])
        return np.where(local < 0, -1, out)


# --------------------------------------------------------------------------- torch


def _torch_device(device: str):
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but torch sees no CUDA GPU: use device 'cpu'")
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: torch sees GPUs 0..{torch.cuda.device_count() - 1}")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:<i>' or 'auto', got {device!r}")
    return dev


class TorchIndex:
    """Exact inner-product search with torch: tiled matmul + two-stage top-k (:mod:`ance.search.knn`).

    Vectors live on ``device`` (float16 on GPU, float32 on CPU) in blocks of
    ``block_size`` rows (262,144 on a GPU by default). A search takes the queries in blocks too, so
    a score tile holds at most ``2**26`` float32 scores on the CPU (256 MB) or ``1.5 * 2**30`` float16
    scores on a GPU (3 GB), keeps a running top-k per query block and merges each tile's top-k into
    it; on a GPU the winners are rescored in float32.
    """

    _SCORE_BUDGET = 1 << 26  # query rows x corpus rows per score tile (float32, CPU: 256 MB)
    # float16 tiles on a GPU (3 GB; 6,144 queries x 262,144 rows): fewer, larger GEMMs and less per-tile work.
    # 1.06x faster than 2 GB tiles, same results, GPU peak +0.4 GiB (MS MARCO shape, docs/benchmarks.md
    # 2026-12-06); 8,192 queries was 1% faster again but a tile of 2^31 scores, at int32's edge
    _SCORE_BUDGET_GPU = 3 << 29
    # rows put in merge_topk's order by torch where they were found (None: on a GPU, where it spares the host
    # a sort while the GPU waits; on a CPU numpy's integer-key sort is faster: 9.8 against 27 ms for 4,096 x 200)
    _ORDER_ON_DEVICE: bool | None = None

    def __init__(self, dim: int, device: str = "cpu", block_size: int | None = None, kernel: str = "auto"):
        if kernel not in ("auto", "tiles", "fused", "overlap"):
            raise ValueError(f"kernel must be 'auto', 'tiles', 'fused' or 'overlap', got {kernel!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if block_size is None:
            block_size = 262144 if str(device).startswith("cuda") else 65536
        if not isinstance(block_size, (int, np.integer)) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self._torch = torch
        self.dim = int(dim)
        self.block_size = int(block_size)
        self.device = _torch_device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        if kernel == "auto":  # on a GPU the overlapped tiles (1.03x the tiles, the same top-k, on an H100); the
            # fused kernel ran no faster on an H200 (docs/benchmarks.md); on a CPU "overlap" is the tiles' order
            kernel = "overlap" if self.device.type == "cuda" else "tiles"
        # "fused": ance.search.fused (score tiles never written); "tiles": ance.search.knn; "overlap": the tiles
        # with each tile's selection on a second CUDA stream behind the next GEMM (block_search's overlap)
        self.kernel = kernel
        self._blocks: list = []  # each block_size rows, the last one possibly fewer
        self._ntotal = 0

    @property
    def backend_name(self) -> str:
        return f"torch-{self.device}" + (f"-{self.kernel}" if self.kernel in ("fused", "overlap") else "")

    @property
    def query_block(self) -> int:
        """Queries :meth:`search` scores against one corpus block at a time (its score tile's width).
        A caller holding fewer queries at once (a worker's chunk) gets narrower tiles and pays the
        per-tile work more often; on a GPU it may search several chunks in one call."""
        budget = self._SCORE_BUDGET_GPU if self.device.type == "cuda" else self._SCORE_BUDGET
        return max(1, budget // max(1, min(self.block_size, self._ntotal)))

    @property
    def ntotal(self) -> int:
        return self._ntotal

    def _to_device(self, x: np.ndarray):
        torch = self._torch
        if isinstance(x, torch.Tensor):
            return x.detach().to(self.device, self.dtype)
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)

    def add(self, emb: np.ndarray) -> None:
        """Append vectors (float16 or float32 ``[n, dim]``); their ids continue from ``ntotal``."""
        torch = self._torch
        if isinstance(emb, torch.Tensor):
            if emb.ndim != 2 or emb.shape[1] != self.dim:
                raise ValueError(f"embeddings must have shape [n, {self.dim}], got {tuple(emb.shape)}")
        else:
            emb = _as_matrix(emb, self.dim, "embeddings")
        n, pos = emb.shape[0], 0
        while pos < n:
            if self._blocks and self._blocks[-1].shape[0] < self.block_size:
                room = self.block_size - self._blocks[-1].shape[0]
                piece = self._to_device(emb[pos : pos + room])
                self._blocks[-1] = torch.cat([self._blocks[-1], piece])
            else:
                piece = self._to_device(emb[pos : pos + self.block_size])
                self._blocks.append(piece)
            pos += piece.shape[0]
        self._ntotal += n

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: ``(scores float32 [m, k], ids int64 [m, k])``, -1/-inf padded. ``queries``:
        numpy, or a torch tensor, taken as it is where it already lies on the index's device (a worker's
        queries encoded on the GPU: no round trip through the host)."""
        torch = self._torch
        k = _check_k(k)
        if isinstance(queries, torch.Tensor) and queries.device != self.device:
            queries = queries.detach().cpu().numpy()
        if isinstance(queries, torch.Tensor):
            if queries.ndim != 2 or queries.shape[1] != self.dim or not queries.is_floating_point():
                raise ValueError(f"queries must be a float tensor of shape [n, {self.dim}], got "
                                 f"{queries.dtype} {tuple(queries.shape)}")
        else:
            queries = _as_matrix(queries, self.dim, "queries")
        m = queries.shape[0]
        if m == 0 or self._ntotal == 0:
            return _pads(m, k)
        kk = min(k, self._ntotal)
        q_block = self.query_block
        out_s = np.empty((m, kk), np.float32)
        out_i = np.empty((m, kk), np.int64)
        low_precision = self.dtype != torch.float32
        on_device = self.device.type == "cuda" if self._ORDER_ON_DEVICE is None else self._ORDER_ON_DEVICE
        with torch.inference_mode():
            for q0 in range(0, m, q_block):
                q = self._to_device(queries[q0 : q0 + q_block])
                best_s, best_i = self._search_block(q, kk, low_precision)
                if on_device:
                    best_s, best_i = _order_rows(best_s, best_i)
                out_s[q0 : q0 + q.shape[0]] = best_s.cpu().numpy()
                out_i[q0 : q0 + q.shape[0]] = best_i.cpu().numpy()
        if not on_device:
            return _sort_rows(out_s, out_i, k)
        if kk == k:
            return out_s, out_i
        pad_s, pad_i = _pads(m, k - kk)
        return np.concatenate([out_s, pad_s], axis=1), np.concatenate([out_i, pad_i], axis=1)

    def _search_block(self, q, k: int, rescore: bool):
        if self.kernel == "fused":
            try:
                return fused_search(q, self._blocks, k)
            except Exception as exc:  # noqa: BLE001  (a Triton that cannot compile here: the tiles, said once)
                if self.device.type != "cuda" or isinstance(exc, self._torch.cuda.OutOfMemoryError):
                    raise
                log.warning("fused k-NN kernel failed on %s (%s: %s); searching with score tiles instead",
                            self.device, type(exc).__name__, str(exc)[:200])
                self.kernel = "tiles"
        return block_search(q, self._blocks, k, rescore=rescore, overlap=self.kernel == "overlap")


# --------------------------------------------------------------------------- factory


def make_index(backend: str, dim: int, device: str = "cpu", knn_kernel: str = "auto") -> SearchIndex:
    """Build an empty index.

    ``backend``: ``"faiss"``, ``"torch"`` or ``"auto"``. ``auto`` takes faiss
    when it is importable, except when a GPU is asked for (``device`` ``cuda``
    or ``cuda:i``) and the installed faiss has none: then torch on that GPU,
    rather than an error. ``knn_kernel``: the torch index's top-k (:class:`TorchIndex` ``kernel``). For torch, ``device="auto"`` means the first CUDA GPU
    when torch has one.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"backend must be 'auto', 'faiss' or 'torch', got {backend!r}")
    if backend == "auto":
        wants_gpu = isinstance(device, str) and device.startswith("cuda")
        use_faiss = faiss_available() and (not wants_gpu or faiss_gpus() > 0)
        backend = "faiss" if use_faiss else "torch"
    if backend == "faiss":
        return FaissIndex(dim, device=device)
    return TorchIndex(dim, device=device, kernel=knn_kernel)
