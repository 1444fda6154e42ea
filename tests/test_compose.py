"""docker/docker-compose.yml: valid for a compose client, and every `ance ...` command in it is one ance accepts.

The image's entrypoint is ``tini -- ance``, so a service's ``command`` is the
argument list of ``ance``. Each one is parsed by the real parser
(``ance.cli.build_parser``) after substituting ``${VAR:-default}`` the way
compose does; dotted overrides are applied to the named config file (so a
misspelt key fails here, not in a container); the Prometheus ports published
match ``telemetry.prometheus_port_for`` and ``docker/prometheus.yml``. Also
``ance keys DIR --if-missing`` (the `keys` service): creates keys once, keeps
them afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ance.cli import COMMANDS, build_parser, main
from ance.run.config import load_config
from ance.run.errors import ConfigError
from ance.wire.keys import KEY_FILES, check_bind_address, load_server_keys
from ance.run.telemetry import prometheus_port_for

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "docker" / "docker-compose.yml"
PROMETHEUS = REPO / "docker" / "prometheus.yml"
ROLES = {"broker": "broker", "train": "trainer", "infer": "inferencer"}


def compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose` (v1), whichever answers."""
    for argv in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(argv[0]) is None:
            continue
        try:
            done = subprocess.run([*argv, "version"], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return argv
    return None


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3)
        if op in (":-", ":?"):
            return env.get(name) or (default if op == ":-" else "")
        if op in ("-", "?"):
            return env.get(name, default if op == "-" else "")
        return env.get(name, "")

    return _VAR.sub(sub, value)


def load_compose(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env or {})


def ance_services(compose: dict) -> dict[str, list[str]]:
    """Services running the ance image: name -> command (the arguments of `ance`)."""
    out = {}
    for name, svc in compose["services"].items():
        if str(svc.get("image", "")).startswith("ance:") or "build" in svc:
            cmd = svc.get("command")
            assert isinstance(cmd, list), f"service {name}: give `command` as a list (exec form), got {cmd!r}"
            out[name] = [str(a) for a in cmd]
    return out


def parse(argv: list[str]):
    """``ance ARGV`` through the real parser; a usage error fails the test with argparse's message."""
    parser = build_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`ance {' '.join(argv)}` is refused by ance's parser (exit {exc.code})")


# --------------------------------------------------------------------------- the compose client

def test_compose_client_accepts_the_file():
    client = compose_client()
    if client is None:
        pytest.skip("no compose client (`docker compose` or `docker-compose`); scripts/test.sh installs "
                    "docker-compose with apt when it can")
    for profile in ([], ["--profile", "monitoring"]):
        done = subprocess.run([*client, "-f", str(COMPOSE), *profile, "config"], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "ANCE_RUN": "ci-run"})
        assert done.returncode == 0, f"{' '.join(client)} config {' '.join(profile)}:\n{done.stderr}"
    resolved = yaml.safe_load(done.stdout)
    assert {"keys", "broker", "trainer", "inferencer-0", "inferencer-1", "prometheus", "grafana"} <= \
        set(resolved["services"])
    # the client's own substitution agrees with ours, and its commands parse too
    ours = ance_services(load_compose({"ANCE_RUN": "ci-run"}))
    theirs = ance_services(resolved)
    assert theirs == ours
    for argv in theirs.values():
        parse(argv)


# --------------------------------------------------------------------------- the commands

def test_interpolation():
    env = {"A": "x", "E": ""}
    assert interpolate("${A:-d} ${B:-d} ${E:-d} ${E-d} $A $$A ${B}", env) == "x d d  x $A "


@pytest.mark.parametrize("env", [{}, {"ANCE_CONFIG": "configs/tiny-async-cpu.yaml", "ANCE_RUN": "other"}],
                         ids=["defaults", "set"])
def test_every_ance_command_parses(env):
    services = ance_services(load_compose(env))
    assert {"keys", "broker", "trainer", "inferencer-0", "inferencer-1"} <= set(services)
    for name, argv in services.items():
        assert argv and argv[0] in COMMANDS, f"service {name}: `ance {argv[0] if argv else ''}` is no subcommand"
        args = parse(argv)
        assert args.command == argv[0]
        if getattr(args, "config", None) is None or "=" in args.config:
            continue
        # the config the image holds (configs/ is copied into its working dir), with the service's overrides
        config = REPO / args.config
        assert config.is_file(), f"service {name}: {args.config} is not in the repository"
        try:
            cfg = load_config(config, list(args.overrides))
        except ConfigError as exc:
            pytest.fail(f"service {name}: {exc}")
        if argv[0] == "broker":
            check_bind_address(cfg.broker.bind or cfg.broker.address, cfg.broker.curve_keys)


def test_services_agree_with_each_other():
    compose = load_compose()
    services = ance_services(compose)
    cfgs = {}
    for name, argv in services.items():
        args = parse(argv)
        if argv[0] in ROLES:
            cfgs[name] = (args, load_config(REPO / args.config, list(args.overrides)))
    assert {a.command for a, _ in cfgs.values()} == set(ROLES)
    # one run: same config file, run dir, data, broker and keys everywhere
    same = {(a.config, c.run_dir, c.data.path, c.broker.address, c.broker.curve_keys) for a, c in cfgs.values()}
    assert len(same) == 1, same
    keys_cmd = parse(services["keys"])
    assert keys_cmd.if_missing and keys_cmd.words == [next(iter(same))[4]]
    # the broker's address names the broker service
    host = re.match(r"tcp://([^:]+):", next(iter(same))[3]).group(1)
    assert host in compose["services"]
    # inferencer names are unique
    names = [a.name for a, _ in cfgs.values() if a.command == "infer"]
    assert len(names) == len(set(names)) == 2

    # Prometheus: each role serves on base + offset, on all interfaces, published as such, and scraped there
    scraped = set()
    for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]:
        for group in job["static_configs"]:
            scraped |= set(group["targets"])
    for name, (args, cfg) in cfgs.items():
        t = cfg.telemetry
        assert t.prometheus_port is not None and t.prometheus_addr == "0.0.0.0", name
        role = ROLES[args.command]
        port = prometheus_port_for(t.prometheus_port, role, int(args.name) if role == "inferencer" else 0)
        published = {str(p).split(":")[-1] for p in compose["services"][name].get("ports", [])}
        assert str(port) in published, f"service {name} serves metrics on {port}, publishes {published}"
        assert f"{name}:{port}" in scraped, f"prometheus.yml does not scrape {name}:{port}"


def test_gpu_services_get_distinct_gpus():
    compose = load_compose()
    gpus = {}
    for name, svc in compose["services"].items():
        for dev in svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
            assert dev.get("driver") == "nvidia" and "gpu" in dev.get("capabilities", [])
            for gpu in dev.get("device_ids", []):
                assert gpu not in gpus, f"GPU {gpu} given to {gpus.get(gpu)} and {name}"
                gpus[gpu] = name
    assert len(gpus) == 3


# --------------------------------------------------------------------------- ance keys --if-missing

def test_keys_if_missing(tmp_path, capsys):
    keys = tmp_path / "keys"
    assert main(["keys", str(keys), "--if-missing"]) == 0  # none there: made
    assert sorted(p.name for p in keys.iterdir()) == sorted([*KEY_FILES, "run.secret"])  # + the run secret
    first = load_server_keys(keys)
    stamps = {p.name: p.stat().st_mtime_ns for p in keys.iterdir()}
    capsys.readouterr()
    assert main(["keys", str(keys), "--if-missing"]) == 0  # all there: kept as they are
    assert "kept" in capsys.readouterr().out
    assert load_server_keys(keys) == first
    assert {p.name: p.stat().st_mtime_ns for p in keys.iterdir()} == stamps
    assert main(["keys", str(keys)]) == 2  # without the flag: still refused
    (keys / "client.key_secret").unlink()  # a partial set is an error even with the flag
    assert main(["keys", str(keys), "--if-missing"]) == 2
    assert "--force" in capsys.readouterr().err
    (keys / "client.key").write_text("garbage\n")  # and so is an unreadable one
    (keys / "client.key_secret").write_text("garbage\n")
    assert main(["keys", str(keys), "--if-missing"]) == 2
    with pytest.raises(SystemExit):  # --force and --if-missing contradict each other
        build_parser().parse_args(["keys", str(keys), "--force", "--if-missing"])
