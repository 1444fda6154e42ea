"""Refresh latency end to end: checkpoint written -> every negatives chunk at the trainer, with stage times.

Starts a real broker and N real inferencer processes (``python -m ance.cli broker`` / ``infer``, the code
paths of ``ance broker`` / ``ance infer``) and plays the trainer: a DEALER that writes a checkpoint the
way the trainer does (``write_checkpoint``), announces it with the time it was written, and receives the
streamed ``negatives`` chunks and ``version_done``. The first refresh is a warm-up (process start-up,
CUDA init, token cache, first model load); the timed ones follow it (``--repeat``), so the numbers are
warm. Prints one JSON line and a markdown table (stage times: slowest shard for the worker stages,
summed over chunks for the broker's; the broker's overlap the shards' search, so they do not add up).

    # a BEIR folder (SciFact: goal <= 3 s)
    python benchmarks/bench_refresh.py --data ../shared/data/scifact --model $ANCE_DEVICE_MODEL --device cuda
    # 1M synthetic passages of 128 tokens, 100k training queries, random-initialised MiniLM (goal <= 90 s)
    python benchmarks/bench_refresh.py --synthetic-docs 1000000 --doc-tokens 128 --synthetic-queries 100000 \\
        --model-config minilm --device cuda --backend torch
    # MS MARCO-shaped (8.8M x 128 tokens, 500k queries), a BERT-base-shaped model, one worker per GPU
    python benchmarks/bench_refresh.py --msmarco-shape --model-config bert-base --device cuda --backend torch \\
        --workers 2 --batch-size 1024 --chunk-queries 4096 --timeout 1800

Synthetic mode writes a BEIR folder with placeholder texts and the token cache the inferencers look up
(``RUN_DIR/cache/tokens-<key>``) filled with random token ids, ``--doc-tokens`` per passage with the
special tokens, so nothing tokenizes a million texts; the queries are random vocabulary words, tokenized
by the inferencers as usual. This is a script, not a test (tests/test_bench_refresh.py runs it tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import MODEL_CONFIGS, build_model, write_synthetic, write_token_cache  # noqa: E402
from ance.run.rundir import RunDir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WORKER_STAGES = [("load_s", "load", "worker: checkpoint (+ token cache when cold)"),
                 ("encode_s", "encode", "worker: corpus shard"),
                 ("index_s", "index", "worker: build"),
                 ("search_s", "search", "worker: query encoding + k-NN"),
                 ("query_encode_s", "- query encode", "worker: tokenize + encode queries"),
                 ("knn_s", "- k-NN", "worker: index search"),
                 ("transfer_s", "transfer", "worker: pack topk + hand to socket")]
BROKER_STAGES = [("queue_s", "queue", "broker: written -> job start"),
                 ("merge_s", "merge", "broker: merge_topk, all chunks"),
                 ("select_s", "select", "broker: select negatives"),
                 ("persist_s", "persist", "broker: append + fsync"),
                 ("send_s", "send", "broker: negatives -> trainer")]
LATENCIES = [("latency_first_s", "**latency_first**", "trainer: written -> first chunk"),
             ("latency_all_s", "**latency_all**", "trainer: written -> last chunk"),
             ("latency_done_s", "latency_done", "trainer: written -> version_done")]


def log(msg: str) -> None:
    print(f"[bench_refresh {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- imports and processes


def ensure_importable(work: Path) -> dict[str, str]:
    """The environment for the child processes. Without an installed ``ance`` (a bare GPU machine), a
    shim package of symlinks maps ``ance.inferencer``/``trainer``/``launch`` onto this checkout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # tokenizers use every core
    try:
        import ance.inferencer.worker  # noqa: F401
        return env
    except ImportError:
        for name in [m for m in sys.modules if m == "ance" or m.startswith("ance.")]:
            del sys.modules[name]
    shim = work / "ance-shim"
    pkg = shim / "ance"
    if not pkg.is_dir():
        pkg.mkdir(parents=True)
        for item in (REPO / "ance").iterdir():
            if item.name != "__pycache__":
                (pkg / item.name).symlink_to(item)
        for role in ("inferencer", "trainer", "launch"):
            (pkg / role).symlink_to(REPO / role)
    sys.path.insert(0, str(shim))
    env["PYTHONPATH"] = os.pathsep.join([str(shim)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    log(f"ance is not installed here: importing it from {REPO} through {shim}")
    return env


def spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_path, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "ance.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=str(REPO), start_new_session=True)


def exited(procs: list[subprocess.Popen]) -> list[str]:
    """``"infer CONFIG"``-style names of the child processes that have ended."""
    return [" ".join(p.args[3:4] + p.args[-1:]) for p in procs if p.poll() is not None]


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.time() + 15
    for p in procs:
        try:
            p.wait(max(0.1, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def tails(paths: list[Path], n: int = 2500) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-n:]}" for p in paths if p.exists())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the trainer's part


class FakeTrainer:
    """The trainer's side of the protocol: hello, checkpoint announcements, negatives received."""

    def __init__(self, cfg, fingerprint: str):
        import zmq

        self.cfg = cfg
        self.fingerprint = fingerprint
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(cfg.broker.address)
        self.tags: tuple[str, str] | None = None  # the session's (ours, the broker's), after the handshake

    def send(self, type_: str, **fields: Any) -> None:
        from ance.wire.protocol import pack_message

        self.sock.send(pack_message(type_, session=self.tags[0] if self.tags else None, **fields))

    def recv(self, timeout_s: float):
        """One decoded message and its arrival time, or None."""
        from ance.wire.protocol import unpack_message

        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frame = self.sock.recv()
        return unpack_message(frame, self.cfg.broker.max_frame_bytes), time.time()

    def hello(self, timeout_s: float, logs: list[Path], procs: list[subprocess.Popen] = ()) -> None:
        """Join the broker; stop at once, with the logs' tails, if one of ``procs`` has exited meanwhile."""
        from ance.wire.auth import (broker_proof, client_proof, client_secret_path, new_nonce, read_secret, same,
                                    session_tags)

        end = time.time() + timeout_s
        while time.time() < end:
            dead = exited(procs)
            if dead:  # a broker that died at start-up never writes the secret: do not wait out the timeout
                raise SystemExit(f"exited before the trainer could join: {', '.join(dead)}\n{tails(logs)}")
            path = client_secret_path(self.cfg.run_dir)  # the broker writes RUN_DIR/run.secret as it starts
            if not path.is_file():
                time.sleep(0.2)
                continue
            secret, nonce = read_secret(path), new_nonce()
            self.send("hello", role="trainer", name="trainer", pid=os.getpid(), device="",
                      data_fingerprint=self.fingerprint, have_version=-1, nonce=nonce)
            got = self.recv(1.0)
            while got is not None:
                msg = got[0]
                if msg.type == "challenge":  # the broker proves the run's secret, then we do (ance.wire.auth)
                    if not same(broker_proof(secret, nonce, msg.nonce, "trainer"), msg.proof):
                        raise SystemExit(f"the broker could not prove the run's secret\n{tails(logs)}")
                    self.send("auth", nonce=msg.nonce, proof=client_proof(secret, nonce, msg.nonce, "trainer",
                                                                          "trainer"))
                    self.tags = session_tags(secret, nonce, msg.nonce, "trainer")  # later frames carry ours
                elif msg.type == "welcome":
                    return
                elif msg.type in ("error", "stop"):
                    raise SystemExit(f"broker refused the trainer: {msg.get('reason')}\n{tails(logs)}")
                got = self.recv(0.5)
        raise SystemExit(f"no welcome from the broker in {timeout_s:.0f}s\n{tails(logs)}")

    def refresh(self, step: int, run_dir: Path, model_dir: Path, timeout_s: float, logs: list[Path]) -> dict:
        """Write checkpoint ``step``, announce it, receive all of its negatives; the timings."""
        from ance.trainer.checkpoint import write_checkpoint

        t0 = time.time()
        path = write_checkpoint(run_dir, step, lambda d: shutil.copytree(model_dir, d, dirs_exist_ok=True), None,
                                {"bench": "refresh"})
        written = time.time()
        self.send("checkpoint", step=step, path=str(path), written_at=written)
        first = last = done_at = None
        chunks: set[int] = set()
        n_chunks = None
        deliver = 0.0
        stats: dict = {}
        n_shards = None
        while done_at is None or n_chunks is None or len(chunks) < n_chunks:
            got = self.recv(1.0)
            if got is None:
                if time.time() - written > timeout_s:
                    raise SystemExit(f"refresh of step {step}: {len(chunks)}/{n_chunks} chunks after {timeout_s:.0f}s"
                                     f"\n{tails(logs)}")
                continue
            msg, at = got
            if msg.type == "negatives" and msg.version == step:
                first = first or at
                chunks.add(msg.chunk)
                n_chunks = msg.n_chunks
                deliver = max(deliver, at - msg.sent_at)
                if len(chunks) == n_chunks:
                    last = at
            elif msg.type == "version_done" and msg.version == step:
                done_at, stats, n_shards = at, dict(msg.stats), msg.n_shards
                if stats.get("replayed"):
                    raise SystemExit(f"version {step} was replayed, not refreshed")
            elif msg.type in ("error", "stop"):
                log(f"broker says {msg.type}: {msg.get('reason')}")
        return {"version": step, "checkpoint_write_s": written - t0, "latency_first_s": first - written,
                "latency_all_s": last - written, "latency_done_s": done_at - written, "deliver_max_s": deliver,
                "n_chunks": n_chunks, "n_shards": n_shards, **stats}

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def ready_workers(run_dir: Path) -> set[str]:
    """Workers the broker has seen become ready for shards (warmed up), from its ``worker`` events."""
    path = RunDir(run_dir).metrics
    alive: set[str] = set()
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "worker":
                if ev.get("state") == "ready":
                    alive.add(ev.get("name"))
                elif str(ev.get("state")).startswith("lost"):
                    alive.discard(ev.get("name"))
    return alive


# --------------------------------------------------------------------------- report


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def median_of(runs: list[dict]) -> dict:
    out = {}
    for key in (k for k in runs[0] if k != "version"):
        vals = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[key] = statistics.median(vals)
    return out


def markdown(result: dict) -> str:
    warm, cold = result["median"], result["warmup"]
    goal = result.get("goal_s")
    rows = [f"### Refresh latency: {result['title']}", "",
            f"warm = median of {len(result['runs'])} timed refresh(es) after one warm-up refresh (cold); "
            "worker stages: slowest shard; broker stages: summed over the chunks, overlapping the search.", "",
            "| stage | what | warm s | cold s |", "|---|---|---:|---:|"]
    for key, name, what in WORKER_STAGES + BROKER_STAGES + LATENCIES:
        rows.append(f"| {name} | {what} | {_fmt(warm.get(key))} | {_fmt(cold.get(key))} |")
    last = (result["runs"] or [cold])[-1]
    if last.get("shards"):
        rows += ["", "Per shard (last refresh): seconds per stage, peak memory of each worker process "
                     "(GPU: torch's allocator; host: max RSS).", "",
                 "| shard | worker | device | docs | load | encode | docs/s | index | search | transfer | shard "
                 "| GPU peak GiB | host peak GiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in last["shards"]:
            gib = [f"{r[k] / 2**30:.2f}" if isinstance(r.get(k), (int, float)) else "-"
                   for k in ("gpu_peak_bytes", "host_peak_bytes")]
            rows.append(f"| {r['shard']} | {r.get('worker')} | {r.get('device')} | {r.get('n_docs')} | "
                        + " | ".join(_fmt(r.get(k)) for k in ("load_s", "encode_s")) + " | "
                        + (f"{r['encode_docs_per_s']:,.0f}" if r.get("encode_docs_per_s") else "-") + " | "
                        + " | ".join(_fmt(r.get(k)) for k in ("index_s", "search_s", "transfer_s", "shard_s"))
                        + f" | {gib[0]} | {gib[1]} |")
        if isinstance(last.get("broker_host_peak_bytes"), (int, float)):
            rows += ["", f"broker host peak (max RSS): {last['broker_host_peak_bytes'] / 2**30:.2f} GiB; "
                         f"benchmark (trainer side) {result.get('bench_host_peak_bytes', 0) / 2**30:.2f} GiB"]
    if goal is not None:
        ok = warm["latency_all_s"] <= goal
        rows += ["", f"latency_all {warm['latency_all_s']:.2f} s vs goal {goal:g} s: {'met' if ok else 'NOT met'}"]
    return "\n".join(rows)


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


# --------------------------------------------------------------------------- main


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_argument_group("data (one of)")
    src.add_argument("--data", default=None, help="BEIR or MS MARCO folder")
    src.add_argument("--synthetic-docs", type=int, default=None, help="synthetic corpus of this many passages")
    src.add_argument("--msmarco-shape", action="store_true",
                     help="synthetic MS MARCO passage shape: 8,800,000 passages of 128 tokens and 500,000 training "
                          "queries (sets --synthetic-docs/--synthetic-queries/--doc-tokens; pick --model-config "
                          "minilm or bert-base); memory: fp16 vectors on the GPU, queries searched in chunks of "
                          "--chunk-queries, negatives streamed per chunk; peak memory per process is reported")
    p.add_argument("--synthetic-queries", type=int, default=10_000, help="synthetic training queries")
    p.add_argument("--doc-tokens", type=int, default=128,
                   help="synthetic: tokens per passage, special tokens included (= model.passage_max_length)")
    p.add_argument("--query-words", type=int, default=16, help="synthetic: random vocabulary words per query")
    p.add_argument("--max-docs", type=int, default=None, help="--data: subset (data.max_docs)")
    p.add_argument("--max-queries", type=int, default=None, help="--data: subset (data.max_queries)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--eval-split", default=None, help="also search and evaluate this split (needs ir-measures)")
    p.add_argument("--model", default=None,
                   help="model dir or name (default: $ANCE_DEVICE_MODEL, else all-MiniLM-L6-v2); with "
                        "--model-config only its tokenizer is used")
    p.add_argument("--model-config", choices=sorted(MODEL_CONFIGS), default=None,
                   help="random-initialised BERT of this shape instead of trained weights")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir for --model-config")
    p.add_argument("--passage-max-length", type=int, default=256, help="--data: model.passage_max_length")
    p.add_argument("--query-max-length", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda (worker i gets cuda:<i mod GPUs>)")
    p.add_argument("--backend", default="auto", choices=("auto", "faiss", "torch"))
    p.add_argument("--workers", type=int, default=1, help="inferencer processes (= shards)")
    p.add_argument("--worker-threads", type=int, default=None,
                   help="OMP_NUM_THREADS of each inferencer (default: the cores divided among the workers, as "
                        "`ance launch` does; 0: leave it unset, torch then takes every core in each worker)")
    p.add_argument("--batch-size", type=int, default=256, help="inferencer.batch_size")
    p.add_argument("--chunk-queries", type=int, default=256, help="broker.chunk_queries")
    p.add_argument("--depth", type=int, default=200, help="negatives.depth (rank_window [0, depth))")
    p.add_argument("--keep", type=int, default=20, help="negatives.keep")
    p.add_argument("--repeat", type=int, default=1, help="timed refreshes after the warm-up one")
    p.add_argument("--set", nargs="*", default=[], metavar="key=value", help="more config overrides")
    p.add_argument("--goal-s", type=float, default=None,
                   help="latency_all goal to report against (default on cuda: 90 s for >= 1M synthetic docs "
                        "and 100k queries, 3 s for the whole of SciFact)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed for one refresh")
    p.add_argument("--start-timeout", type=float, default=300.0, help="seconds allowed for the processes to join")
    p.add_argument("--work-dir", default=None,
                   help="keep everything here (synthetic data is reused); default: a temp dir, removed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the result here: FILE.json the JSON (and FILE.md "
                   "its tables), any other name both in one file")
    args = p.parse_args(argv)
    if args.msmarco_shape:
        args.synthetic_docs, args.synthetic_queries, args.doc_tokens = 8_800_000, 500_000, 128
    if (args.data is None) == (args.synthetic_docs is None):
        p.error("give exactly one of --data DIR and --synthetic-docs N")
    if args.workers < 1 or args.repeat < 1:
        p.error("--workers and --repeat must be >= 1")
    return args


def make_config(args, run_dir: Path, data_path: Path, model_dir: Path):
    import yaml

    from ance.run.config import dump_config, load_config

    synthetic = args.synthetic_docs is not None
    tree = {
        "run_dir": str(run_dir), "seed": args.seed,
        "data": {"path": str(data_path), "train_split": args.train_split, "eval_split": args.eval_split,
                 "max_docs": None if synthetic else args.max_docs,
                 "max_queries": None if synthetic else args.max_queries},
        "model": {"name_or_path": str(model_dir), "query_max_length": args.query_max_length,
                  "passage_max_length": args.doc_tokens if synthetic else args.passage_max_length},
        "negatives": {"depth": args.depth, "rank_window": [0, args.depth], "keep": args.keep},
        "broker": {"address": f"tcp://127.0.0.1:{free_port()}", "chunk_queries": args.chunk_queries,
                   "heartbeat_s": 0.5, "worker_timeout_s": 60.0},
        "inferencer": {"batch_size": args.batch_size, "backend": args.backend, "device": args.device},
        "telemetry": {"tensorboard": False},
    }
    base = run_dir / "bench-base.yaml"
    base.write_text(yaml.safe_dump(tree))
    cfg = load_config(base, list(args.set))
    path = run_dir / "bench-config.yaml"
    path.write_text(dump_config(cfg))
    return cfg, path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_setup = time.time()
    # A `timeout` or a supervisor stops us with SIGTERM: stop the broker and inferencers on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    work = Path(args.work_dir).resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-refresh-"))
    work.mkdir(parents=True, exist_ok=True)
    env = ensure_importable(work)
    run_dir = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    procs: list[subprocess.Popen] = []
    trainer = None
    try:
        from transformers import AutoTokenizer

        from ance.data.dataset import load_for_config

        model_dir = build_model(args, work)
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        synthetic = args.synthetic_docs is not None
        if synthetic:
            data_path = write_synthetic(work / f"synthetic-{args.synthetic_docs}-{args.synthetic_queries}"
                                               f"-w{args.query_words}-s{args.seed}", args.synthetic_docs,
                                        args.synthetic_queries, args.query_words, tokenizer, args.seed)
        else:
            data_path = Path(args.data).resolve()
        cfg, cfg_path = make_config(args, run_dir, data_path, model_dir)
        t = time.time()
        data = load_for_config(cfg)
        n_train = len(data.split(cfg.data.train_split).ids)
        log(f"dataset: {len(data.corpus)} docs, {n_train} train queries ({time.time() - t:.1f}s)")
        cache = write_token_cache(cfg, data, tokenizer, args.seed) if synthetic else None

        logs = [run_dir / "broker.log"] + [run_dir / f"inferencer-{i}.log" for i in range(args.workers)]
        procs.append(spawn(["broker", str(cfg_path)], logs[0], env))
        n_gpus = 0
        if args.device.startswith("cuda"):
            import torch

            n_gpus = torch.cuda.device_count()
            if n_gpus == 0:
                raise SystemExit("--device cuda but torch sees no GPU")
        for i in range(args.workers):
            wenv = dict(env)
            threads = args.worker_threads if args.worker_threads is not None else max(1, (os.cpu_count() or 1)
                                                                                      // args.workers)
            if threads:
                wenv["OMP_NUM_THREADS"] = wenv["MKL_NUM_THREADS"] = str(threads)
            if args.device == "cpu":
                wenv["CUDA_VISIBLE_DEVICES"] = ""
            device = f"cuda:{i % n_gpus}" if args.device == "cuda" else args.device
            procs.append(spawn(["infer", str(cfg_path), "--device", device, "--name", str(i)], logs[1 + i], wenv))
        trainer = FakeTrainer(cfg, data.fingerprint)
        trainer.hello(args.start_timeout, logs, procs)
        end = time.time() + args.start_timeout
        while len(ready_workers(run_dir)) < args.workers:
            dead = exited(procs)
            if dead or time.time() > end:
                raise SystemExit(f"processes not ready ({'exited: ' + ', '.join(dead) if dead else 'timeout'})"
                                 f"\n{tails(logs)}")
            time.sleep(0.2)
        setup_s = time.time() - t_setup
        log(f"broker and {args.workers} inferencer(s) up; setup {setup_s:.1f}s; warm-up refresh")

        warmup = trainer.refresh(1, run_dir, model_dir, args.timeout, logs)
        log(f"warm-up: latency_all {warmup['latency_all_s']:.2f}s")
        if cache is not None:
            others = [p.name for p in (run_dir / "cache").iterdir() if p.is_dir() and p != cache]
            if others:
                raise SystemExit(f"the inferencers built their own token cache {others} instead of the synthetic "
                                 f"{cache.name}: the cache key differs")
        runs = []
        for r in range(args.repeat):
            runs.append(trainer.refresh(2 + r, run_dir, model_dir, args.timeout, logs))
            log(f"refresh {r + 1}/{args.repeat}: latency_first {runs[-1]['latency_first_s']:.2f}s "
                f"latency_all {runs[-1]['latency_all_s']:.2f}s")
        bad = [x["n_shards"] for x in [warmup] + runs if x["n_shards"] != args.workers]
        if bad:
            log(f"warning: some refreshes ran on {bad} shards, not {args.workers}")

        from ance.run.telemetry import MetricsWriter

        mw = MetricsWriter(run_dir, "trainer", tensorboard=False)  # the refresh events, as the trainer logs them
        for x in [warmup] + runs:
            mw.log("refresh", **x)
        mw.close()

        name = data_path.name if not synthetic else "synthetic"
        goal = args.goal_s
        if goal is None and args.device.startswith("cuda"):  # the goals, for its sizes on a GPU
            if synthetic and len(data.corpus) >= 1_000_000 and n_train >= 100_000:
                goal = 90.0
            elif not synthetic and "scifact" in str(data_path).lower() and not (args.max_docs or args.max_queries):
                goal = 3.0
        model_name = args.model_config and f"{args.model_config} (random init)" or model_dir.name
        title = (f"{name} {len(data.corpus):,} docs"
                 + (f" x {args.doc_tokens} tokens" if synthetic else f" (passage_max_length {args.passage_max_length})")
                 + f", {n_train:,} train queries, {model_name}, {args.device}"
                 + (f" ({gpu_name()})" if args.device.startswith("cuda") else "")
                 + f", backend {runs[-1].get('backend', args.backend)}, {args.workers} worker(s)")
        result = {"bench": "refresh", "title": title, "mode": "synthetic" if synthetic else "data",
                  "data": str(data_path), "n_docs": len(data.corpus), "n_queries": n_train,
                  "doc_tokens": args.doc_tokens if synthetic else None, "model": str(model_dir),
                  "model_config": args.model_config, "device": args.device,
                  "gpu": gpu_name() if args.device.startswith("cuda") else None, "backend": args.backend,
                  "workers": args.workers, "batch_size": cfg.inferencer.batch_size,
                  "chunk_queries": cfg.broker.chunk_queries, "depth": cfg.negatives.depth, "keep": cfg.negatives.keep,
                  "setup_s": setup_s, "goal_s": goal, "timed": "refreshes 2.. after one warm-up refresh",
                  "warmup": warmup, "runs": runs, "median": median_of(runs),
                  "bench_host_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        line = json.dumps(result, default=str)
        print(line)
        print()
        print(markdown(result))
        if args.out:  # a .json file holds the JSON alone (its tables beside it, .md); other names both
            out = Path(args.out)
            if out.suffix == ".json":
                out.write_text(line + "\n", encoding="utf-8")
                out.with_suffix(".md").write_text(markdown(result) + "\n", encoding="utf-8")
            else:
                out.write_text(line + "\n" + "\n" + markdown(result) + "\n", encoding="utf-8")
        return 0
    finally:
        if trainer is not None:
            trainer.close()
        stop_all(procs)
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
