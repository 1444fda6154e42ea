"""The whole asynchronous loop as real processes: `ance launch`, and the three roles started by hand.

Every test runs ``configs/tiny-async-cpu.yaml`` (tiny-bert, ~1k SciFact docs,
two CPU inferencers) on free ports, with ``train.max_steps=16``,
``checkpoint_every=4`` and ``max_gap=6`` (the rule of tests/test_quickstart.py:
``C <= G < 2C``): steps 7, 11 and 15 each need a version newer than 0, 4 and 8
while the newest checkpoint is 4, 8 and 12, so versions 4, 8 and 12 are each
trained on however the refreshes are timed.

* launch: Prometheus gauges served by trainer and broker while it runs; an
  inferencer SIGKILLed in the middle of its shard is restarted, its shard
  redone, the refresh completes; afterwards the run's invariants
  (:func:`check_run`), a log per process, nothing left behind, `ance report`.
* launch + SIGINT after a checkpoint: every child gone within 10 s; then
  `ance launch --resume` continues from that checkpoint to the end.
* launch + SIGKILL of the broker: restarted, reloads the newest persisted
  version, trainer and workers re-join it, the run completes.
* `ance broker` + two `ance infer` + `ance train` by hand: same invariants.

Everything is polled from files and events with generous timeouts; no fixed sleeps.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ance.run.config import load_config, load_run_config
from ance.data.dataset import load_for_config
from ance.negatives.files import read_negatives
from ance.run.telemetry import MetricsTail, read_metrics

from helpers_proc import scrape
from helpers_refresh import free_port, needs_scifact

pytestmark = [needs_scifact, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny-async-cpu.yaml"
STEPS = 16
SCHEDULE = (f"train.max_steps={STEPS}", "train.checkpoint_every=4", "negatives.max_gap=6")  # the docstring's
RUN_TIMEOUT_S = 240.0

STEP_FIELDS = ("step", "loss", "grad_norm", "negatives_version", "gap", "wait_s")
REFRESH_FIELDS = ("version", "n_shards", "latency_first_s", "latency_all_s", "encode_docs_per_s", "search_s",
                  "overlap", "eval_ndcg@10", "eval_recall@100")
LAUNCH_LOGS = ("broker", "trainer-0", "inferencer-0", "inferencer-1")
REPORT_PNGS = ("gap.png", "refresh_latency.png", "loss.png", "eval.png")


# --------------------------------------------------------------------------- processes and files

def ance(*args: str) -> list[str]:
    return [sys.executable, "-m", "ance.cli", *map(str, args)]


def child_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": ""}


def start(argv: list[str], log: Path, **env: str) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**child_env(), **env}, cwd=str(REPO))


def free_base_port(n: int = 4) -> int:
    """A port p with p .. p+n-1 all free on loopback (Prometheus: broker +0, trainer +1, inferencers +2..)."""
    for _ in range(100):
        base = free_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports found")


def _argv(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a] or None  # zombies have no argv


def procs_of(run_dir: Path) -> dict[int, list[str]]:
    """Live processes (not zombies) whose command line mentions ``run_dir``; never this process."""
    token = str(run_dir)
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = _argv(int(entry.name))
        if argv and any(token in a for a in argv):
            found[int(entry.name)] = argv
    return found


def find_role(run_dir: Path, role: str, name: str | None = None) -> int | None:
    """The pid of the ``ance <role>`` process of this run (``--name name`` for inferencers)."""
    for pid, argv in procs_of(run_dir).items():
        if "ance.cli" not in argv or role not in argv:
            continue
        if name is not None and (argv[argv.index("--name") + 1] if "--name" in argv else None) != name:
            continue
        return pid
    return None


def kill_leftovers(run_dir: Path) -> None:
    """Test teardown: SIGKILL, by pid, whatever this test started that is still there.

    A few passes: a supervisor killed in the first one may have started a child meanwhile.
    """
    for _ in range(5):
        found = procs_of(run_dir)
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def tails(*paths: Path, n: int = 2500) -> str:
    out = []
    for p in paths:
        for f in sorted(p.glob("*.log")) if p.is_dir() else [p]:
            if f.is_file():
                out.append(f"--- {f}\n{f.read_text(errors='replace')[-n:]}")
    return "\n".join(out)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, logs: tuple[Path, ...] = (),
             interval: float = 0.1) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails(*logs)}")


def start_launch(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    run_dir = tmp_path / "run"
    log = tmp_path / "launch.log"
    proc = start(ance("launch", CONFIG, f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}",
                      *extra, "--no-progress"), log)
    return proc, run_dir, log


@pytest.fixture
def cleanup(tmp_path):
    """Whatever a failing test leaves running under tmp_path is killed (by pid) afterwards."""
    yield
    kill_leftovers(tmp_path)


# --------------------------------------------------------------------------- invariants

@functools.lru_cache(maxsize=4)
def _dataset(path: str, max_docs, max_queries, subset_seed, train_split, eval_split):
    cfg = load_config(None, [f"data.path={path}", f"data.max_docs={max_docs}", f"data.max_queries={max_queries}",
                             f"data.subset_seed={subset_seed}", f"data.train_split={train_split}",
                             f"data.eval_split={eval_split}"])
    return load_for_config(cfg)


def run_dataset(cfg):
    d = cfg.data
    path = d.path if os.path.isabs(d.path) else str(REPO / d.path)  # relative to where the roles ran
    data = _dataset(path, d.max_docs, d.max_queries, d.subset_seed, d.train_split, d.eval_split)
    return data, data.split(d.train_split)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_run(run_dir: Path, logs: tuple[Path, ...], complete_versions: bool = True) -> dict[str, Any]:
    """The invariants of a finished run; returns what the callers check further.

    ``complete_versions``: every version trained on was completed and persisted (not so when the broker
    was killed in the middle of a refresh that a newer checkpoint then replaced).
    """
    cfg = load_run_config(run_dir)
    max_gap = cfg.negatives.max_gap
    events = read_metrics(run_dir)
    steps = [e for e in events if e["event"] == "step"]
    refreshes = [e for e in events if e["event"] == "refresh"]
    where = f"\n{tails(*logs)}"

    # steps: every one logged once, with the fields of docs/design.md, the gap bounded
    assert [e["step"] for e in steps] == list(range(1, cfg.train.max_steps + 1)), where
    for e in steps:
        missing = [k for k in STEP_FIELDS if not _number(e.get(k))]
        assert not missing, f"step event without {missing}: {e}"
        assert e["gap"] == e["step"] - e["negatives_version"], e
        assert e["wait_s"] >= 0
    gaps = [e["gap"] for e in steps]
    assert max(gaps) <= max_gap, f"gap {max(gaps)} exceeds negatives.max_gap={max_gap}"
    consumed = sorted({e["negatives_version"] for e in steps} - {0})  # 0: warm-up (and the step-0 refresh)
    assert len(consumed) >= 3, f"only refreshed versions {consumed} were trained on{where}"

    # refreshes: the fields of docs/design.md; one per consumed version; the final refresh
    versions = {e["version"] for e in refreshes}
    if complete_versions:  # else (broker killed mid-refresh) a version may be trained on in part, then dropped
        assert set(consumed) <= versions, (consumed, versions)
    assert cfg.train.max_steps in versions, f"no final refresh of step {cfg.train.max_steps}: {sorted(versions)}"
    computed = [e for e in refreshes if not e.get("replayed")]  # replayed: re-streamed from disk, no timings
    assert len(computed) >= 3, computed
    for e in computed:
        missing = [k for k in REFRESH_FIELDS if k not in e]
        assert not missing, f"refresh event without {missing}: {e}"
        numeric = [k for k in REFRESH_FIELDS if k != "overlap"]
        assert all(_number(e[k]) for k in numeric), f"refresh event with a non-number among {numeric}: {e}"
        assert e["n_shards"] >= 1 and e["encode_docs_per_s"] > 0 and e["search_s"] >= 0
        assert 0 < e["latency_first_s"] <= e["latency_all_s"], e
        assert 0 <= e["eval_ndcg@10"] <= 1 and 0 <= e["eval_recall@100"] <= 1, e
        assert e["overlap"] is None or 0 <= e["overlap"] <= 1, e
    assert any(_number(e["overlap"]) for e in computed), "overlap never measured"

    # persisted negatives: complete versions only, never a positive of the query
    data, train = run_dataset(cfg)
    q_index = {q: i for i, q in enumerate(train.ids)}
    d_index = {d: i for i, d in enumerate(data.corpus.ids)}
    neg_dir = run_dir / "negatives"
    assert not list(neg_dir.glob("*.partial.tsv")), "a refresh was left half-written"
    files = sorted(neg_dir.glob("step-*.tsv"))
    on_disk = {int(f.stem.split("-")[1]) for f in files}
    assert on_disk >= (set(consumed) if complete_versions else set()) | {cfg.train.max_steps}, on_disk
    assert len(on_disk - {0}) >= 3, on_disk
    for f in files:
        header, q_idx, neg = read_negatives(f, q_index, d_index)
        assert int(header["version"]) == int(f.stem.split("-")[1])
        assert header.get("data_fingerprint") in (None, data.fingerprint)
        assert len(q_idx) == len(train.ids), f"{f}: {len(q_idx)} of {len(train.ids)} queries"
        for q, row in zip(q_idx, neg):
            clash = set(row[row >= 0].tolist()) & set(train.positives[q].tolist())
            assert not clash, f"{f}: query {train.ids[q]} has its positive(s) {clash} as negatives"
    return {"cfg": cfg, "events": events, "steps": steps, "refreshes": refreshes, "consumed": consumed}


def assert_nothing_left(run_dir: Path, within_s: float = 10.0) -> None:
    wait_for(lambda: not procs_of(run_dir), within_s,
             f"no process of {run_dir} left (still: {procs_of(run_dir)})")


# --------------------------------------------------------------------------- tests

@pytest.mark.timeout(360)
def test_launch_end_to_end(tmp_path, cleanup):
    """`ance launch`: Prometheus while running, an inferencer killed mid-shard comes back, invariants, report."""
    base = free_base_port()
    proc, run_dir, launch_log = start_launch(tmp_path, f"telemetry.prometheus_port={base}", *SCHEDULE)
    logs = (launch_log, run_dir / "logs")
    tail = MetricsTail(run_dir)
    events: list[dict] = []
    prom: dict[str, dict[str, float]] = {}
    kill: dict[str, Any] | None = None       # the current attempt: version, shard, pid, time
    interrupted: dict[str, Any] | None = None  # the attempt that hit a shard in progress
    attempts = 0
    deadline = time.time() + RUN_TIMEOUT_S
    while proc.poll() is None:
        assert time.time() < deadline, f"launch still running after {RUN_TIMEOUT_S:.0f}s\n{tails(*logs)}"
        new = tail.read()
        events += new
        # 1. Prometheus: the gap and version gauges of trainer (base+1) and broker (base+0)
        if len(prom) < 2 and any(e["event"] == "step" for e in events):
            for role, port in (("trainer", base + 1), ("broker", base)):
                samples = scrape(port, lambda _old, new: new)
                if {"ance_async_gap", "ance_negatives_version", "ance_trainer_step"} <= samples.keys():
                    prom[role] = samples
        # ... and inferencer-0's own endpoint (base+2) once it has finished a shard
        if "inferencer-0" not in prom and any(e["event"] == "shard" and e.get("state") == "done"
                                              and e.get("worker") == "inferencer-0" for e in events):
            samples = scrape(base + 2, lambda _old, new: new)
            if {"ance_inferencer_shards_done", "ance_inferencer_docs_per_second"} <= samples.keys():
                prom["inferencer-0"] = samples
        # 2. kill inferencer-1 as soon as it is handed a shard of a refresh after the first one
        for e in new:
            if e["event"] != "shard":
                continue
            if (kill is None and interrupted is None and attempts < 4 and e["state"] == "assigned"
                    and e["worker"] == "inferencer-1" and e["version"] > 0):
                pid = find_role(run_dir, "infer", "1")
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    attempts += 1
                    kill = {"version": e["version"], "shard": e["shard"], "pid": pid, "time": time.time()}
            elif kill is not None and (e["version"], e["shard"]) == (kill["version"], kill["shard"]):
                if e["state"].startswith("requeued"):
                    interrupted, kill = kill, None          # it was working on it: the kill we wanted
                elif e["state"] == "done":
                    kill = None                              # finished just before the kill: try again later
        time.sleep(0.05)
    rc = proc.wait()
    assert rc == 0, f"ance launch exited with {rc}\n{tails(*logs)}"

    # Prometheus gauges were served while running, with sane values
    max_gap = load_run_config(run_dir).negatives.max_gap
    assert set(prom) == {"trainer", "broker", "inferencer-0"}, f"gauges not served: {prom}\n{tails(*logs)}"
    assert prom.pop("inferencer-0")["ance_inferencer_shards_done"] >= 1
    for role, samples in prom.items():
        assert 0 <= samples["ance_async_gap"] <= max_gap, (role, samples)
        assert samples["ance_negatives_version"] <= samples["ance_trainer_step"], (role, samples)
    assert "ance_workers_alive" in prom["broker"]

    # the killed inferencer: restarted, re-joined the broker, and its refresh completed
    assert interrupted is not None, f"never caught inferencer-1 mid-shard ({attempts} tries)\n{tails(*logs)}"
    inf_log = (run_dir / "logs" / "inferencer-1.log").read_text()
    assert inf_log.count(" start: ") >= 2, "inferencer-1 was not restarted"
    events = read_metrics(run_dir)
    lifecycle = [e for e in events if e["event"] == "process" and e["name"] == "inferencer-1"]
    assert any(e["state"] == "exited" and e["code"] == -signal.SIGKILL for e in lifecycle), lifecycle
    assert any(e["state"] == "started" and e["restarts"] >= 1 and e["pid"] != interrupted["pid"]
               and e["time"] > interrupted["time"] for e in lifecycle), lifecycle
    rejoined = [e for e in events if e["event"] == "worker" and e["name"] == "inferencer-1"
                and e["state"] in ("joined", "rejoined") and e["time"] > interrupted["time"]]
    assert rejoined, "the restarted inferencer-1 never said hello to the broker"
    done = [e for e in events if e["event"] == "shard" and (e["version"], e["shard"], e["state"])
            == (interrupted["version"], interrupted["shard"], "done") and e["time"] > interrupted["time"]]
    assert done, f"shard {interrupted['shard']} of version {interrupted['version']} was never redone"
    assert any(e["event"] == "refresh" and e["version"] == interrupted["version"] for e in events)

    run = check_run(run_dir, logs)
    for name in LAUNCH_LOGS:
        f = run_dir / "logs" / f"{name}.log"
        assert f.is_file() and f.stat().st_size > 0, f"no log {f}"
    assert_nothing_left(run_dir)

    # `ance report`: the four PNGs, non-empty
    out = subprocess.run(ance("report", run_dir), capture_output=True, text=True, env=child_env(), cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    written = {Path(line).name: Path(line) for line in out.stdout.split() if line.endswith(".png")}
    assert set(REPORT_PNGS) <= set(written), out.stdout
    for name in REPORT_PNGS:
        data = written[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    assert len(run["consumed"]) >= 3


@pytest.mark.timeout(360)
def test_launch_survives_broker_kill(tmp_path, cleanup):
    """SIGKILL the broker mid-run: restarted, reloads the newest version, everyone re-joins, the run completes."""
    proc, run_dir, launch_log = start_launch(tmp_path, *SCHEDULE)
    logs = (launch_log, run_dir / "logs")
    tail = MetricsTail(run_dir)
    events: list[dict] = []

    def ready():
        assert proc.poll() is None, f"launch ended before the broker was killed\n{tails(*logs)}"
        events.extend(tail.read())
        versions = [e["version"] for e in events if e["event"] == "refresh"]
        step = max([e["step"] for e in events if e["event"] == "step"], default=0)
        return versions and max(versions) > 0 and step < STEPS - 4  # step 11 waits for version 8

    wait_for(ready, 200, "a refreshed version past warm-up, with steps left", logs)
    persisted = max(int(f.stem.split("-")[1]) for f in (run_dir / "negatives").glob("step-*[0-9].tsv"))
    pid = find_role(run_dir, "broker")
    assert pid is not None, procs_of(run_dir)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    rc = proc.wait(timeout=RUN_TIMEOUT_S)
    assert rc == 0, f"ance launch exited with {rc}\n{tails(*logs)}"

    # the broker came back and reloaded what was on disk
    broker_log = (run_dir / "logs" / "broker.log").read_text()
    assert broker_log.count(" start: ") == 2, tails(*logs)
    second = broker_log.rsplit(" start: ", 1)[1]
    reloaded = [int(v) for v in re.findall(r"reloaded negatives version (\d+)", second)]
    assert reloaded and reloaded[0] >= persisted, f"persisted {persisted} at the kill; second start:\n{second[:3000]}"
    # trainer and both workers said hello to the new broker (a second broker id in their logs)
    for name, pattern in (("trainer-0", r"broker (\S+) welcomes us"),
                          ("inferencer-0", r"welcomed by broker (\S+)"),
                          ("inferencer-1", r"welcomed by broker (\S+)")):
        ids = set(re.findall(pattern, (run_dir / "logs" / f"{name}.log").read_text()))
        assert len(ids) >= 2, f"{name} never re-joined the restarted broker: {ids}\n{tails(*logs)}"
    lifecycle = [e for e in read_metrics(run_dir) if e["event"] == "process" and e["name"] == "broker"]
    assert [e["state"] for e in lifecycle] == ["started", "exited", "started"], lifecycle
    assert lifecycle[1]["code"] == -signal.SIGKILL and lifecycle[2]["pid"] != pid, lifecycle
    run = check_run(run_dir, logs, complete_versions=False)
    assert any(e["time"] > killed_at for e in run["refreshes"]), "no refresh completed after the broker restart"
    assert_nothing_left(run_dir)


@pytest.mark.timeout(360)
def test_roles_started_by_hand(tmp_path, cleanup):
    """`ance broker`, two `ance infer --device cpu` and `ance train` as separate commands, one config."""
    run_dir = tmp_path / "run"
    logs_dir = tmp_path / "logs"
    common = [str(CONFIG), f"run_dir={run_dir}", f"broker.address=tcp://127.0.0.1:{free_port()}", *SCHEDULE]
    one_thread = {"OMP_NUM_THREADS": "1"}  # 2 cores, 4 processes: as `ance launch` does
    broker = start(ance("broker", *common), logs_dir / "broker.log", **one_thread)
    workers = [start(ance("infer", *common, "--device", "cpu", "--name", str(i)), logs_dir / f"inferencer-{i}.log",
                     **one_thread) for i in range(2)]
    trainer = start(ance("train", *common), logs_dir / "trainer.log", **one_thread)
    logs = (logs_dir,)
    try:
        rc = trainer.wait(timeout=RUN_TIMEOUT_S)
        assert rc == 0, f"ance train exited with {rc}\n{tails(*logs)}"
        for p in (broker, *workers):
            assert p.poll() is None, f"a server role exited on its own ({p.args})\n{tails(*logs)}"
    finally:
        for p in (trainer, broker, *workers):
            if p.poll() is None:
                p.terminate()
        codes = [p.wait(timeout=15) for p in (broker, *workers)]
    assert codes == [0, 0, 0], f"broker/inferencers on SIGTERM: {codes}\n{tails(*logs)}"
    check_run(run_dir, logs)
    assert_nothing_left(run_dir)


@pytest.mark.timeout(360)
def test_launch_ctrl_c_stops_every_child_then_resume(tmp_path, cleanup):
    """Ctrl-C to `ance launch` after a checkpoint: every child is gone within 10 s; then
    `ance launch --resume RUN_DIR`: training continues from that checkpoint.

    (One launch for both: the Ctrl-C test used to start a run of its own, 20-50 s on CI.)
    """
    from ance.trainer.checkpoint import latest_checkpoint

    steps = 12
    proc, run_dir, launch_log = start_launch(tmp_path, f"train.max_steps={steps}", *SCHEDULE[1:])
    logs = (launch_log, run_dir / "logs")
    wait_for(lambda: proc.poll() is not None or (latest_checkpoint(run_dir) or (0,))[0] >= 4, 200,
             "a checkpoint at step 4", logs)
    assert proc.poll() is None, f"launch ended before the checkpoint\n{tails(*logs)}"

    # Ctrl-C: every child (broker, trainer, both inferencers) gone within 10 s, exit code 130
    children = {pid for pid in procs_of(run_dir) if pid != proc.pid}
    roles = {a for pid in children for a in procs_of(run_dir).get(pid, []) if a in ("broker", "train", "infer")}
    assert roles == {"broker", "train", "infer"} and len(children) >= 4, procs_of(run_dir)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=15)
    assert rc == 130, f"launch exited with {rc} after SIGINT\n{tails(*logs)}"
    assert_nothing_left(run_dir, within_s=max(0.5, 10.0 - (time.time() - t0)))
    assert time.time() - t0 < 10.5

    # --resume: from the newest checkpoint to the end
    resumed_from = latest_checkpoint(run_dir)[0]
    n_before = len((run_dir / "metrics.jsonl").read_text().splitlines())

    log2 = tmp_path / "resume.log"
    proc2 = start(ance("launch", "--resume", str(run_dir), "--no-progress"), log2)
    try:
        rc = proc2.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc2.poll() is None:
            proc2.kill()
    assert rc == 0, f"resumed launch exited with {rc}\n{tails(log2, run_dir / 'logs')}"
    after = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()[n_before:]]
    step_events = [e["step"] for e in after if e.get("event") == "step"]
    assert step_events == list(range(resumed_from + 1, steps + 1)), step_events
    max_gap = load_run_config(run_dir).negatives.max_gap
    assert all(e["gap"] <= max_gap for e in after if e.get("event") == "step")
    assert any(e.get("event") == "refresh" and e.get("version") == steps for e in after), "no final refresh"
    assert "resumed from" in (run_dir / "logs" / "trainer-0.log").read_text()
    assert_nothing_left(run_dir)
