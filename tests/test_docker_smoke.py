"""The CPU compose stack, built and run for real (docker/docker-compose.cpu.yml, configs/tiny-async-cpu.yaml).

The session fixture ``image`` runs ``docker/build-local.sh --keep-dockerd``: it installs Docker from
Debian's packages when missing, starts its own ``dockerd`` when none runs, and builds ance:0.1.0-cpu
on a local Debian base; the fixture stops that dockerd (by PID) at the end. Where Docker cannot run
(no root to install or start it, a daemon that does not come up) the smoke tests skip and say why.

Each smoke test brings the stack up under its own compose project, scrapes the published Prometheus
endpoints from the host while the run goes, waits for the trainer to exit 0, reads ``metrics.jsonl``
from the run folder (a bind mount), and ends with ``down -v``, after which nothing of the project may
be left (containers, volumes, networks). The fast tests check the files themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ance.run.config import load_config
from ance.run.rundir import RunDir
from ance.run.telemetry import prometheus_port_for
from helpers_proc import scrape
from helpers_refresh import SCIFACT
from test_compose import ance_services, compose_client, interpolate, parse

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "docker" / "build-local.sh"
CPU = REPO / "docker" / "docker-compose.cpu.yml"
REMOTE = REPO / "docker" / "docker-compose.remote.yml"
GPU = REPO / "docker" / "docker-compose.yml"
DASHBOARD = REPO / "docker" / "grafana" / "provisioning" / "dashboards" / "ance-async-gap.json"
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
IMAGE = os.environ.get("ANCE_IMAGE", "ance:0.1.0-cpu")
DATA = Path(os.environ.get("ANCE_DATA", SCIFACT.parent))
RUN = "smoke"
RUN_TIMEOUT_S = 900


def load(path: Path) -> dict:
    return interpolate(yaml.safe_load(path.read_text()), {})


# --------------------------------------------------------------------------- the files (fast)

def test_cpu_file_is_the_gpu_file_without_gpus():
    gpu, cpu = ance_services(load(GPU)), ance_services(load(CPU))
    assert set(cpu) == set(gpu)
    for name, argv in cpu.items():
        if argv[0] == "keys":
            assert argv == gpu[name]
            continue
        args = parse(argv)
        assert args.config == "configs/tiny-async-cpu.yaml", name
        load_config(REPO / args.config, list(args.overrides))  # every override is a real key
        # the same command but for the config, run name and device
        swap = {"configs/scifact-minilm.yaml": args.config, "run_dir=/runs/scifact": "run_dir=/runs/tiny",
                "cuda:0": "cpu", "train.device=cuda:0": "train.device=cpu"}
        assert [swap.get(a, a) for a in gpu[name]] == argv, name
    services = load(CPU)["services"]
    assert not any("deploy" in svc for svc in services.values())
    for name in cpu:
        assert services[name].get("ports", []) == load(GPU)["services"][name].get("ports", []), name


def test_remote_override_only_adds_send_weights_and_unshares_the_runs():
    base, over = load(CPU)["services"], load(REMOTE)["services"]
    assert over["broker"]["command"] == base["broker"]["command"] + ["broker.send_weights=true"]
    cfg = load_config(REPO / "configs/tiny-async-cpu.yaml", over["broker"]["command"][2:])
    assert cfg.broker.send_weights and cfg.broker.curve_keys == "/keys"
    inferencers = [n for n in base if n.startswith("inferencer-")]
    assert sorted(n for n in over if n != "broker") == inferencers
    volumes = [over[n]["volumes"] for n in inferencers]
    for vols in volumes:  # compose merges volumes by mount point: /runs is replaced, /keys and /data stay
        assert [v.split(":")[1] for v in vols] == ["/runs"]
    assert len({v[0] for v in volumes}) == len(volumes)
    assert {v[0].split(":")[0] for v in volumes} <= set(load(REMOTE)["volumes"])


# --------------------------------------------------------------------------- the stack (slow)

def sh(argv: list[str], timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """ance:0.1.0-cpu built by docker/build-local.sh; a dockerd it started is stopped (by PID) at the end.

    scripts/test.sh sets ANCE_DOCKERD_PIDFILE and stops that dockerd again on its own exit (pytest killed).
    """
    pidfile = os.environ.get("ANCE_DOCKERD_PIDFILE") or str(tmp_path_factory.mktemp("dockerd") / "dockerd.pid")
    try:
        done = sh(["bash", str(BUILD), "--keep-dockerd", pidfile], timeout=2400)
        reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        if done.returncode == 3:
            pytest.skip(reason)
        assert done.returncode == 0, f"docker/build-local.sh failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        print(done.stderr.strip())  # the measured times and size, in the test log
        yield IMAGE
    finally:
        sh(["bash", str(BUILD), "--stop-dockerd", pidfile], timeout=120)


def project_leftovers(project: str) -> list[str]:
    label = f"label=com.docker.compose.project={project}"
    left = []
    for kind in (["ps", "-a", "-q"], ["volume", "ls", "-q"], ["network", "ls", "-q"]):
        done = sh([DOCKER, *kind, "--filter", label], timeout=60)
        left += [f"{kind[0]} {x}" for x in done.stdout.split()]
    return left


def run_stack(tmp_path: Path, project: str, files: list[Path],
              image: str = IMAGE) -> tuple[list[dict], dict[str, float]]:
    """Up (on ``image``), scrape while the trainer runs, wait for it, down -v. Returns (metrics.jsonl events,
    scraped maxima)."""
    client = compose_client()
    assert client is not None, "docker/build-local.sh installs docker-compose; none answers"
    if not (DATA / "scifact" / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found under {DATA} (shared test data; set ANCE_DATA)")
    runs = tmp_path / "runs"
    runs.mkdir()
    runs.chmod(0o777)  # the containers run as UID 1000
    env = {**os.environ, "ANCE_DATA": str(DATA), "ANCE_RUNS": str(runs), "ANCE_RUN": RUN, "ANCE_IMAGE": image}
    compose = [*client, "-p", project, *(a for f in files for a in ("-f", str(f)))]
    ports = [prometheus_port_for(9400, "broker"), prometheus_port_for(9400, "trainer")] + \
        [prometheus_port_for(9400, "inferencer", i) for i in (0, 1)]
    seen: dict[str, float] = {}
    try:
        up = sh([*compose, "up", "-d"], timeout=600, env=env)
        assert up.returncode == 0, f"compose up failed:\n{up.stderr[-3000:]}"
        trainer = sh([*compose, "ps", "-q", "trainer"], env=env).stdout.strip()
        assert trainer, "no trainer container"
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            for port in ports:
                for name, value in scrape(port).items():
                    seen[name] = max(seen.get(name, value), value)
            state = sh([DOCKER, "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", trainer]).stdout.split()
            if state and state[0] == "exited":
                break
            assert time.monotonic() < deadline, f"the trainer still runs after {RUN_TIMEOUT_S} s"
            time.sleep(2)
        logs = sh([*compose, "logs", "--no-color", "--tail", "40"], env=env).stdout
        assert state[1] == "0", f"the trainer exited {state[1]}:\n{logs[-6000:]}"
        events = [json.loads(line) for line in RunDir(runs / RUN).metrics.read_text().splitlines() if line.strip()]
    finally:  # also after a failure above (whose error then wins over these)
        down = sh([*compose, "down", "-v", "--remove-orphans", "-t", "10"], timeout=300, env=env)
        left = project_leftovers(project)
    assert down.returncode == 0, f"compose down -v failed:\n{down.stderr[-2000:]}"
    assert left == [], f"down -v left {left}"
    return events, seen


def check_run(events: list[dict], seen: dict[str, float]) -> None:
    steps = [e for e in events if e.get("event") == "step"]
    versions = {e["negatives_version"] for e in steps if e.get("negatives_version") is not None}
    assert len(versions) >= 2, f"the trainer consumed negatives versions {sorted(versions)}; expected 2 or more"
    assert len([e for e in events if e.get("event") == "refresh"]) >= 2
    # scraped from the host while it ran: the broker saw both workers, the trainer's step and version
    assert seen.get("ance_workers_alive") == 2, seen
    assert seen.get("ance_trainer_step", 0) > 0 and seen.get("ance_negatives_version", -1) >= min(versions)
    # every metric the Grafana dashboard queries was served by some container of the stack
    wanted = set(re.findall(r"\bance_[a-z0-9_]+", DASHBOARD.read_text()))
    assert wanted <= set(seen), f"the dashboard queries metrics nothing served: {sorted(wanted - set(seen))}"


@pytest.mark.slow
def test_compose_stack_trains_with_refreshed_negatives(image, tmp_path):
    check_run(*run_stack(tmp_path, "ance-smoke", [CPU]))


@pytest.mark.slow
def test_compose_stack_inferencers_as_on_other_hosts(image, tmp_path):
    """No volume shared between inferencers and trainer: a refresh arrives only if the broker sent the weights."""
    check_run(*run_stack(tmp_path, "ance-smoke-remote", [CPU, REMOTE]))
