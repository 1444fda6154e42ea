"""The supervisor on real processes: restarts with backoff, teardown leaves nothing behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ance.launch.supervisor import ProcSpec, Supervisor, last_error, plan


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def pids_with_arg(token: str) -> list[int]:
    """Processes whose argv holds `token`, read from /proc (no shell that would match itself)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if token.encode() in argv:
            found.append(int(entry.name))
    return found


def test_plan_cpu_and_gpu(tmp_path):
    specs = plan(tmp_path, resume=False, trainer_gpus=[], inferencer_gpus=[], n_cpu_inferencers=2)
    names = [s.name for s in specs]
    assert names == ["broker", "trainer-0", "inferencer-0", "inferencer-1"]
    assert "--run-dir" in specs[0].argv and specs[2].argv[-3:] == ["cpu", "--name", "0"]
    assert not specs[1].restart and specs[2].restart
    gpu = plan(tmp_path, resume=True, trainer_gpus=[0, 1], inferencer_gpus=[2, 3], n_cpu_inferencers=0)
    trainer = gpu[1]
    assert "torch.distributed.run" in trainer.argv and "--nproc-per-node" in trainer.argv
    assert trainer.env["CUDA_VISIBLE_DEVICES"] == "0,1" and "--resume" in trainer.argv
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu[2:]] == ["2", "3"]
    # the host's cores split between the GPU processes (2 trainer ranks + 2 inferencers), not all to each
    assert all(int(s.env["OMP_NUM_THREADS"]) == max(1, (os.cpu_count() or 1) // 4) for s in gpu[2:])
    only = plan(tmp_path, resume=False, trainer_gpus=[], inferencer_gpus=[], n_cpu_inferencers=3,
                roles=("inferencer",))
    assert [s.name for s in only] == ["inferencer-0", "inferencer-1", "inferencer-2"]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_restart_then_trainer_exit_stops_all(tmp_path):
    marker = tmp_path / "count"
    flaky = py(f"import pathlib,sys,time; p=pathlib.Path({str(marker)!r}); n=int(p.read_text()) if p.exists() else 0;"
               f" p.write_text(str(n+1)); sys.exit(3) if n < 2 else time.sleep(60)")
    # the trainer outlives the second restart, then exits 0
    specs = [ProcSpec("worker", flaky), ProcSpec("sleeper", py("import time; time.sleep(60)")),
             ProcSpec("trainer-0", py("import time; time.sleep(2.5)"), restart=False)]
    sup = Supervisor(specs, tmp_path, backoff_s=[0.2, 0.4], max_restarts=5)
    pids = {}

    def tick():
        pids.update(sup.pids())

    t0 = time.time()
    assert sup.run(tick=tick) == 0
    assert time.time() - t0 < 15
    assert int(marker.read_text()) == 3  # started three times: two crashes, one restart that stayed up
    assert all(not alive(pid) for pid in pids.values())
    log = (tmp_path / "logs" / "worker.log").read_text()
    assert log.count("start:") == 3


def test_stop_request_kills_process_groups(tmp_path):
    # a child that spawns a grandchild: both must go
    token = f"grandchild-{os.getpid()}-{time.time_ns()}"
    code = ("import subprocess,sys,time; subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)', "
            f"{token!r}]); time.sleep(60)")
    specs = [ProcSpec("parent", py(code)), ProcSpec("trainer-0", py("import time; time.sleep(60)"), restart=False)]
    sup = Supervisor(specs, tmp_path, backoff_s=[1], max_restarts=1)
    seen = {}

    def tick():
        seen.update(sup.pids())
        if time.time() - t0 > 1.0:
            sup.request_stop("test")

    t0 = time.time()
    rc = sup.run(tick=tick)
    assert rc == 130
    assert time.time() - t0 < 10
    assert all(not alive(pid) for pid in seen.values())
    # the grandchild (same process group) is gone too
    assert not [pid for pid in pids_with_arg(token) if alive(pid)]


def test_gives_up_after_max_restarts(tmp_path):
    specs = [ProcSpec("broken", py("import sys; sys.exit(1)")),
             ProcSpec("trainer-0", py("import time; time.sleep(60)"), restart=False)]
    sup = Supervisor(specs, tmp_path, backoff_s=[0.05], max_restarts=2)
    assert sup.run() == 1


def test_worker_prefix_names_remote_pools_apart(tmp_path):
    from ance.commands.launch import worker_prefix

    assert worker_prefix(None, ("broker", "trainer", "inferencer")) == ""
    assert worker_prefix(None, ("inferencer",)).endswith("-")
    specs = plan(tmp_path, resume=False, trainer_gpus=[], inferencer_gpus=[1], n_cpu_inferencers=0,
                 roles=("inferencer",), worker_prefix="hostb-")
    assert [s.name for s in specs] == ["inferencer-hostb-0"]
    assert specs[0].argv[-2:] == ["--name", "hostb-0"]


def test_children_go_when_the_launcher_is_killed_hard(tmp_path):
    token = f"orphan-{os.getpid()}-{time.time_ns()}"
    pidfile = tmp_path / "pids"
    code = (
        "import sys, time, json; from pathlib import Path\n"
        "from ance.launch.supervisor import ProcSpec, Supervisor\n"
        f"specs = [ProcSpec('worker', [sys.executable, '-c', 'import time; time.sleep(60)', {token!r}]),\n"
        "         ProcSpec('trainer-0', [sys.executable, '-c', 'import time; time.sleep(60)'], restart=False)]\n"
        f"sup = Supervisor(specs, Path({str(tmp_path)!r}), backoff_s=[1], max_restarts=1)\n"
        f"sup.run(tick=lambda: Path({str(pidfile)!r}).write_text(json.dumps(sup.pids())))\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while time.time() < deadline and not (pidfile.exists() and len(pidfile.read_text()) > 20):
        time.sleep(0.1)
    assert pids_with_arg(token), "the worker never started"
    launcher.kill()  # kill -9: no handler of the launcher runs
    launcher.wait()
    deadline = time.time() + 10
    while time.time() < deadline and [p for p in pids_with_arg(token) if alive(p)]:
        time.sleep(0.1)
    assert not [p for p in pids_with_arg(token) if alive(p)]


def test_last_error_finds_the_roles_one_line_reason(tmp_path):
    log = tmp_path / "trainer-0.log"
    assert last_error(log) is None  # no log yet
    log.write_text("INFO starting\nance train: error: old reason\nINFO more\n"
                   "ance train: error: checkpoint too large; raise broker.max_frame_bytes\nINFO bye\n")
    assert last_error(log) == "ance train: error: checkpoint too large; raise broker.max_frame_bytes"
    log.write_text("x" * 50000 + "\nINFO nothing wrong\n")
    assert last_error(log) is None  # only the tail is read, and it holds no error
