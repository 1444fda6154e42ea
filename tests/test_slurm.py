"""Placement on a Slurm allocation (ance.launch.slurm_place): node lists, GPUs, splits; bad input -> one line, exit 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ance.launch.slurm_place import expand_nodelist, place, read_env, wants_slurm
from ance.launch.slurm_node import make_run_keys
from ance.launch.supervisor import plan
from ance.run.errors import ConfigError
from ance.run.sections import SlurmConfig
from ance.wire.keys import KEY_FILES

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, want", [
    ("node01", ["node01"]),
    ("node[01-04,07]", ["node01", "node02", "node03", "node04", "node07"]),
    ("a1,b[2-3]", ["a1", "b2", "b3"]),
    ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("ance-n[1-3]", ["ance-n1", "ance-n2", "ance-n3"]),
    ("x[1-2]-ib,y", ["x1-ib", "x2-ib", "y"]),
])
def test_expand_nodelist(text, want):
    assert expand_nodelist(text) == want


@pytest.mark.parametrize("text, says", [
    ("", "empty"), ("node[1-", "'[' without ']'"), ("node]1", "']' without '['"), ("node[a-b]", "bad range"),
    ("node[3-1]", "backwards"), ("a,,b", "empty node name"), ("n[1-2],n2", "listed twice"), ("bad/name", "bad node"),
])
def test_bad_nodelists(text, says):
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        expand_nodelist(text)


def env(nodes="node[01-03]", node_id=0, **extra):
    e = {"SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": nodes, "SLURM_NODEID": str(node_id),
         "SLURM_PROCID": str(node_id), "SLURM_STEP_ID": "0", "SLURM_JOB_NUM_NODES": str(len(expand_nodelist(nodes)))}
    e["SLURM_STEP_NUM_TASKS"] = e["SLURM_JOB_NUM_NODES"]
    e.update({k: str(v) for k, v in extra.items()})
    return e


def test_read_env_gpus_and_cpus():
    assert read_env(env()).gpus == []
    assert read_env(env(SLURM_GPUS_ON_NODE=4)).gpus == [0, 1, 2, 3]
    assert read_env(env(SLURM_GPUS_PER_NODE="a100:2")).gpus == [0, 1]
    assert read_env(env(SLURM_GPUS_PER_NODE="gpu:h100:8")).gpus == list(range(8))
    # Slurm without device cgroups names the node's GPUs in CUDA_VISIBLE_DEVICES: use those indices
    assert read_env(env(SLURM_GPUS_ON_NODE=2, CUDA_VISIBLE_DEVICES="4,5")).gpus == [4, 5]
    e = read_env(env(node_id=2, SLURM_CPUS_ON_NODE=16))
    assert (e.node_id, e.cpus, e.job_id, e.nodes[2]) == (2, 16, "42", "node03")
    with pytest.raises(ConfigError, match="UUIDs"):
        read_env(env(SLURM_GPUS_ON_NODE=1, CUDA_VISIBLE_DEVICES="GPU-1234"))
    with pytest.raises(ConfigError, match="SLURM_NODEID=5"):
        read_env(env(node_id=5))
    with pytest.raises(ConfigError, match="SLURM_GPUS_ON_NODE"):
        read_env(env(SLURM_GPUS_ON_NODE="lots"))
    with pytest.raises(ConfigError, match="no Slurm allocation"):
        read_env({})


def test_wants_slurm():
    assert wants_slurm("auto", env()) and not wants_slurm("auto", {})
    assert not wants_slurm("auto", env(nodes="n1"))                  # one node: a plain launch does it
    batch = {k: v for k, v in env().items() if k != "SLURM_STEP_ID"}  # the batch script, not an srun step
    assert not wants_slurm("auto", batch)
    assert wants_slurm("on", {}) and not wants_slurm("off", env())


def parts(nodes, scfg, curve_keys=None, **extra):
    n = len(expand_nodelist(nodes))
    return [place(read_env(env(nodes, i, **extra)), scfg, run_dir="/shared/runs/x", curve_keys=curve_keys)
            for i in range(n)]


def test_cpu_split_two_trainer_nodes_one_inferencer_node():
    p = parts("ance-n[1-3]", SlurmConfig(trainer_nodes=2, cpu_inferencers=2))
    assert [x.roles for x in p] == [("broker", "trainer"), ("trainer",), ("inferencer",)]
    assert [(x.nnodes, x.node_rank) for x in p[:2]] == [(2, 0), (2, 1)]
    assert {x.rdzv_endpoint for x in p[:2]} == {"ance-n1:29400"}
    assert p[2].n_cpu_inferencers == 2 and p[2].worker_prefix == "ance-n3-"
    for x in p:   # every node talks to the broker on the first node, with the run's keys, off loopback
        assert "broker.address=tcp://ance-n1:5555" in x.overrides
        assert "broker.bind=tcp://0.0.0.0:5555" in x.overrides
        assert "broker.curve_keys=/shared/runs/x/keys" in x.overrides
        assert not any(o.startswith("broker.send_weights") for o in x.overrides)
    assert [x.make_keys for x in p] == [True, False, False] and p[0].first


def test_gpu_split_and_plan():
    p = parts("node[01-04,07]", SlurmConfig(trainer_nodes=2), SLURM_GPUS_ON_NODE=4)
    assert [x.roles for x in p] == [("broker", "trainer"), ("trainer",)] + [("inferencer",)] * 3
    assert p[0].trainer_gpus == [0, 1, 2, 3] and p[4].inferencer_gpus == [0, 1, 2, 3] and p[4].node == "node07"
    specs = plan(Path("/r"), resume=False, trainer_gpus=p[1].trainer_gpus, inferencer_gpus=[], n_cpu_inferencers=0,
                 nnodes=p[1].nnodes, node_rank=p[1].node_rank, rdzv_endpoint=p[1].rdzv_endpoint, roles=p[1].roles)
    argv = specs[0].argv
    assert [s.name for s in specs] == ["trainer-0"]
    assert argv[argv.index("--rdzv-endpoint") + 1] == "node01:29400" and argv[argv.index("--nnodes") + 1] == "2"
    assert argv[argv.index("--nproc-per-node") + 1] == "4" and argv[argv.index("--rdzv-backend") + 1] == "c10d"


def test_cpu_trainer_over_nodes_is_torchrun_with_gloo_ranks():
    specs = plan(Path("/r"), resume=True, trainer_gpus=[], inferencer_gpus=[], n_cpu_inferencers=0, nnodes=2,
                 node_rank=1, rdzv_endpoint="n1:29400", roles=("trainer",), cpu_trainer_procs=3)
    argv = specs[0].argv
    assert "torch.distributed.run" in argv and argv[argv.index("--nproc-per-node") + 1] == "3"
    assert "train.device=cpu" in argv and "--resume" in argv and specs[0].env["CUDA_VISIBLE_DEVICES"] == ""


def test_one_node_runs_everything_and_no_shared_fs_sends_weights():
    (only,) = parts("solo", SlurmConfig(inferencer_nodes=0))
    assert only.roles == ("broker", "trainer", "inferencer") and only.n_cpu_inferencers == 2
    p = parts("a1,b[2-3]", SlurmConfig(shared_fs=False), curve_keys="/etc/ance/keys", SLURM_GPUS_ON_NODE=1)
    assert [x.roles for x in p] == [("broker", "trainer"), ("inferencer",), ("inferencer",)]
    assert all("broker.send_weights=true" in x.overrides and "broker.curve_keys=/etc/ance/keys" in x.overrides
               for x in p)
    assert not any(x.make_keys for x in p)   # given keys are used, never made


@pytest.mark.parametrize("nodes, scfg, extra, says", [
    ("n[1-3]", SlurmConfig(trainer_nodes=4), {}, "asks for 4 trainer nodes but the allocation has 3"),
    ("n[1-3]", SlurmConfig(trainer_nodes=1, inferencer_nodes=1), {}, "add up to 3"),
    ("n[1-3]", SlurmConfig(trainer_nodes=0), {}, "trainer_nodes=0"),
    ("n[1-3]", SlurmConfig(broker_port=70000), {}, "broker_port=70000"),
    ("n[1-3]", SlurmConfig(rdzv_port=5555), {}, "both 5555"),
    ("n[1-3]", SlurmConfig(trainer_nodes=2, shared_fs=False), {"curve_keys": "/k"}, "shared_fs=false with trainer_nodes=2"),
    ("n[1-3]", SlurmConfig(shared_fs=False), {}, "copy DIR to every node"),
])
def test_bad_splits(nodes, scfg, extra, says):
    with pytest.raises(ConfigError, match=says):
        place(read_env(env(nodes, 0)), scfg, run_dir="/r", curve_keys=extra.get("curve_keys"))


def test_one_task_per_node_and_srun_required():
    e = env("n[1-2]", 0, SLURM_STEP_NUM_TASKS=4)
    with pytest.raises(ConfigError, match="--ntasks-per-node=1"):
        place(read_env(e), SlurmConfig(), run_dir="/r", curve_keys=None)
    batch = {k: v for k, v in env("n[1-2]").items() if k != "SLURM_STEP_ID"}
    with pytest.raises(ConfigError, match="srun --ntasks-per-node=1"):
        place(read_env(batch), SlurmConfig(), run_dir="/r", curve_keys=None)


def test_run_keys_are_made_once_and_never_replaced(tmp_path):
    keys = tmp_path / "run" / "keys"
    make_run_keys(keys)
    assert sorted(p.name for p in keys.iterdir()) == sorted(KEY_FILES)
    assert oct(keys.stat().st_mode & 0o777) == "0o700"
    before = (keys / "broker.key_secret").read_bytes()
    make_run_keys(keys)
    assert (keys / "broker.key_secret").read_bytes() == before
    (keys / "client.key").unlink()
    with pytest.raises(ConfigError, match="incomplete set"):
        make_run_keys(keys)


def test_bad_split_from_the_command_line_is_one_line_exit_2(tmp_path):
    e = {**os.environ, **env("ance-n[1-2]", 0), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ance.cli", "launch", str(ROOT / "configs/tiny-async-cpu.yaml"),
                           f"run_dir={tmp_path / 'run'}", "launch.slurm.trainer_nodes=3"],
                          env=e, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "launch.slurm asks for 3 trainer nodes" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()   # nothing written before the placement is known to fit
