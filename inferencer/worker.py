"""The refresh worker: one process per GPU (or CPU), stateless between refreshes.

For a ``job`` (one shard of one refresh) it loads the checkpoint, encodes its
document range from the shared token cache, indexes it, searches the training
queries chunk by chunk (``topk`` per chunk, global doc indices), then the eval
queries when asked, then sends ``shard_done`` with its stage times
(:data:`ance.wire.protocol.SHARD_STAGES`, plus ``query_encode_s`` and ``knn_s``, the
two parts of ``search_s``, and ``shard_s``, the whole job). Anything
that goes wrong in a job becomes ``shard_failed`` (traceback in the log) and
the worker waits for the next job. Only the token cache survives a job.

Messaging runs on :class:`.link.InferencerLink`'s thread, so heartbeats go on while this
thread is deep in torch or faiss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import resource
import shutil
import signal
import tempfile
import threading
import time
import traceback
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import numpy as np
import torch

from ance.run.config import Config
from ance.data.dataset import load_for_config
from ance.run.device import describe_device, resolve_device, resolve_precision
from ance.model.encode import (corpus_max_tokens, corpus_tokens, encode_corpus, encode_token_lists, prefixed_hash,
                               query_tokens, shared_token_root)
from ance.model.inference import copy_weights, for_inference, same_architecture
from ance.run.errors import AnceError, CheckpointError, ProtocolError
from ance.wire.protocol import pack_array
from ance.run.rundir import RunDir, manifest_path
from ance.run.telemetry import MetricsWriter, prometheus_port_for
from ance.model.tokcache import FlatTokens, cache_key
from ance.search.topk import maxp_collapse

from .link import InferencerLink
from .spans import consecutive_start, doc_ids, search_spans

log = logging.getLogger(__name__)

EXIT_REFUSED = 2
# At the end of a shard, wait at most this long for the link thread to hand the topk frames to the socket
# (they stay queued after it either way; the wait only makes ``transfer_s`` mean what it says).
_FLUSH_WAIT_S = 10.0
# A torch index on a GPU: the queries encoded once for many search calls and kept on the GPU, this many bytes
# of vectors at a time (500k MiniLM queries in one go; a 4,096-dim decoder's 65k)
_QUERY_ENCODE_BYTES = 512 << 20
_ENCODE_QUERIES_TOGETHER: bool | None = None  # None: with a torch index on a GPU (tests set it on the CPU)


class JobCancelled(Exception):
    """The worker is stopping in the middle of a job."""


def share_host_cores(device: str) -> int | None:
    """On a GPU, without OMP_NUM_THREADS set: torch's threads = the cores divided by the host's GPUs.

    torch takes every core in every process by default; two GPU workers of one host then build
    their batches with 2x as many spinning threads as cores, and the slower one fell from 41 to
    19 batches/s (docs/benchmarks.md, pool scaling). Returns the count set, or None when unchanged.
    """
    if not device.startswith("cuda") or os.environ.get("OMP_NUM_THREADS"):
        return None
    n = max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // max(1, torch.cuda.device_count())))
    torch.set_num_threads(n)
    log.info("torch threads: %d (the host's cores over its GPUs; set OMP_NUM_THREADS to choose)", n)
    return n


def peak_memory(device: str) -> dict[str, int | None]:
    """Peak memory of this process: ``gpu_peak_bytes`` (torch's allocator on ``device`` since the
    last :func:`reset_peak_memory`; None on CPU) and ``host_peak_bytes`` (max RSS of the process's life)."""
    gpu = None
    if device.startswith("cuda"):
        gpu = int(torch.cuda.max_memory_allocated(device))
    return {"gpu_peak_bytes": gpu, "host_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def _safe_relpath(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if (not name or p.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in p.parts)
            or len(p.parts) > 4):
        raise ProtocolError(f"job.weights: refusing file name {name!r} (relative paths inside the checkpoint only)")
    return p


class Worker:
    """``Worker(cfg, device="cpu", name="0").run()`` serves jobs until ``stop`` or SIGTERM; returns the exit code."""

    def __init__(self, cfg: Config, device: str | None = None, name: str = "0", *, dataset=None):
        self.cfg = cfg
        self.device = resolve_device(device or cfg.inferencer.device, "--device" if device else "inferencer.device")
        self.precision = resolve_precision(cfg.inferencer.precision, self.device)
        self.name = str(name)
        self.run_dir = Path(cfg.run_dir)
        self.data = dataset if dataset is not None else load_for_config(cfg)
        self.train = self.data.split(cfg.data.train_split)
        self.eval = self.data.split(cfg.data.eval_split) if cfg.data.eval_split else None
        self.fingerprint = self.data.fingerprint
        self.device_name = describe_device(self.device)  # cuda:0 (GPU 3) under CUDA_VISIBLE_DEVICES
        self.link = InferencerLink(cfg, self.name, self.device_name, self.fingerprint)
        self.metrics = self._prometheus()
        self.jobs_done = 0
        self._cache = None
        self._lora_model = None  # a LoRA run's model: the base stays, each version swaps its adapter in
        self._compiled = None  # with inferencer.compile: the compiled model; each version's weights copied in
        self._queries: dict[tuple[str, str], Any] = {}  # (split, key) -> ance.model.tokcache.FlatTokens
        self._stop = threading.Event()
        self._stop_reason: str | None = None

    def _prometheus(self):
        """The /metrics endpoint of this worker (port base+2+i for a name ending in i), or None."""
        t = self.cfg.telemetry
        if t.prometheus_port is None:
            return None
        digits = re.search(r"(\d+)$", self.name)
        port = prometheus_port_for(t.prometheus_port, "inferencer", int(digits.group(1))) if digits else 0
        return MetricsWriter(self.run_dir, "inferencer", tensorboard=False, prometheus_port=port,
                             prometheus_addr=t.prometheus_addr)

    def _export(self, stats: dict[str, Any], version: int) -> None:
        if self.metrics is None:
            return
        self.jobs_done += 1
        encode_s = stats.get("encode_s") or 0.0
        if encode_s > 0 and stats.get("n_docs"):
            self.metrics.gauge("inferencer_docs_per_second", stats["n_docs"] / encode_s, worker=self.name)
        self.metrics.gauge("inferencer_shards_done", self.jobs_done, worker=self.name)
        self.metrics.gauge("inferencer_last_version", version, worker=self.name)
        if stats.get("shard_s"):
            self.metrics.gauge("inferencer_shard_seconds", stats["shard_s"], worker=self.name)

    # ------------------------------------------------------------ loop
    def run(self) -> int:
        self._install_signals()
        share_host_cores(self.device)
        self.link.set_warming(self.cfg.inferencer.warm_up)
        self.link.start()
        log.info("inferencer %s on %s (%s), %d train queries%s", self.name, self.device_name, self.precision,
                 len(self.train.ids), f", {len(self.eval.ids)} eval queries" if self.eval else "")
        if self.cfg.inferencer.warm_up:
            self.warm_up()
            self.link.set_warming(False)
        code = 0
        try:
            while not self._stop.is_set():
                try:
                    msg = self.link.inbox.get(timeout=0.2)
                except queue.Empty:
                    continue
                if msg is None:  # the link thread died
                    raise AnceError(f"broker link failed: {self.link.error}")
                if msg.type == "stop":
                    log.info("stop from the broker: %s", msg.reason)
                    code = EXIT_REFUSED if "fingerprint" in msg.reason else 0
                    break
                self._job(msg)
            if self._stop_reason:
                log.info("stopping: %s", self._stop_reason)
        finally:
            self.link.flush(2.0)
            self.link.close()
            if self.metrics is not None:
                self.metrics.close()
        return code

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._stop_reason = f"signal {signal.Signals(signum).name}"
            self._stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _job(self, job) -> None:
        self.link.set_busy(job.job_id)
        t0 = time.time()
        log.info("job %d: version %d shard %d/%d docs [%d, %d)", job.job_id, job.version, job.shard,
                 job.n_shards, job.doc_lo, job.doc_hi)
        try:
            stats = self.process(job)
        except JobCancelled:
            self.link.send("shard_failed", job_id=job.job_id, version=job.version, shard=job.shard,
                           reason=f"inferencer {self.name} stopping ({self._stop_reason})")
        except Exception as exc:  # any failure of a job is reported, and the worker stays up
            log.error("job %d (version %d shard %d) failed:\n%s", job.job_id, job.version, job.shard,
                      traceback.format_exc())
            self.link.send("shard_failed", job_id=job.job_id, version=job.version, shard=job.shard,
                           reason=f"{type(exc).__name__}: {exc}"[:2000])
        else:
            self.link.send("shard_done", job_id=job.job_id, version=job.version, shard=job.shard, stats=stats)
            self._export(stats, job.version)
            log.info("job %d done in %.1fs: %s", job.job_id, time.time() - t0,
                     ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items()))
        finally:
            self.link.set_busy(None)

    # ------------------------------------------------------------ one shard
    def process(self, job) -> dict[str, Any]:
        """Encode, index and search one shard, streaming ``topk``; return the stats."""
        t_job = time.perf_counter()  # load_s includes these imports on the first job, when warm_up was off
        from ance.search.index import make_index  # (see warm_up: after hello, on purpose)

        if job.data_fingerprint != self.fingerprint:
            raise AnceError(f"job for data {job.data_fingerprint}, this inferencer loaded {self.fingerprint}")
        if not 0 <= job.doc_lo < job.doc_hi <= len(self.data.corpus):
            raise AnceError(f"doc range [{job.doc_lo}, {job.doc_hi}) outside the corpus of {len(self.data.corpus)}")
        reset_peak_memory(self.device)
        m = self.cfg.model
        with self._checkpoint(job) as path:
            model = self._load_model(path)
        cache = self._token_cache(model.tokenizer, model.prompt("passage"))
        load_s = time.perf_counter() - t_job

        t = time.perf_counter()
        index = make_index(self.cfg.inferencer.backend, int(model.dim), self.device,
                           knn_kernel=self.cfg.inferencer.knn_kernel)
        # a torch index on the GPU takes the vectors where they are made: none cross to the host
        on_device = index.backend_name.startswith("torch-cuda")
        emb, owner = encode_corpus(model, cache, lo=job.doc_lo, hi=job.doc_hi, max_length=m.passage_max_length,
                                   long_doc=m.long_doc, n_windows=m.maxp_windows,
                                   batch_size=self.cfg.inferencer.batch_size, device=self.device,
                                   precision=self.precision, progress=False, on_device=on_device)
        encode_s = time.perf_counter() - t
        self._check_stop()

        t = time.perf_counter()
        index.add(emb)
        owner = np.asarray(owner, dtype=np.int64)
        n_vectors = int(emb.shape[0])
        del emb
        index_s = time.perf_counter() - t

        t = time.perf_counter()
        times = {"query_encode_s": 0.0, "knn_s": 0.0, "transfer_s": 0.0}
        self._search(job, model, index, owner, "train", self.train.texts, job.depth, times)
        if job.eval:
            if self.eval is None:
                raise AnceError("the broker asks for eval results but data.eval_split is not set here")
            self._search(job, model, index, owner, "eval", self.eval.texts,
                         job.get("eval_depth") or max(100, job.depth), times)
        # Transfer ends when the link thread has handed every topk frame to the socket.
        t_flush = time.perf_counter()
        self.link.flush(_FLUSH_WAIT_S)
        times["transfer_s"] += time.perf_counter() - t_flush
        search_s = time.perf_counter() - t - times["transfer_s"]
        return {"load_s": load_s, "encode_s": encode_s, "index_s": index_s, "search_s": search_s,
                **times, "shard_s": time.perf_counter() - t_job, "n_docs": job.doc_hi - job.doc_lo,
                "n_vectors": n_vectors, "backend": getattr(index, "backend_name", self.cfg.inferencer.backend),
                "device": self.device, "worker": self.name, **peak_memory(self.device)}

    def _search(self, job, model, index, owner: np.ndarray, split: str, texts, depth: int,
                times: dict[str, float]) -> None:
        """Search ``texts`` and send ``topk`` chunk by chunk; add the seconds of each part to ``times``.
        One search call takes as many whole chunks as the index scores at once (:func:`search_spans`)."""
        m = self.cfg.model
        maxp = m.long_doc == "maxp"
        start = None if maxp else consecutive_start(owner)
        tokens = self._query_tokens(split, texts, model.tokenizer, model.prompt("query"))
        n, chunk = len(tokens), job.chunk_queries
        n_chunks = (n + chunk - 1) // chunk
        spans = search_spans(n, chunk, getattr(index, "query_block", None))
        # a torch index on a GPU takes the queries there: encoded for many calls at once, never via the host
        on_device = str(getattr(index, "backend_name", "")).startswith("torch-cuda")
        together = on_device if _ENCODE_QUERIES_TOGETHER is None else _ENCODE_QUERIES_TOGETHER
        group = max(1, _QUERY_ENCODE_BYTES // (2 * int(model.dim) * (spans[0][1] - spans[0][0]))) if (
            together and spans) else 1
        for g in range(0, len(spans), group):
            part = spans[g:g + group]
            self._check_stop()
            t0 = time.perf_counter()
            q_part = encode_token_lists(model, tokens, np.arange(part[0][0], part[-1][1]), model.tokenizer,
                                        m.query_max_length, kind="query", batch_size=self.cfg.inferencer.batch_size,
                                        device=self.device, precision=self.precision, progress=False,
                                        on_device=on_device)
            if on_device:
                torch.cuda.synchronize(self.device)  # the encode's own time, not the first search's
            times["query_encode_s"] += time.perf_counter() - t0
            self._search_part(job, index, owner, start, split, q_part, part, depth, n_chunks, chunk, times)

    def _search_part(self, job, index, owner: np.ndarray, start: int | None, split: str, q_part, part, depth: int,
                     n_chunks: int, chunk: int, times: dict[str, float]) -> None:
        """The search calls of the spans ``part`` over their queries ``q_part`` (encoded together), each
        call's ``topk`` frames sent chunk by chunk."""
        m = self.cfg.model
        maxp = m.long_doc == "maxp"
        base = part[0][0]
        for lo, hi in part:
            self._check_stop()
            t1 = time.perf_counter()
            q = q_part[lo - base:hi - base]
            if maxp:  # windows first, then the best window per document
                scores, pos = index.search(q, depth * m.maxp_windows)
                scores, ids = maxp_collapse(scores, pos, owner, depth)
            else:
                scores, pos = index.search(q, depth)
                ids = doc_ids(pos, owner, start)
            t2 = time.perf_counter()
            for c_lo in range(lo, hi, chunk):
                c_hi = min(c_lo + chunk, hi)
                self.link.send("topk", job_id=job.job_id, version=job.version, shard=job.shard, chunk=c_lo // chunk,
                               n_chunks=n_chunks, q_lo=c_lo, q_hi=c_hi, split=split,
                               ids=pack_array(np.ascontiguousarray(ids[c_lo - lo:c_hi - lo], dtype=np.int64)),
                               scores=pack_array(np.ascontiguousarray(scores[c_lo - lo:c_hi - lo], dtype=np.float32)))
            times["knn_s"] += t2 - t1
            times["transfer_s"] += time.perf_counter() - t2

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise JobCancelled()

    # ------------------------------------------------------------ resources
    @contextlib.contextmanager
    def _checkpoint(self, job) -> Iterator[Path]:
        """The checkpoint dir: shipped weights in a temp dir, else the path (or the same step in our run dir)."""
        weights = job.get("weights")
        if weights:
            tmp = Path(tempfile.mkdtemp(prefix=f"ance-ckpt-{job.version}-"))
            try:
                for name, blob in weights.items():
                    target = tmp / _safe_relpath(name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(blob)
                yield tmp
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        given = Path(job.ckpt_path)
        for cand in (given, RunDir(self.run_dir).checkpoints / given.name):
            if manifest_path(cand).is_file():
                yield cand
                return
        raise CheckpointError(f"checkpoint {given} not found here (nor {RunDir(self.run_dir).checkpoints / given.name}); "
                              "share the run directory with the inferencers or set broker.send_weights=true")

    def _load_model(self, path: Path):
        """The model of checkpoint ``path``. A LoRA checkpoint whose adapter has the loaded one's shape
        only swaps the adapter's weights into the model kept from the last job (no reload of the base)."""
        from ance.model import lora  # transformers: see warm_up
        from ance.model.biencoder import BiEncoder

        if self._lora_model is not None and lora.same_adapter_shape(self._lora_model, path):
            lora.swap_adapter(self._lora_model, path)
            log.info("LoRA adapter of %s swapped into the loaded base", path.name)
            return self._lora_model.eval()
        fresh = BiEncoder.from_config(self.cfg.model, path)
        compiled = self._compiled
        if compiled is not None and not lora.is_lora(fresh) and same_architecture(compiled, fresh):
            copy_weights(compiled, fresh)  # the compiled towers stay: no recompiling per checkpoint
            return compiled.eval()
        model = for_inference(fresh, self.device, self.precision, self.cfg.inferencer.compile,
                              self.cfg.inferencer.kernels)
        self._lora_model = model if lora.is_lora(model) else None
        if self.cfg.inferencer.compile != "off" and self._lora_model is None:
            self._compiled = model
        return model

    def _token_cache(self, tokenizer, prefix: str = ""):
        """The run's corpus token cache (the trainer's own, :func:`ance.model.encode.corpus_tokens`), built once
        (by whichever process comes first) and kept while the tokenizer and passage prompt stay the same."""
        m = self.cfg.model
        max_tokens = corpus_max_tokens(tokenizer, m.passage_max_length, m.long_doc, m.maxp_windows)
        key = cache_key(tokenizer, max_tokens, prefixed_hash(self.data.corpus.source_hash, prefix))
        if self._cache is None or self._cache.key != key:
            t = time.perf_counter()
            self._cache = corpus_tokens(self.data.corpus, tokenizer, max_length=m.passage_max_length,
                                        long_doc=m.long_doc, n_windows=m.maxp_windows,
                                        cache_root=RunDir(self.run_dir).cache, progress=False, prefix=prefix,
                                        shared_root=shared_token_root(self.cfg))
            log.info("token cache ready in %.1fs", time.perf_counter() - t)
        return self._cache

    def _query_tokens(self, split: str, texts, tokenizer, prefix: str = "") -> FlatTokens:
        """The split's query token ids (the query prompt before each), tokenized once per tokenizer and
        prompt (queries never change in a run), held flat so each refresh builds its query batches
        without a Python loop."""
        max_length = int(self.cfg.model.query_max_length)
        key = (split, prefix, cache_key(tokenizer, max_length, f"queries:{split}:{len(texts)}"))
        if key not in self._queries:
            self._queries[key] = FlatTokens.from_lists(query_tokens(texts, tokenizer, max_length, prefix=prefix))
        return self._queries[key]

    def warm_up(self) -> None:
        """Before the first job: the heavy imports, device initialisation and the corpus token cache.

        The first checkpoint arrives while the trainer is still starting; doing the
        one-off work now keeps it out of the first refresh's latency (and out of
        the trainer's wait). Best effort: a failure here is logged and the job
        does the work instead.
        """
        t = time.perf_counter()
        try:
            # transformers and faiss are imported here, after hello, not at the top: importing
            # ance.model.biencoder and ance.search.index after torch took 13-18 s on the shared 2-core dev box (load 10),
            # which at the top would delay the worker's joining the pool; here it overlaps the
            # trainer's start-up and stays out of the first refresh (tests/test_bench_refresh.py).
            import ance.search.index  # noqa: F401
            from ance.model.biencoder import resolve_model

            # one load of the base model: the model classes' imports, the device's context and kernels,
            # and its tokenizer and prompts as every checkpoint of the run has them
            model = self._load_model(Path(resolve_model(self.cfg.model.name_or_path)))
            tokenizer, query_prompt = model.tokenizer, model.prompt("query")
            self._token_cache(tokenizer, model.prompt("passage"))
            lora_cfg = self.cfg.train.lora
            if lora_cfg.r > 0:  # the base, kept: each LoRA checkpoint only swaps its adapter in
                from ance.model import lora

                lora.apply(model, lora_cfg.r, lora_cfg.alpha, lora_cfg.dropout, lora_cfg.target_modules)
                self._lora_model = for_inference(model, self.device, self.precision, self.cfg.inferencer.compile,
                                                 self.cfg.inferencer.kernels)
            del model
            self._query_tokens("train", self.train.texts, tokenizer, query_prompt)
            if self.eval is not None:
                self._query_tokens("eval", self.eval.texts, tokenizer, query_prompt)
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
        except Exception as exc:  # noqa: BLE001 - the first job will retry and report properly
            log.warning("warm-up skipped (%s: %s); the first job does it", type(exc).__name__, exc)
            return
        log.info("warmed up in %.1fs (imports, device, token cache)", time.perf_counter() - t)
