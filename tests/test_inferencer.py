"""One real inferencer process against a fake broker (a ROUTER in the test).

Checks what the worker sends: hello and heartbeats (also while busy), per-chunk
``topk`` with global doc ids equal to an exact search done here, eval chunks,
``shard_done`` stats; ``shard_failed`` for a bad job without dying; weights
shipped in the job; re-hello after a broker restart; ``stop``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ance.wire.protocol import unpack_message, pack_message, unpack_array

from helpers_refresh import (MAX_FRAME, free_port, make_checkpoint, needs_scifact, spawn, stop, wait_until,
                              write_config)

pytestmark = [needs_scifact, pytest.mark.slow]


class FakeBroker:
    """A ROUTER that does the broker's side of the handshake (ance.wire.auth) with the run's secret; ``send``
    to a name goes to the route of that name's hello, tagged with the session."""

    def __init__(self, address: str, run_dir):
        import zmq

        from ance.wire.auth import ensure_secret

        self.secret = ensure_secret(run_dir)
        self.routes: dict[bytes, bytes] = {}
        self.hellos: dict[bytes, tuple] = {}
        self.tags: dict[bytes, tuple[str, str]] = {}
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.got: list[tuple[bytes, object, float]] = []

    def pump(self, timeout: float = 0.05) -> None:
        import zmq

        ms = int(timeout * 1000)
        while self.sock.poll(ms, zmq.POLLIN):
            peer, frame = self.sock.recv_multipart()
            msg = unpack_message(frame, MAX_FRAME)
            self._auth(peer, msg)
            self.got.append((peer, msg, time.time()))
            ms = 0

    def _auth(self, route: bytes, msg) -> None:
        from ance.wire.auth import broker_proof, client_proof, new_nonce, same, session_tags

        if msg.type == "hello":
            bnonce = new_nonce()
            self.hellos[route] = (msg, bnonce)
            self.sock.send_multipart([route, pack_message(
                "challenge", nonce=bnonce, proof=broker_proof(self.secret, msg.nonce, bnonce, msg.name))])
        elif msg.type == "auth" and route in self.hellos:
            hello, bnonce = self.hellos[route]
            assert same(client_proof(self.secret, hello.nonce, bnonce, hello.name, hello.role), msg.proof)
            name = hello.name.encode()
            self.routes[name] = route
            self.tags[name] = session_tags(self.secret, hello.nonce, bnonce, hello.name)

    def send(self, peer: bytes, type_: str, authenticated: bool = True, **fields) -> None:
        if authenticated:
            self.wait(lambda ms: peer in self.tags, 20, f"{peer!r} authenticated")
            self.sock.send_multipart([self.routes[peer], pack_message(type_, session=self.tags[peer][1], **fields)])
        else:  # an error to every connection (a restarted broker that knows no one)
            for route in {r for r, _, _ in self.got}:
                self.sock.send_multipart([route, pack_message(type_, **fields)])

    def wait(self, pred, timeout: float, what: str, logs=()):
        def check():
            self.pump()
            return pred([m for _, m, _ in self.got])
        return wait_until(check, timeout, what, logs)

    def of(self, type_: str, **match):
        return [m for _, m, _ in self.got if m.type == type_ and all(m.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.ctx.term()
            self.sock = None


@pytest.fixture(scope="module", params=["faiss", "torch"])
def setup(request, tmp_path_factory):
    """A worker process per backend: faiss searches chunk by chunk; the torch index scores many
    queries a tile, so the worker hands it several chunks per call (search_spans) and still streams
    one ``topk`` per chunk. The torch worker also runs its towers through ``inferencer.kernels: lean-tanh``
    (on the CPU the same numbers as transformers' forward, so the exact search below still holds)."""
    from ance.data.dataset import load_for_config as dataset_from_config
    from ance.run.config import load_config

    tmp = tmp_path_factory.mktemp("infer")
    port = free_port()
    lean = {"kernels": "lean-tanh"} if request.param == "torch" else {}
    cfg_path = write_config(tmp, port, inferencer={"backend": request.param, **lean})
    cfg = load_config(cfg_path)
    data = dataset_from_config(cfg)
    ckpt = make_checkpoint(tmp / "run", 1)
    broker = FakeBroker(cfg.broker.address, tmp / "run")
    log = tmp / "inferencer.log"
    proc = spawn("infer", str(cfg_path), "--device", "cpu", "--name", "t", log=log)
    yield cfg, data, ckpt, broker, proc, log, tmp
    stop(proc)
    broker.close()


def job_fields(cfg, data, ckpt, **kw):
    fields = dict(job_id=11, version=1, ckpt_path=str(ckpt), shard=1, n_shards=2, doc_lo=150,
                  doc_hi=len(data.corpus), depth=cfg.negatives.depth, chunk_queries=cfg.broker.chunk_queries,
                  eval=True, data_fingerprint=data.fingerprint, eval_depth=100)
    fields.update(kw)
    return fields


def welcome(broker, log):
    """Wait for the worker's hello and welcome it (each test may run alone); returns the hello."""
    hello = broker.wait(lambda ms: [m for m in ms if m.type == "hello"], 90, "hello", [log])[0]
    broker.send(b"inferencer-t", "welcome", broker_id="fake", latest_version=-1, heartbeat_s=0.25)
    return hello


def test_hello_and_heartbeats(setup):
    cfg, data, ckpt, broker, proc, log, _ = setup
    hello = welcome(broker, log)
    assert hello.role == "inferencer" and hello.name == "inferencer-t" and hello.device == "cpu"
    assert hello.data_fingerprint == data.fingerprint and hello.state == "idle"
    n = len(broker.of("heartbeat"))
    broker.wait(lambda ms: len(broker.of("heartbeat")) >= n + 3, 10, "heartbeats", [log])
    # "warming" while it tokenizes and loads the model (no shard for it yet), then "idle"
    broker.wait(lambda ms: broker.of("heartbeat")[-1].state == "idle", 90, "warmed up", [log])
    states = [m.state for m in broker.of("heartbeat")]
    assert set(states) <= {"warming", "idle"} and "warming" not in states[states.index("idle"):]


def test_job_streams_chunks_that_match_an_exact_search(setup):
    from ance.model.encode import corpus_max_tokens, encode_corpus, encode_texts
    from ance.model.biencoder import BiEncoder
    from ance.model.tokcache import TokenCache

    cfg, data, ckpt, broker, proc, log, tmp = setup
    welcome(broker, log)
    broker.got.clear()
    sent = time.time()
    broker.send(b"inferencer-t", "job", **job_fields(cfg, data, ckpt))
    done = broker.wait(lambda ms: [m for m in ms if m.type in ("shard_done", "shard_failed")], 90,
                       "shard_done", [log])[0]
    assert done.type == "shard_done", done
    st = done.stats
    assert st["n_docs"] == len(data.corpus) - 150 and all(st[k] >= 0 for k in ("load_s", "encode_s", "index_s",
                                                                                 "search_s"))
    busy = [m for _, m, t in broker.got if m.type == "heartbeat" and m.state == "busy" and t > sent]
    assert busy and busy[0].job_id == 11, "no heartbeat while busy"

    train = data.split("train")
    chunks = sorted(broker.of("topk", split="train"), key=lambda m: m.chunk)
    n_train = len(train.ids)
    assert [m.chunk for m in chunks] == list(range((n_train + 15) // 16))
    assert chunks[0].q_lo == 0 and chunks[-1].q_hi == n_train
    ids = np.concatenate([unpack_array(m.ids) for m in chunks])
    scores = np.concatenate([unpack_array(m.scores) for m in chunks])
    assert ids.shape == (n_train, cfg.negatives.depth) and ids.dtype == np.int64
    assert ((ids >= 150) & (ids < len(data.corpus))).all()
    eval_chunks = broker.of("topk", split="eval")
    assert sum(m.q_hi - m.q_lo for m in eval_chunks) == len(data.split("dev").ids)
    assert unpack_array(eval_chunks[0].ids).shape[1] == 100

    # the same search, done here
    m = cfg.model
    model = BiEncoder.load(str(ckpt), pooling=m.pooling, normalize=m.normalize, similarity=m.similarity)
    cache = TokenCache.open(data.corpus.passages(), model.tokenizer,
                            corpus_max_tokens(model.tokenizer, m.passage_max_length), tmp / "run" / "cache",
                            data.corpus.source_hash, progress=False)  # the worker's cache, reused
    emb, owner = encode_corpus(model, cache, lo=150, hi=len(data.corpus), max_length=m.passage_max_length,
                               long_doc="firstp", n_windows=1, batch_size=32, device="cpu", precision="fp32")
    q = encode_texts(model, list(train.texts), m.query_max_length, kind="query", batch_size=32, device="cpu",
                     precision="fp32")
    exact = q @ emb.T
    top = owner[np.argsort(-exact, axis=1, kind="stable")[:, :cfg.negatives.depth]]
    assert np.allclose(np.sort(scores, axis=1), np.sort(np.take_along_axis(exact, np.argsort(-exact, axis=1)[:, :30],
                                                                            axis=1), axis=1), atol=1e-4)
    agree = np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(ids, top)])
    assert agree > 0.98


def test_bad_job_fails_the_shard_and_the_worker_goes_on(setup):
    cfg, data, ckpt, broker, proc, log, _ = setup
    broker.got.clear()
    broker.send(b"inferencer-t", "job", **job_fields(cfg, data, ckpt, job_id=12, ckpt_path="/nowhere/step-000009"))
    failed = broker.wait(lambda ms: [m for m in ms if m.type == "shard_failed"], 30, "shard_failed", [log])[0]
    assert failed.job_id == 12 and "not found" in failed.reason
    broker.send(b"inferencer-t", "job", **job_fields(cfg, data, ckpt, job_id=13, data_fingerprint="0" * 16))
    failed = broker.wait(lambda ms: [m for m in ms if m.type == "shard_failed" and m.job_id == 13], 30,
                         "shard_failed 13", [log])[0]
    assert "data" in failed.reason
    assert proc.poll() is None


def test_weights_shipped_in_the_job(setup):
    from ance.run.rundir import checkpoint_files

    cfg, data, ckpt, broker, proc, log, _ = setup
    broker.got.clear()
    broker.send(b"inferencer-t", "job", **job_fields(cfg, data, ckpt, job_id=14, ckpt_path="/elsewhere/step-000001",
                                                     doc_lo=0, doc_hi=100, shard=0, eval=False,
                                                     weights=checkpoint_files(ckpt, MAX_FRAME)))
    done = broker.wait(lambda ms: [m for m in ms if m.type in ("shard_done", "shard_failed")], 60,
                       "shard_done 14", [log])[0]
    assert done.type == "shard_done" and done.job_id == 14, done
    assert not broker.of("topk", split="eval")
    ids = np.concatenate([unpack_array(m.ids) for m in broker.of("topk", job_id=14)])
    assert ids.max() < 100


def test_rehello_after_broker_restart_then_stop(setup):
    cfg, data, ckpt, broker, proc, log, tmp = setup
    broker.close()  # the broker "dies" and a new one binds the same address
    new = FakeBroker(cfg.broker.address, tmp / "run")
    try:
        new.wait(lambda ms: [m for m in ms if m.type == "heartbeat"], 20, "heartbeat at the new broker", [log])
        assert not new.of("hello")
        new.send(b"inferencer-t", "error", authenticated=False, reason="unknown peer 'inferencer-t': send hello "
                 "first", of_type="heartbeat")
        hello = new.wait(lambda ms: [m for m in ms if m.type == "hello"], 10, "re-hello", [log])[0]
        assert hello.state == "idle"
        new.send(b"inferencer-t", "stop", reason="test over")
        assert proc.wait(20) == 0
    finally:
        new.close()


def test_warm_up_builds_the_token_cache_the_first_job_uses(setup, tmp_path):
    """Before any job: the corpus is tokenized (once, on disk) and the model classes are loaded."""
    import dataclasses

    from ance.inferencer.worker import Worker
    from ance.model.biencoder import BiEncoder

    cfg, data, ckpt, *_ = setup
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "run"))
    worker = Worker(cfg, device="cpu", name="w", dataset=data)
    worker.warm_up()
    warmed = worker._cache
    assert warmed is not None and warmed.path.is_relative_to(tmp_path / "run" / "cache")
    # the checkpoint's tokenizer is the base model's: the job finds the same cache, nothing is rebuilt
    tokenizer = BiEncoder.load(str(ckpt)).tokenizer
    assert worker._token_cache(tokenizer) is warmed
    # the training queries too: tokenized once (held flat), the same table for every job
    train = worker._query_tokens("train", worker.train.texts, tokenizer)
    assert len(train) == len(worker.train.texts) and worker._query_tokens("train", worker.train.texts,
                                                                         tokenizer) is train
    first = train.take([0])[0].tolist()
    assert first == tokenizer(worker.train.texts[0], add_special_tokens=False)["input_ids"][:len(first)]


def test_host_cores_are_shared_only_for_gpu_workers_without_omp_num_threads(monkeypatch):
    from ance.inferencer.worker import share_host_cores

    assert share_host_cores("cpu") is None  # CPU workers: the launcher's OMP_NUM_THREADS decides
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert share_host_cores("cuda:0") is None  # the user's (or the launcher's) choice wins


def test_search_spans_are_whole_chunks_filling_the_index_block():
    from ance.inferencer.worker import search_spans

    assert search_spans(10, 4, None) == [(0, 4), (4, 8), (8, 10)]        # no block: chunk by chunk
    assert search_spans(10, 4, 3) == [(0, 4), (4, 8), (8, 10)]           # a block under a chunk: one chunk
    assert search_spans(10, 4, 9) == [(0, 8), (8, 10)]                   # whole chunks only
    assert search_spans(4096 * 3, 2048, 4096) == [(0, 4096), (4096, 8192), (8192, 12288)]
    assert search_spans(0, 4, 8) == []
    with pytest.raises(ValueError):
        search_spans(5, 0, 8)


def test_doc_ids_offset_where_the_owner_is_consecutive_and_gather_where_not():
    from ance.inferencer.worker import consecutive_start, doc_ids

    pos = np.array([[3, 0, -1], [1, 2, -1]])
    first_p = np.arange(100, 105)
    assert consecutive_start(first_p) == 100
    np.testing.assert_array_equal(doc_ids(pos, first_p, 100), [[103, 100, -1], [101, 102, -1]])
    for owner in (np.array([0, 2, 2, 3, 4]), np.array([7, 7, 8, 8, 9]), np.array([0, 1, 3, 2, 4])):
        assert consecutive_start(owner) is None  # MaxP windows, or any order but one run
        np.testing.assert_array_equal(doc_ids(pos, owner, None), np.where(pos >= 0, owner[np.maximum(pos, 0)], -1))
    assert consecutive_start(np.zeros(0, np.int64)) is None


@pytest.mark.parametrize("long_doc", ["firstp", "maxp"])
def test_queries_encoded_together_send_the_same_frames(long_doc, monkeypatch):
    """The worker's search with the queries encoded span by span (faiss, a CPU index) and encoded many spans
    at once then sliced (a torch index on a GPU; forced here on the CPU, in groups of two spans): the same
    topk frames, chunk by chunk, and query encoding timed apart from the k-NN."""
    from types import SimpleNamespace

    from ance.inferencer import worker as w
    from ance.model.biencoder import BiEncoder, resolve_model
    from ance.model.tokcache import FlatTokens
    from ance.search.index import TorchIndex

    model = BiEncoder.load(resolve_model("tiny-bert")).eval()
    rng = np.random.default_rng(0)
    index = TorchIndex(model.dim, device="cpu")
    index.add(rng.standard_normal((300, model.dim)).astype(np.float32))
    windows = 2 if long_doc == "maxp" else 1
    owner = np.repeat(np.arange(150, 300), 2) if long_doc == "maxp" else np.arange(150, 450)
    texts = [f"query number {i} about topic {i % 7}" for i in range(23)]
    tokens = FlatTokens.from_lists(model.tokenizer(texts, add_special_tokens=False)["input_ids"])
    job = SimpleNamespace(job_id=3, version=1, shard=0, chunk_queries=4)

    def run(together):
        sent = []
        fake = SimpleNamespace(
            cfg=SimpleNamespace(model=SimpleNamespace(long_doc=long_doc, query_max_length=16, maxp_windows=windows),
                                inferencer=SimpleNamespace(batch_size=5)),
            link=SimpleNamespace(send=lambda kind, **kw: sent.append((kind, kw))), device="cpu", precision="fp32",
            _check_stop=lambda: None, _query_tokens=lambda *a: tokens)
        fake._search_part = lambda *a: w.Worker._search_part(fake, *a)
        monkeypatch.setattr(w, "_ENCODE_QUERIES_TOGETHER", together)
        monkeypatch.setattr(w, "_QUERY_ENCODE_BYTES", 2 * model.dim * 8 * 2)  # two spans of 8 a group
        monkeypatch.setattr(TorchIndex, "query_block", 8)
        times = {"query_encode_s": 0.0, "knn_s": 0.0, "transfer_s": 0.0}
        w.Worker._search(fake, job, model, index, owner, "train", texts, 10, times)
        assert times["query_encode_s"] > 0 and times["knn_s"] > 0
        return sent

    apart, together = run(False), run(True)
    assert [kw["chunk"] for _, kw in apart] == list(range(6)) and len(together) == len(apart)
    for (_, a), (_, b) in zip(apart, together):
        assert (a["q_lo"], a["q_hi"], a["chunk"], a["n_chunks"]) == (b["q_lo"], b["q_hi"], b["chunk"], b["n_chunks"])
        assert a["ids"] == b["ids"] and a["scores"] == b["scores"]
