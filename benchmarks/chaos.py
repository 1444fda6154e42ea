"""Chaos soak: the async loop under faults at random instants, invariants checked throughout (issue 28).

    python benchmarks/chaos.py --minutes 3 --seed 1 [--out DIR] [--steps 24]

Runs ``ance launch`` (tiny-bert, a SciFact subset, CPU, two inferencers) again and again until
``--minutes`` are spent, and meanwhile, every few seconds, one fault picked at random:

* ``kill_inferencer`` / ``kill_broker``: SIGKILL (the launcher restarts the role);
* ``pause``: SIGSTOP a broker or inferencer for 1-6 s, then SIGCONT;
* ``kill_trainer``: SIGKILL the trainer (the launcher ends; ``launch --resume`` continues);
* ``restart``: SIGKILL the launcher itself, then ``launch --resume``;
* ``disk_full`` (root, mount permitted): each run's directory lives on its own small tmpfs; a ballast file
  fills it to the last byte for 2-6 s, then is removed (whatever fails to write meanwhile must fail cleanly);
* ``link_cut`` (root, ``unshare --net`` and iptables): each launch runs in a private network namespace
  (loopback only); iptables there drops every packet to the broker's port for 2-8 s, then lets them through.

The last two need root (``chaos_faults.probe``); where they cannot run they are skipped and the JSON line
says why (``skipped``). A link cut drops the broker's port for every role at once: cutting one role's link
alone would need a namespace per role (the Slurm test bed's), which ``ance launch`` does not make.

Invariants, checked at every fault and at the end of each run (each breach is a *violation*):

* every complete negatives version on disk is whole (one row per train query, its seal's row count and
  SHA-256), no positive among its negatives, and at the end of the run each version whose checkpoint is
  still on disk equals a recomputation from that checkpoint (same shards, merge and seeded selection);
* no checkpoint lost or half-visible: every ``step-N`` has its manifest and model, the newest step never
  goes back;
* the gap bound: every logged step has ``gap <= negatives.max_gap``;
* the run finishes: every step up to ``train.max_steps`` logged, a final refresh, ``launch`` exit 0.

Prints one JSON line: runs, faults injected by kind, faults skipped (and why), violations (each a short text), seconds; exit 1 when
there is a violation. ``tests/test_chaos.py`` runs it (``ANCE_CHAOS_MINUTES``, default 3).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

import chaos_faults

REPO = Path(__file__).resolve().parents[1]
SCIFACT = REPO.parent / "shared" / "data" / "scifact"
FAULTS = ("kill_inferencer", "kill_broker", "pause", "kill_trainer", "restart", "disk_full", "link_cut")
WEIGHTS = (3, 2, 3, 1, 1, 1, 1)
NETNS = False  # set by main when link_cut can run: every launch then gets its own network namespace
RUN_LIMIT_S = 600.0


def write_config(run_dir: Path, steps: int, port: int, where: Path | None = None) -> Path:
    cfg = {
        "run_dir": str(run_dir), "seed": 11,
        "data": {"path": str(SCIFACT), "train_split": "train", "eval_split": "dev", "max_docs": 200,
                 "max_queries": 40},
        "model": {"name_or_path": "tiny-bert", "query_max_length": 32, "passage_max_length": 64},
        "train": {"max_steps": steps, "batch_size": 8, "chunk_size": 8, "checkpoint_every": 4,
                  "keep_checkpoints": 3, "device": "cpu", "log_every": 1},
        "negatives": {"source": "async", "warmup": "inbatch", "depth": 30, "rank_window": [0, 30], "keep": 5,
                      "max_gap": 8, "wait_timeout_s": 300},
        "broker": {"address": f"tcp://127.0.0.1:{port}", "heartbeat_s": 0.25, "worker_timeout_s": 3.0,
                   "chunk_queries": 16},
        "inferencer": {"batch_size": 32, "backend": "faiss", "device": "cpu"},
        "telemetry": {"tensorboard": False, "prometheus_port": None},
        "launch": {"inferencers": 2, "restart_backoff_s": [0.2, 0.5, 1.0], "max_restarts": 1000},
    }
    path = (where or run_dir.parent) / f"{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    with open(log, "ab") as fh:
        prefix = chaos_faults.NETNS_PREFIX if NETNS else []
        return subprocess.Popen([*prefix, sys.executable, "-m", "ance.cli", "launch", *args, "--no-progress"], stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(REPO))


def metrics(run_dir: Path) -> list[dict]:
    from ance.run.telemetry import read_metrics

    try:
        return read_metrics(run_dir / "metrics.jsonl")
    except (OSError, ValueError):
        return []


def role_pids(run_dir: Path) -> dict[str, int]:
    """Live children of the launcher by name (``broker``, ``trainer-0``, ``inferencer-0``...)."""
    pids = {}
    for e in metrics(run_dir):
        if e.get("event") == "process" and e.get("state") == "started":
            pids[e["name"]] = int(e["pid"])
    return {n: p for n, p in pids.items() if Path(f"/proc/{p}").exists() and _not_zombie(p)}


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def procs_of(run_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if str(run_dir).encode() in argv:
                found.append(int(entry.name))
    return found


def reap(run_dir: Path, within_s: float = 15.0) -> None:
    """Wait for the processes of a dead launcher to go; SIGKILL (by pid) what stays."""
    end = time.time() + within_s
    while procs_of(run_dir) and time.time() < end:
        time.sleep(0.2)
    for pid in procs_of(run_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Checker:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.newest_ckpt = -1
        self.violations: list[str] = []
        self._data = None

    def fail(self, text: str) -> None:
        self.violations.append(f"{self.run_dir.name}: {text}")

    def data(self, cfg):
        if self._data is None:
            from ance.data.dataset import load_for_config

            self._data = load_for_config(cfg)
        return self._data

    def during(self) -> None:
        from ance.run.rundir import RunDir, parse_step

        root = RunDir(self.run_dir).checkpoints
        if root.is_dir():
            for child in root.iterdir():
                step = parse_step(child.name)
                if step is None:
                    continue
                if not (child / "manifest.json").is_file():
                    # the writer renames .tmp-* to step-N only after the manifest: never half-visible
                    # (unless pruned meanwhile: pruning renames step-N away before deleting it)
                    if child.exists():
                        self.fail(f"checkpoint {child.name} visible without its manifest")
                elif not any(child.glob("*.safetensors")) and not any(child.glob("*/*.safetensors")):
                    if child.exists():
                        self.fail(f"checkpoint {child.name} has a manifest but no weights")
            steps = RunDir(self.run_dir).complete_checkpoints()
            newest = steps[-1][0] if steps else -1
            if newest < self.newest_ckpt:
                self.fail(f"newest checkpoint went back from {self.newest_ckpt} to {newest}")
            self.newest_ckpt = max(self.newest_ckpt, newest)
        for e in metrics(self.run_dir):
            if e.get("event") == "step" and e.get("gap") is not None and e["gap"] > self._max_gap():
                self.fail(f"step {e['step']}: gap {e['gap']} > negatives.max_gap")
                break

    def _max_gap(self) -> int:
        from ance.run.config import load_run_config

        return load_run_config(self.run_dir).negatives.max_gap

    def final(self, rc: int | None, recompute: bool) -> None:
        from ance.broker.seal import check_seal
        from ance.negatives.files import read_negatives
        from ance.run.config import load_run_config
        from ance.run.rundir import RunDir

        self.during()
        cfg = load_run_config(self.run_dir)
        if rc != 0:
            self.fail(f"the run did not finish (launch exit {rc})")
        steps = sorted({e["step"] for e in metrics(self.run_dir) if e.get("event") == "step"})
        if steps != list(range(1, cfg.train.max_steps + 1)):
            self.fail(f"steps logged: {len(steps)} of {cfg.train.max_steps}")
        if not any(e.get("event") == "refresh" and e.get("version") == cfg.train.max_steps
                   for e in metrics(self.run_dir)):
            self.fail("no final refresh")
        data = self.data(cfg)
        train = data.split(cfg.data.train_split)
        q_index = {q: i for i, q in enumerate(train.ids)}
        d_index = {d: i for i, d in enumerate(data.corpus.ids)}
        paths = RunDir(self.run_dir)
        if list(paths.negatives_dir.glob("*.partial.tsv")):
            self.fail("a partial negatives file left after the run")
        ckpts = dict(paths.complete_checkpoints())
        for version, path in paths.complete_negatives():
            header, q_idx, neg = read_negatives(path, q_index, d_index, keep=cfg.negatives.keep)
            bad = check_seal(path, len(q_idx), len(train.ids))
            if bad:
                self.fail(f"{path.name}: {bad}")
                continue
            for q, row in zip(q_idx, neg):
                if set(row[row >= 0].tolist()) & set(train.positives[q].tolist()):
                    self.fail(f"{path.name}: a positive among the negatives of {train.ids[q]}")
                    break
            if recompute and version in ckpts:
                want = recompute_version(cfg, data, ckpts[version], version, int(header.get("n_shards", 1)))
                got = np.full_like(want, -1)
                got[q_idx, : neg.shape[1]] = neg
                same = int((got == want).all(axis=1).sum())
                if same != len(train.ids):
                    self.fail(f"{path.name}: {same}/{len(train.ids)} rows equal a recomputation")


def recompute_version(cfg, data, ckpt: Path, version: int, n_shards: int) -> np.ndarray:
    """The negatives the broker should have selected for ``ckpt``: each shard searched as an inferencer
    does (same ranges), merged, then the seeded selection of broker/assemble.py, chunk by chunk."""
    from types import SimpleNamespace

    from ance.broker.refresh import chunk_range, n_chunks, shard_ranges
    from ance.inferencer.worker import Worker
    from ance.negatives.select import select_negatives
    from ance.search.topk import merge_topk
    from ance.wire.protocol import unpack_array

    class Capture:
        def __init__(self):
            self.chunks = collections.defaultdict(dict)

        def send(self, type_, **f):
            if type_ == "topk" and f["split"] == "train":
                self.chunks[f["chunk"]][f["shard"]] = (unpack_array(f["scores"]), unpack_array(f["ids"]))

        def flush(self, timeout):
            return True

    worker = Worker(cfg, device="cpu", name="chaos-check", dataset=data)
    worker.link = Capture()
    train = data.split(cfg.data.train_split)
    n_docs, n_train, cq = len(data.corpus), len(train.ids), cfg.broker.chunk_queries
    for shard, (lo, hi) in enumerate(shard_ranges(n_docs, n_shards)):
        job = SimpleNamespace(job_id=1, version=version, ckpt_path=str(ckpt), shard=shard, n_shards=n_shards,
                              doc_lo=lo, doc_hi=hi, depth=cfg.negatives.depth, chunk_queries=cq, eval=False,
                              data_fingerprint=data.fingerprint)
        job.get = lambda key, default=None, _j=job: getattr(_j, key, default)
        worker.process(job)
    out = np.full((n_train, cfg.negatives.keep), -1, np.int32)
    neg_cfg = cfg.negatives
    for c in range(n_chunks(n_train, cq)):
        parts = worker.link.chunks[c]
        scores, ids = merge_topk([parts[s][0] for s in sorted(parts)], [parts[s][1] for s in sorted(parts)],
                                 neg_cfg.depth)
        q_lo, q_hi = chunk_range(c, n_train, cq)
        rng = np.random.default_rng([cfg.seed, version, c])
        out[q_lo:q_hi] = select_negatives(ids, train.positives[q_lo:q_hi], rank_window=neg_cfg.rank_window,
                                          keep=neg_cfg.keep, sampling=neg_cfg.sampling, rng=rng, scores=scores,
                                          rank_decay=neg_cfg.rank_decay, score_temperature=neg_cfg.score_temperature,
                                          denoise_margin=neg_cfg.denoise_margin,
                                          denoise_ratio=neg_cfg.denoise_ratio)
    return out


def has_checkpoint(run_dir: Path) -> bool:
    from ance.run.rundir import RunDir

    return bool(RunDir(run_dir).complete_checkpoints())


def _signal(pid: int, sig: int) -> bool:
    """Send ``sig``; False when the process ended between listing and signalling (not a fault done)."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def inject(kind: str, run_dir: Path, proc: subprocess.Popen, rnd: random.Random, port: int = 0) -> str | None:
    """Do fault ``kind``; return what was done (None when its target is not running now)."""
    if kind == "disk_full":
        secs = rnd.uniform(2.0, 6.0)
        return f"disk full {secs:.1f}s ({chaos_faults.fill_disk(run_dir.parent, secs)} bytes of ballast)"
    if kind == "link_cut":
        secs = rnd.uniform(2.0, 8.0)
        return f"cut the broker's port {secs:.1f}s" if chaos_faults.cut_link(proc.pid, port, secs) else None
    pids = role_pids(run_dir)
    if kind in ("kill_inferencer", "kill_broker", "pause"):
        names = [n for n in pids if n.startswith("inferencer")] if kind == "kill_inferencer" else \
            ["broker"] if kind == "kill_broker" else [n for n in pids if n == "broker" or n.startswith("inferencer")]
        names = [n for n in names if n in pids]
        if not names:
            return None
        name = rnd.choice(names)
        if kind == "pause":
            secs = rnd.uniform(1.0, 6.0)
            if not _signal(pids[name], signal.SIGSTOP):
                return None
            time.sleep(secs)
            _signal(pids[name], signal.SIGCONT)  # it may have been killed while stopped (its parent ended)
            return f"paused {name} {secs:.1f}s"
        return f"killed {name}" if _signal(pids[name], signal.SIGKILL) else None
    if kind == "kill_trainer":
        trainers = [n for n in pids if n.startswith("trainer")]
        if not trainers:
            return None
        return "killed the trainer" if _signal(pids[trainers[0]], signal.SIGKILL) else None
    proc.kill()  # restart: the launcher itself
    return "killed the launcher"


def soak_run(i: int, out: Path, steps: int, rnd: random.Random, deadline: float, faults: collections.Counter,
             recompute: bool, skipped: dict[str, str]) -> list[str]:
    if "disk_full" in skipped:
        return _soak_run(out / f"run-{i}", out, steps, rnd, deadline, faults, recompute, skipped)
    disk = out / f"disk-{i}"  # the run's own tmpfs (the run dir inside it, so --overwrite can move it aside)
    chaos_faults.mount_disk(disk)
    try:
        return _soak_run(disk / f"run-{i}", out, steps, rnd, deadline, faults, recompute, skipped)
    finally:
        for child in disk.iterdir():  # the run (and runs moved aside) kept for a look: a run is a few MB
            if child.is_dir() and not child.is_symlink():
                shutil.copytree(child, out / child.name, symlinks=True, dirs_exist_ok=True)
        chaos_faults.unmount_disk(disk)
        disk.rmdir()


def _soak_run(run_dir: Path, out: Path, steps: int, rnd: random.Random, deadline: float,
              faults: collections.Counter, recompute: bool, skipped: dict[str, str]) -> list[str]:
    port = free_port()
    cfg_path = write_config(run_dir, steps, port, out)  # beside the runs, not on the run's (filled) disk
    log = out / f"{run_dir.name}.log"
    check = Checker(run_dir)
    proc = launch([str(cfg_path)], log)
    started = time.time()
    resumes = 0
    while True:
        time.sleep(rnd.uniform(2.0, 6.0))
        check.during()
        rc = proc.poll()
        if rc is not None:
            if rc == 0:
                break
            reap(run_dir)
            resumes += 1
            if resumes > 30 or time.time() - started > RUN_LIMIT_S:
                break
            if has_checkpoint(run_dir):
                proc = launch(["--resume", str(run_dir)], log)  # after kill_trainer / restart
            else:  # killed before its first checkpoint (a pause can delay it): nothing to resume, start again
                check = Checker(run_dir)
                proc = launch([str(cfg_path), "--overwrite"], log)
            continue
        if time.time() > deadline or time.time() - started > RUN_LIMIT_S:
            continue  # no more faults: let the run finish (the limit below ends a stuck one)
        kinds = [(k, w) for k, w in zip(FAULTS, WEIGHTS) if k not in skipped]  # skipped: not here (or not asked)
        if not kinds:
            continue
        kind = rnd.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        if kind in ("kill_trainer", "restart") and not has_checkpoint(run_dir):
            kind = "pause"  # a run resumes from a checkpoint: end the trainer only once there is one
        if inject(kind, run_dir, proc, rnd, port) is not None:
            faults[kind] += 1
    if proc.poll() is None:
        proc.kill()
    reap(run_dir)
    check.final(proc.wait(), recompute)
    return check.violations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="inject faults for this long (runs then finish)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--steps", type=int, default=24, help="train.max_steps of each run")
    p.add_argument("--out", default=None, help="folder for the runs (default: a temp folder, removed when clean)")
    p.add_argument("--no-recompute", action="store_true", help="skip recomputing versions at the end of a run")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma-separated kinds to inject (default all: {','.join(FAULTS)})")
    args = p.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        p.error(f"--faults: unknown kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}")
    rnd = random.Random(args.seed)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ance-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    deadline = t0 + args.minutes * 60
    faults: collections.Counter = collections.Counter()
    violations: list[str] = []
    global NETNS
    skipped = chaos_faults.probe(out)
    skipped.update({k: "not in --faults" for k in FAULTS if k not in args.faults.split(",")})
    NETNS = "link_cut" not in skipped
    for kind, why in skipped.items():
        print(f"chaos: {kind} skipped: {why}", file=sys.stderr)
    runs = 0
    while runs == 0 or time.time() < deadline:
        violations += soak_run(runs, out, args.steps, rnd, deadline, faults, not args.no_recompute, skipped)
        runs += 1
    print(json.dumps({"runs": runs, "faults": dict(faults), "skipped": skipped, "violations": violations,
                      "seconds": round(time.time() - t0, 1), "seed": args.seed, "out": str(out)}))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
