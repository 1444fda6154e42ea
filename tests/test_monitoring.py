"""The compose `monitoring` profile, checked without its images: docker/prometheus.yml by Prometheus's own
`promtool check config`, and the Grafana provisioning (datasource, dashboard provider, dashboard JSON)
against what ance serves. That the metrics are really served is checked live by tests/test_docker_smoke.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ance.run.telemetry import EVENT_COUNTERS, KNOWN_METRICS

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
PROVISIONING = DOCKER / "grafana" / "provisioning"
METRIC = re.compile(r"\bance_[a-z0-9_]+")


def served_metrics() -> set[str]:
    """Every Prometheus name ance serves: a gauge per KNOWN_METRICS entry, a ``_total`` per counter."""
    counters = {name for pairs in EVENT_COUNTERS.values() for _, name in pairs}
    return {f"ance_{n}" for n in KNOWN_METRICS if n not in counters} | {f"ance_{n}_total" for n in counters}


def test_promtool_accepts_the_prometheus_config():
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's `prometheus` package has it; scripts/test.sh unpacks it as root "
                    "and sets PROMTOOL)")
    done = subprocess.run([promtool, "check", "config", str(DOCKER / "prometheus.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"promtool check config docker/prometheus.yml:\n{done.stdout}{done.stderr}"


def test_dashboard_panels_query_served_metrics():
    served = served_metrics()
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    uids = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    dashboards = sorted((PROVISIONING / "dashboards").glob("*.json"))
    assert dashboards
    for path in dashboards:
        board = json.loads(path.read_text())
        assert board.get("uid") and board.get("title") and board["panels"], path.name
        for panel in board["panels"]:
            where = f"{path.name}, panel {panel.get('title')!r}"
            assert panel["datasource"]["uid"] in uids, f"{where}: datasource {panel['datasource']} is not provisioned"
            assert panel.get("targets"), f"{where}: no query"
            for target in panel["targets"]:
                used = set(METRIC.findall(target.get("expr", "")))
                assert used, f"{where}: query {target.get('expr')!r} names no ance metric"
                assert used <= served, f"{where}: {sorted(used - served)} is served by nothing (ance/run/telemetry.py)"


def test_dashboard_provider_reads_the_mounted_folder():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "ance.yml").read_text())["providers"]
    target = mounts["./grafana/provisioning"]
    for provider in providers:
        path = provider["options"]["path"]
        assert path.startswith(target), f"provider {provider['name']} reads {path}, outside the mount {target}"
        assert (PROVISIONING / Path(path).relative_to(target)).is_dir()
