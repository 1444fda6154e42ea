"""A real multi-node run: `sbatch` on a Slurm cluster of network namespaces (scripts/slurm-testbed.sh).

Opt-in (root, Debian's slurm-wlm + munge, ~4 min a run on 2 busy cores): ``ANCE_SLURM_TESTBED=1``.
The module brings the testbed up once, runs the jobs, and tears it down, checking that no namespace,
daemon, job process or Slurm state is left. Nodes ance-n1..3 share this machine's file system; their
network is a bridge in 198.18.0.0/15 with no route off the machine.

* 3 nodes: broker + trainer DDP over ance-n1, ance-n2 (gloo), two inferencers on ance-n3; >= 2 refreshed
  versions trained on, the gap bounded, the broker's metrics scraped from another node, CURVE checked
  from another node (with the run's keys: challenged; without: never answered).
* scancel mid-run, then `sbatch ... --resume RUN_DIR`: the trainer continues from its newest checkpoint.
* faults: the trainer node's link flaps; an inferencer node's link goes down mid-refresh, its shard
  goes to the other inferencer node after the heartbeat timeout; the run completes, no negatives lost.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ance.run.config import load_run_config
from ance.run.telemetry import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TB = ROOT / "scripts" / "slurm-testbed.sh"
STATE = Path(os.environ.get("ANCE_SLURM_DIR", "/var/lib/ance-slurm-testbed"))
LOCAL = os.environ.get("ANCE_SLURM_LOCAL", "/var/tmp/ance-slurm-local")   # each node's own tmpfs
DATA = (ROOT / "../shared/data/scifact").resolve()
JOB_TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(os.environ.get("ANCE_SLURM_TESTBED") != "1",
                                reason="opt-in: ANCE_SLURM_TESTBED=1 (root; brings up a Slurm testbed)")

# small enough for 2 shared cores; max_gap 8 with a checkpoint every 4 steps means steps 9.. need a version
# >= 1 and steps 17.. one >= 9: at least two refreshed versions are trained on, however refreshes are timed
RUN = ["train.max_steps=20", "train.checkpoint_every=4", "negatives.max_gap=8", f"data.path={DATA}",
       "data.max_docs=600", "data.max_queries=96", "telemetry.prometheus_port=9400",
       "telemetry.prometheus_addr=0.0.0.0"]


def tb(*args: str, timeout: float = 300, check: bool = True) -> str:
    proc = subprocess.run(["bash", str(TB), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"slurm-testbed.sh {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def probe(*args: str) -> dict:
    out = tb("exec", sys.executable, str(ROOT / "tests" / "slurm_probe.py"), *args, timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def netns() -> list[str]:
    return [ln.split()[0] for ln in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.splitlines() if ln.startswith("ance-")]


def procs_mentioning(token: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if token in argv:
                found.append(f"{entry.name}: {argv[:120]}")
    return found


@pytest.fixture(scope="module")
def testbed():
    if os.geteuid() != 0:
        pytest.skip("the testbed needs root")
    tb("up", timeout=600)
    # not pytest's tmp_path: other pytest sessions on the machine prune old basetemps while jobs run
    runs = Path(tempfile.mkdtemp(prefix="ance-slurm-runs-", dir="/var/tmp"))
    yield runs
    tb("down")
    shutil.rmtree(runs, ignore_errors=True)
    # nothing left behind: namespaces, daemons, job processes, Slurm state
    assert netns() == [], netns()
    assert not STATE.exists(), f"{STATE} left behind"
    assert procs_mentioning(str(STATE)) == [], procs_mentioning(str(STATE))
    assert procs_mentioning(str(runs)) == [], procs_mentioning(str(runs))


def test_nodes_reach_only_each_other(testbed):
    """198.18.0.0/15 addresses, no default route in any node, no address of the bridge on the host."""
    for ns in ["ance-ctl", "ance-n1", "ance-n2", "ance-n3"]:
        routes = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "route"], capture_output=True,
                                text=True).stdout.split("\n")
        routes = [r for r in routes if r.strip()]
        assert len(routes) == 1 and routes[0].startswith("198.18.0.0/24 dev tb0"), (ns, routes)
        addrs = subprocess.run(["ip", "netns", "exec", ns, "ip", "-4", "-o", "addr"], capture_output=True,
                               text=True).stdout
        assert re.findall(r"inet (\S+)", addrs)[1:] and all(
            a.startswith(("127.", "198.18.")) for a in re.findall(r"inet (\S+)", addrs)), (ns, addrs)
    host = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", "ance-sbr0"], capture_output=True, text=True)
    assert "inet " not in host.stdout, host.stdout
    # a node reaches another node, and nothing beyond its /24 (no default route: ENETUNREACH at once; the
    # probe stays inside 198.18.0.0/15, the only range a test bed may name)
    ok = subprocess.run(["ip", "netns", "exec", "ance-n3", sys.executable, "-c",
                         "import socket; s=socket.socket(); s.settimeout(3); print(s.connect_ex(('198.18.0.1', 6817)))"],
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "0", ok
    off = subprocess.run(["ip", "netns", "exec", "ance-n3", sys.executable, "-c",
                          "import socket; s=socket.socket(); s.settimeout(3)\n"
                          "try: s.connect(('198.19.255.1', 80)); print('connected')\nexcept OSError as e: print(e.errno)"],
                         capture_output=True, text=True)
    assert off.stdout.strip() == "101", off   # ENETUNREACH


def submit(runs: Path, *args: str, env: str = "") -> str:
    out = tb("exec", "sbatch", "--parsable", f"--chdir={ROOT}", f"--output={runs}/slurm-%j.out",
             f"--export=ALL,ANCE={sys.executable} -m ance.cli,HF_HUB_OFFLINE=1,TOKENIZERS_PARALLELISM=false{env}",
             str(ROOT / "launch" / "slurm" / "ance.sbatch"), *args)
    return out.strip().splitlines()[-1].split(";")[0]


def job_state(job: str) -> tuple[str, str]:
    out = tb("exec", "scontrol", "-o", "show", "job", job, check=False)
    state = re.search(r"JobState=(\S+)", out)
    code = re.search(r"ExitCode=(\S+)", out)
    return (state.group(1) if state else "GONE"), (code.group(1) if code else "?")


def wait_job(job: str, runs: Path, run_dir: Path, tick=None, poll_s: float = 1.0) -> tuple[str, str]:
    deadline = time.time() + JOB_TIMEOUT_S
    seen, asked = 0, 0.0
    while True:
        if time.time() - asked >= 2.0:
            state, code = job_state(job)
            asked = time.time()
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                return state, code
        assert time.time() < deadline, f"job {job} still {state} after {JOB_TIMEOUT_S}s\n{tails(runs, run_dir)}"
        if tick is not None:
            events = read_metrics(run_dir) if (run_dir / "metrics.jsonl").is_file() else []
            tick(events[seen:], events)
            seen = len(events)
        time.sleep(poll_s)


def tails(runs: Path, run_dir: Path, n: int = 3000) -> str:
    parts = []
    for f in sorted(runs.glob("slurm-*.out")) + sorted((run_dir / "logs").glob("*.log")):
        parts.append(f"--- {f.name}\n{f.read_text(errors='replace')[-n:]}")
    return "\n".join(parts)


def check_run(run_dir: Path, first_step: int = 1) -> dict:
    """Steps first_step..max_steps each once (the last attempt), gap bounded, consumed versions on disk."""
    cfg = load_run_config(run_dir)
    events = read_metrics(run_dir)
    steps = {e["step"]: e for e in events if e["event"] == "step"}   # a resumed run re-logs steps: keep the last
    assert sorted(steps) == list(range(first_step, cfg.train.max_steps + 1)), sorted(steps)
    gaps = [e["gap"] for e in steps.values()]
    assert max(gaps) <= cfg.negatives.max_gap, f"gap {max(gaps)} > max_gap {cfg.negatives.max_gap}"
    consumed = sorted({e["negatives_version"] for e in steps.values()} - {0})
    on_disk = {int(f.stem.split("-")[1]) for f in (run_dir / "negatives").glob("step-*.tsv")}
    assert not list((run_dir / "negatives").glob("*.partial.tsv")), "a refresh was left half-written"
    assert set(consumed) <= on_disk, (consumed, on_disk)
    return {"cfg": cfg, "events": events, "steps": steps, "consumed": consumed, "gap_max": max(gaps)}


def test_three_node_run(testbed):
    runs, run_dir = testbed, testbed / "run3"
    job = submit(runs, "configs/tiny-async-cpu.yaml", f"run_dir={run_dir}", "launch.slurm.trainer_nodes=2", *RUN)
    seen: dict = {}

    def tick(new, events):
        if "curve" not in seen and (run_dir / "keys").is_dir() and any(e["event"] == "step" for e in events):
            seen["curve"] = probe("curve", "tcp://ance-n1:5555", str(run_dir / "keys"))   # from ance-ctl
        if "metrics" not in seen and any(e["event"] == "refresh" and e["version"] > 0 for e in events):
            m = probe("scrape", "http://ance-n1:9400/metrics")
            if {"ance_async_gap", "ance_negatives_version", "ance_workers_alive"} <= m.keys():
                seen["metrics"] = m

    state, code = wait_job(job, runs, run_dir, tick)
    assert (state, code) == ("COMPLETED", "0:0"), f"job {job}: {state} {code}\n{tails(runs, run_dir)}"
    r = check_run(run_dir)
    assert len(r["consumed"]) >= 2, f"refreshed versions trained on: {r['consumed']}"
    # the broker ran off loopback with the run's keys, and only key holders get answers
    cfg = r["cfg"]
    assert cfg.broker.bind == "tcp://0.0.0.0:5555" and cfg.broker.curve_keys == f"{run_dir}/keys"
    assert seen.get("curve") == {"with_keys": "challenge", "without_keys": None}, seen
    m = seen.get("metrics")
    assert m and m["ance_workers_alive"] == 2 and 0 <= m["ance_async_gap"] <= cfg.negatives.max_gap, seen
    # the placement: DDP over two nodes, both inferencers on the third
    out = "\n".join(f.read_text() for f in runs.glob(f"slurm-{job}.out"))
    assert "node ance-n1 (0 of 3) runs broker,trainer" in out and "node ance-n2 (1 of 3) runs trainer" in out
    assert "node ance-n3 (2 of 3) runs inferencer" in out
    trainer_log = (run_dir / "logs" / "trainer-0.log").read_text()
    assert "rank 0 of 2 on cpu (gloo)" in trainer_log and "rank 1 of 2 on cpu (gloo)" in trainer_log
    workers = {e["worker"] for e in r["events"] if e["event"] == "shard" and e["state"] == "done"}
    assert workers == {"inferencer-ance-n3-0", "inferencer-ance-n3-1"}, workers
    print(f"\nslurm 3-node run: job {job} {state}; steps {len(r['steps'])}, versions trained on {r['consumed']}, "
          f"max gap {r['gap_max']} (bound {cfg.negatives.max_gap}); broker metrics from ance-ctl: "
          f"{ {k: m[k] for k in sorted(m)} }; CURVE probe {seen['curve']}")


def test_scancel_then_resume(testbed):
    runs, run_dir = testbed, testbed / "resume"
    job = submit(runs, "configs/tiny-async-cpu.yaml", f"run_dir={run_dir}", "launch.slurm.trainer_nodes=2", *RUN)
    seen: dict = {}

    def tick(new, events):
        steps = [e["step"] for e in events if e["event"] == "step"]
        if "cancel" not in seen and steps and steps[-1] >= 10 and (run_dir / "checkpoints/step-000008").is_dir():
            tb("exec", "scancel", job)
            seen["cancel"] = steps[-1]

    state, code = wait_job(job, runs, run_dir, tick)
    assert state == "CANCELLED" and "cancel" in seen, f"job {job}: {state} {code} {seen}\n{tails(runs, run_dir)}"
    # scancel leaves no process of the run on any node (SIGTERM to every launcher, which stops its children)
    deadline = time.time() + 30
    while procs_mentioning(str(run_dir)) and time.time() < deadline:
        time.sleep(0.5)
    assert procs_mentioning(str(run_dir)) == [], procs_mentioning(str(run_dir))
    ckpts = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*")
                   if (p / "manifest.json").is_file())
    newest = ckpts[-1]
    n_before = len(read_metrics(run_dir))

    job2 = submit(runs, "--resume", str(run_dir))
    state, code = wait_job(job2, runs, run_dir)
    assert (state, code) == ("COMPLETED", "0:0"), f"job {job2}: {state} {code}\n{tails(runs, run_dir)}"
    after = [e["step"] for e in read_metrics(run_dir)[n_before:] if e["event"] == "step"]
    assert after == list(range(newest + 1, 21)), f"resumed steps {after[:5]}... (newest checkpoint {newest})"
    r = check_run(run_dir)
    assert f"resumed from {run_dir}/checkpoints/step-{newest:06d} at step {newest}" in \
        (run_dir / "logs" / "trainer-0.log").read_text()
    print(f"\nslurm scancel/resume: job {job} cancelled at step {seen['cancel']}, newest checkpoint {newest}; "
          f"job {job2} resumed at step {after[0]}, completed step {after[-1]}; versions trained on "
          f"{r['consumed']}, max gap {r['gap_max']}")


def test_link_faults(testbed):
    """Trainer node's link flaps; an inferencer node's link goes down mid-refresh."""
    runs, run_dir = testbed, testbed / "faults"
    job = submit(runs, "configs/tiny-async-cpu.yaml", f"run_dir={run_dir}", "launch.slurm.trainer_nodes=1",
                 "launch.slurm.cpu_inferencers=1", *RUN)
    seen: dict = {"flaps": 0, "attempts": 0, "last_cut_step": 0, "ckpts_at_flap": set()}

    def tick(new, events):
        steps = [e["step"] for e in events if e["event"] == "step"]
        if seen["flaps"] == 0 and steps and steps[-1] >= 3:        # the broker + trainer node: 3 x 2 s down
            for _ in range(3):
                tb("link", "ance-n1", "down")
                time.sleep(2.0)
                tb("link", "ance-n1", "up")
                time.sleep(1.0)
            seen["flaps"] = 3
            seen["flap_step"] = steps[-1]
            seen["ckpts_at_flap"] = {p.name for p in (run_dir / "checkpoints").glob("step-*")}
        # ance-n3's cable is pulled the moment a new checkpoint is written (its refresh is about to be split
        # over both inferencer nodes); its shard must go to ance-n2 after broker.worker_timeout_s
        cut = seen.get("cut")
        if cut is None and seen["flaps"] and "restored" not in seen and seen["attempts"] < 3:
            ckpts = {p.name for p in (run_dir / "checkpoints").glob("step-*") if (p / "manifest.json").is_file()}
            fresh = sorted(ckpts - seen["ckpts_at_flap"])
            if fresh and int(fresh[-1].split("-")[1]) > seen["last_cut_step"]:
                tb("link", "ance-n3", "down")
                step = int(fresh[-1].split("-")[1])
                seen["cut"] = cut = {"step": step, "at": time.time(), "target": None}
                seen["attempts"] += 1
                seen["last_cut_step"] = step
        for e in new:
            if cut is None or e["event"] != "shard" or e["version"] < cut["step"]:
                continue
            if cut["target"] is None and e["worker"] == "inferencer-ance-n3-0" and e["state"] == "assigned":
                cut["target"] = (e["version"], e["shard"])
            if cut["target"] == (e["version"], e["shard"]):
                cut.setdefault("after", []).append((e["state"], e["worker"]))
                if e["state"] == "done":
                    tb("link", "ance-n3", "up")
                    if e["worker"] == "inferencer-ance-n3-0":   # finished before the cut bit: try the next one
                        seen["cut"] = None
                    else:
                        seen["restored"] = time.time() - cut["at"]
        if cut is not None and "restored" not in seen and time.time() - cut["at"] > 90:
            tb("link", "ance-n3", "up")
            seen["restored"] = "timeout"

    try:
        state, code = wait_job(job, runs, run_dir, tick, poll_s=0.2)
    finally:
        tb("link", "ance-n1", "up")
        tb("link", "ance-n3", "up")
    assert (state, code) == ("COMPLETED", "0:0"), f"job {job}: {state} {code} {seen}\n{tails(runs, run_dir)}"
    cut = seen.get("cut")
    assert seen["flaps"] == 3 and cut and cut["target"], seen
    after = cut["after"]
    assert any(s.startswith("requeued") for s, _ in after), f"the cut worker's shard was not requeued: {after}"
    assert after[-1] == ("done", "inferencer-ance-n2-0"), f"the shard was not finished by the other node: {after}"
    assert seen["restored"] != "timeout", seen
    r = check_run(run_dir)
    assert len(r["consumed"]) >= 2
    print(f"\nslurm link faults: job {job} {state}; ance-n1 (broker+trainer) link down 3 x 2 s at step "
          f"{seen['flap_step']}; ance-n3 cut at checkpoint {cut['step']} (attempt {seen['attempts']}), its shard "
          f"{cut['target']}: {after}, link restored after {seen['restored']:.1f}s; steps {len(r['steps'])}, versions trained on "
          f"{r['consumed']}, max gap {r['gap_max']}")


def test_no_shared_file_system(testbed):
    """run_dir on each node's own disk: weights through the broker, keys copied beforehand; the first node
    ends the inferencer nodes through Slurm (scancel --signal=TERM JOB.STEP) and the job completes 0:0."""
    runs = testbed
    keys = runs / "keys"     # made once, "copied to every node": here on the file system they all see
    subprocess.run([sys.executable, "-m", "ance.cli", "keys", str(keys)], check=True, capture_output=True)
    run_dir = f"{LOCAL}/nofs"
    job = submit(runs, "configs/tiny-async-cpu.yaml", f"run_dir={run_dir}", "launch.slurm.shared_fs=false",
                 "launch.slurm.trainer_nodes=1", "launch.slurm.cpu_inferencers=1", f"broker.curve_keys={keys}", *RUN,
                 env=",ANCE_SRUN_WAIT=300")     # so the run's own end, not srun --wait's SIGKILL, ends them
    state, code = wait_job(job, runs, Path("/nonexistent"))
    assert (state, code) == ("COMPLETED", "0:0"), f"job {job}: {state} {code}\n{tails(runs, Path('/nonexistent'))}"
    assert not Path(run_dir).exists()          # not on this machine's shared file system
    head = runs / "nofs-head"
    tb("local", "ance-n1", "cp", "-a", run_dir, str(head))
    r = check_run(head)
    assert len(r["consumed"]) >= 2 and r["cfg"].broker.send_weights
    listing = {n: set(tb("local", n, "ls", run_dir).split()) for n in ("ance-n2", "ance-n3")}
    for n, names in listing.items():    # the inferencer nodes never saw a checkpoint directory
        assert "config.yaml" in names and "checkpoints" not in names, (n, names)
    workers = {e["worker"] for e in r["events"] if e["event"] == "shard" and e["state"] == "done"}
    assert workers == {"inferencer-ance-n2-0", "inferencer-ance-n3-0"}, workers
    print(f"\nslurm without a shared file system: job {job} {state} {code}; steps {len(r['steps'])}, versions "
          f"trained on {r['consumed']}, max gap {r['gap_max']}; inferencer nodes' run dirs: {listing}")
