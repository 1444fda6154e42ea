"""Placement on a Slurm allocation: which of a run's processes this node runs (pure; tested on its own).

``srun --ntasks-per-node=1 ance launch --slurm CONFIG ...`` runs one launcher per node. Each reads the
Slurm environment (:func:`read_env`) and the config section ``launch.slurm`` and gets its part
(:func:`place`); nodes are taken in the order of ``SLURM_JOB_NODELIST``:

* the first ``trainer_nodes`` nodes run the trainer group: torchrun over all of them, c10d rendezvous
  on the first (``<first>:rdzv_port``); one rank per GPU of the node, or ``cpu_trainer_procs`` CPU
  ranks (gloo) where the node has no GPU;
* the first trainer node also runs the broker, bound off loopback (``tcp://0.0.0.0:broker_port``) and
  therefore always with CURVE keys: ``broker.curve_keys`` when given, else ``RUN_DIR/keys``, made for
  the run by the first node (:mod:`ance.launch.slurm_node`);
* the next ``inferencer_nodes`` nodes (default: all the others) run the inferencer pool, one worker per
  GPU, or ``cpu_inferencers`` CPU workers, named ``<node>-<i>``; with ``inferencer_nodes: 0`` the pool
  runs on the first trainer node.

``shared_fs: false`` (nodes share no run directory) sends the weights through the broker
(``broker.send_weights=true``) and needs keys already on every node (``broker.curve_keys``).
A split that does not fit the allocation is a :class:`ConfigError` (one line, exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from ance.run.errors import ConfigError
from ance.run.sections import SlurmConfig

_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_nodelist(text: str) -> list[str]:
    """``node[01-03,07],gpu-a1`` -> ``[node01, node02, node03, node07, gpu-a1]`` (Slurm's hostlist form).

    Zero padding follows the range's first number; several bracket groups in one name are expanded
    left to right (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2), as ``scontrol show hostnames`` does.
    """
    text = (text or "").strip()
    if not text:
        raise ConfigError("SLURM_JOB_NODELIST is empty: run inside a Slurm allocation (sbatch/salloc + srun)")
    names: list[str] = []
    for item in _split_top(text):
        names.extend(_expand_one(item, text))
    seen: set[str] = set()
    dupes = [n for n in names if n in seen or seen.add(n)]
    if dupes:
        raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: node {dupes[0]} listed twice")
    return names


def _split_top(text: str) -> list[str]:
    """Split on the commas outside brackets."""
    items, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: ']' without '['")
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: '[' without ']'")
    items.append(cur)
    if any(not i.strip() for i in items):
        raise ConfigError(f"SLURM_JOB_NODELIST={text!r}: empty node name")
    return [i.strip() for i in items]


def _expand_one(item: str, whole: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", item)
    if m is None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", item):
            raise ConfigError(f"SLURM_JOB_NODELIST={whole!r}: bad node name {item!r}")
        return [item]
    head, tail = item[:m.start()], item[m.end():]
    out: list[str] = []
    for part in m.group(1).split(","):
        r = _RANGE.match(part.strip())
        if r is None:
            raise ConfigError(f"SLURM_JOB_NODELIST={whole!r}: bad range {part!r} in {item!r} "
                              "(expected e.g. node[01-04,07])")
        lo_s, hi_s = r.group(1), r.group(2) or r.group(1)
        lo, hi = int(lo_s), int(hi_s)
        if hi < lo:
            raise ConfigError(f"SLURM_JOB_NODELIST={whole!r}: range {part!r} runs backwards")
        width = len(lo_s) if lo_s.startswith("0") else 0
        for n in range(lo, hi + 1):
            out.extend(_expand_one(f"{head}{n:0{width}d}{tail}", whole))
    return out


@dataclass(frozen=True)
class SlurmEnv:
    """What Slurm tells one task about its allocation."""

    job_id: str
    nodes: list[str]
    node_id: int
    proc_id: int
    ntasks: int
    gpus: list[int]                 # this node's GPU indices, as CUDA_VISIBLE_DEVICES will name them
    cpus: int | None
    in_step: bool                   # inside an srun step (not the batch script itself)
    step_id: str | None = None


def in_allocation(environ: Mapping[str, str]) -> bool:
    return bool(environ.get("SLURM_JOB_ID")) and bool(environ.get("SLURM_JOB_NODELIST"))


def wants_slurm(mode: str, environ: Mapping[str, str]) -> bool:
    """``--slurm`` on/off/auto: auto = inside an srun step of an allocation of more than one node
    (where a plain launch on every node would start one whole run per node)."""
    if mode != "auto":
        return mode == "on"
    return (in_allocation(environ) and "SLURM_STEP_ID" in environ
            and _int(environ, "SLURM_JOB_NUM_NODES", 1) > 1)


def _int(environ: Mapping[str, str], key: str, default: int | None) -> int | None:
    raw = environ.get(key)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{key}={raw!r}: expected an integer") from None


def _gpu_count(environ: Mapping[str, str]) -> int:
    """SLURM_GPUS_ON_NODE, else the count of SLURM_GPUS_PER_NODE (``2``, ``a100:2``, ``gpu:a100:2``)."""
    if environ.get("SLURM_GPUS_ON_NODE"):
        return _int(environ, "SLURM_GPUS_ON_NODE", 0) or 0
    raw = environ.get("SLURM_GPUS_PER_NODE", "")
    if not raw:
        return 0
    last = raw.split(",")[0].split(":")[-1].split("(")[0]
    try:
        return int(last)
    except ValueError:
        raise ConfigError(f"SLURM_GPUS_PER_NODE={raw!r}: expected a count such as 4 or a100:4") from None


def read_env(environ: Mapping[str, str]) -> SlurmEnv:
    """Parse this task's Slurm variables; ConfigError (naming the variable) when they don't add up."""
    if not in_allocation(environ):
        raise ConfigError("--slurm: no Slurm allocation here (SLURM_JOB_ID / SLURM_JOB_NODELIST unset); "
                          "run it with srun inside sbatch or salloc (see launch/slurm/ance.sbatch)")
    nodes = expand_nodelist(environ["SLURM_JOB_NODELIST"])
    node_id = _int(environ, "SLURM_NODEID", 0)
    proc_id = _int(environ, "SLURM_PROCID", 0)
    ntasks = _int(environ, "SLURM_STEP_NUM_TASKS", None) or _int(environ, "SLURM_NTASKS", len(nodes))
    if not 0 <= node_id < len(nodes):
        raise ConfigError(f"SLURM_NODEID={node_id} is outside the {len(nodes)} nodes of SLURM_JOB_NODELIST")
    n = _gpu_count(environ)
    visible = environ.get("CUDA_VISIBLE_DEVICES", "")
    if n and visible.strip():
        try:
            gpus = [int(x) for x in visible.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"CUDA_VISIBLE_DEVICES={visible!r}: ance launch --slurm needs GPU indices, not "
                              "UUIDs; unset it or have Slurm bind GPUs by index") from None
        gpus = gpus[:n]
    else:
        gpus = list(range(n))
    return SlurmEnv(job_id=environ["SLURM_JOB_ID"], nodes=nodes, node_id=node_id, proc_id=proc_id,
                    ntasks=ntasks, gpus=gpus, cpus=_int(environ, "SLURM_CPUS_ON_NODE", None),
                    in_step="SLURM_STEP_ID" in environ, step_id=environ.get("SLURM_STEP_ID"))


@dataclass
class NodePart:
    """This node's share of the run: what to hand to :func:`ance.launch.supervisor.plan`."""

    node: str
    roles: tuple[str, ...]
    trainer_nodes: list[str]
    inferencer_nodes: list[str]
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    trainer_gpus: list[int] = field(default_factory=list)
    inferencer_gpus: list[int] = field(default_factory=list)
    n_cpu_inferencers: int = 0
    cpu_trainer_procs: int = 1
    worker_prefix: str = ""
    keys_dir: str = ""
    make_keys: bool = False         # the first trainer node makes RUN_DIR/keys when absent
    overrides: list[str] = field(default_factory=list)

    @property
    def first(self) -> bool:
        return self.node == self.trainer_nodes[0]


def place(env: SlurmEnv, scfg: SlurmConfig, *, run_dir: str, curve_keys: str | None) -> NodePart:
    """This node's part of the run (see the module's docstring)."""
    total = len(env.nodes)
    if not env.in_step and total > 1:
        raise ConfigError("--slurm in the batch script itself would run on the first node only: start it with "
                          "`srun --ntasks-per-node=1 ance launch --slurm ...` (launch/slurm/ance.sbatch)")
    if env.ntasks != total:
        raise ConfigError(f"--slurm runs one launcher per node, but this step has {env.ntasks} tasks on {total} "
                          "nodes: use srun --ntasks-per-node=1 (each launcher starts its node's processes)")
    t = scfg.trainer_nodes
    i = scfg.inferencer_nodes if scfg.inferencer_nodes is not None else total - t
    if t < 1:
        raise ConfigError(f"launch.slurm.trainer_nodes={t}: needs at least 1")
    if i < 0 or t + i != total:
        want = f"{t} trainer + {i} inferencer node(s)" if i >= 0 else f"{t} trainer nodes"
        raise ConfigError(f"launch.slurm asks for {want} but the allocation has {total} node(s) "
                          f"({','.join(env.nodes)}): set launch.slurm.trainer_nodes/inferencer_nodes to add up "
                          f"to {total}, or sbatch --nodes={max(t + max(i, 0), 1)}")
    for key in ("broker_port", "rdzv_port"):
        port = getattr(scfg, key)
        if not 1 <= port <= 65535:
            raise ConfigError(f"launch.slurm.{key}={port}: must be a TCP port in 1..65535")
    if scfg.broker_port == scfg.rdzv_port:
        raise ConfigError(f"launch.slurm.broker_port and rdzv_port are both {scfg.broker_port}: give two ports")
    if not scfg.shared_fs and t > 1:
        raise ConfigError(f"launch.slurm.shared_fs=false with trainer_nodes={t}: the trainer's rank 0 may land on "
                          "any trainer node and the broker must read its checkpoints; give the trainer nodes a "
                          "shared run_dir (shared_fs: true) or use trainer_nodes: 1")
    if not scfg.shared_fs and not curve_keys:
        raise ConfigError("launch.slurm.shared_fs=false: the run's keys cannot be made on one node and read on "
                          "the others; make them once with `ance keys DIR`, copy DIR to every node, set "
                          "broker.curve_keys=DIR")
    trainers, infers = env.nodes[:t], env.nodes[t:]
    me = env.nodes[env.node_id]
    head = trainers[0]
    keys = curve_keys or f"{run_dir.rstrip('/')}/keys"
    overrides = [f"broker.address=tcp://{head}:{scfg.broker_port}",
                 f"broker.bind=tcp://0.0.0.0:{scfg.broker_port}",
                 f"broker.curve_keys={keys}"]
    if not scfg.shared_fs:
        overrides.append("broker.send_weights=true")
    part = NodePart(node=me, roles=(), trainer_nodes=trainers, inferencer_nodes=infers, keys_dir=keys,
                    overrides=overrides, cpu_trainer_procs=scfg.cpu_trainer_procs,
                    worker_prefix=f"{me}-", make_keys=(me == head and not curve_keys))
    roles: list[str] = []
    if me in trainers:
        roles.append("trainer")
        part.nnodes, part.node_rank = t, trainers.index(me)
        part.rdzv_endpoint = f"{head}:{scfg.rdzv_port}"
        part.trainer_gpus = list(env.gpus)
        if me == head:
            roles.insert(0, "broker")
    if me in infers or (me == head and not infers):
        roles.append("inferencer")
        part.inferencer_gpus = list(env.gpus)
        part.n_cpu_inferencers = 0 if env.gpus else scfg.cpu_inferencers
    part.roles = tuple(roles)
    return part
