"""The config's sections: one dataclass per top-level YAML section, their defaults, the choices and
the positive keys. Loading, overrides and validation: :mod:`ance.run.config`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class DataConfig:
    path: str = "../shared/data/scifact"
    format: str = "auto"
    train_split: str = "train"
    eval_split: str | None = "dev"
    max_docs: int | None = None
    max_queries: int | None = None   # per split: the first N queries with judgements
    subset_seed: int = 0
    corpus: str | None = None        # record formats: what is indexed (else the union of the file's passages)
    columns: dict[str, Any] | None = None  # pairs: {query: COL, positive: COL, negatives: [COL, ...]}
    eval_path: str | None = None     # the eval split's queries and positives from this file/dataset instead
    shared_token_cache: bool = True  # reuse/publish the tokenized corpus in $ANCE_CACHE_DIR across runs


@dataclass
class ModelConfig:
    name_or_path: str = "sentence-transformers/all-MiniLM-L6-v2"
    pooling: str = "mean"
    normalize: bool = True
    similarity: str = "cosine"
    temperature: float = 0.05
    shared_towers: bool = True
    query_max_length: int = 64
    passage_max_length: int = 256
    long_doc: str = "firstp"
    maxp_windows: int = 4
    query_prefix: str | None = None     # before every query; None: the model's sentence-transformers prompt
    passage_prefix: str | None = None   # before every passage; None: the model's prompt ("passage"/"document")
    query_template: str | None = None   # instead of query_prefix: "Instruct: {task}\nQuery: {text}"
    task: str | None = None             # the {task} of query_template


@dataclass
class LoraConfig:
    r: int = 0                          # adapter rank; 0: no LoRA (full fine-tuning)
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: peft's default for the model type


@dataclass
class TrainConfig:
    max_steps: int | None = 200      # null with train.epochs
    epochs: float | None = None      # alternative to max_steps (one of the two)
    batch_size: int = 64
    chunk_size: int | None = 32
    chunk_by_tokens: bool = True
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    sample_by: str = "query"  # "pair": every (query, positive) pair once a pass (sentence-transformers' way)
    loss: str = "infonce"
    gist_guide: str | None = None
    gist_margin: float = 0.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    precision: str = "auto"
    kernels: str = "hf"              # the towers' forward while training: hf (transformers') | lean (BERT only)
    compile: str = "off"             # torch.compile the towers on a GPU: off | on | max-autotune
    log_every: int = 1
    device: str = "auto"
    progress_every_s: float = 30.0   # `ance train` terminal progress; 0: none
    lora: LoraConfig = field(default_factory=LoraConfig)
    gradient_checkpointing: bool = False


@dataclass
class NegativesConfig:
    source: str = "async"
    warmup: str = "inbatch"
    static_file: str | None = None
    static_min_coverage: float = 0.5   # refuse a static_file with negatives for fewer of the training queries
    n_per_query: int = 1
    depth: int = 200
    rank_window: tuple[int, int] = (0, 200)
    keep: int = 20
    sampling: str = "uniform"          # uniform | top | rank | score: how `keep` are chosen from the window
    rank_decay: float = 10.0           # sampling=rank: weights exp(-rank / rank_decay)
    score_temperature: float = 0.05    # sampling=score: weights exp(score / score_temperature)
    denoise_margin: float | None = None  # drop candidates scored above the positive's score minus this
    denoise_ratio: float | None = None   # drop candidates scored above this times the positive's score
    mix_static: float = 0.0            # async: this fraction of a step's negatives from static_file
    max_gap: int = 100
    final_refresh: bool = True
    wait_timeout_s: float = 1800.0


@dataclass
class BrokerConfig:
    address: str = "tcp://127.0.0.1:5555"      # where peers connect
    bind: str | None = None                     # where the broker binds (default: address)
    heartbeat_s: float = 1.0
    worker_timeout_s: float = 10.0
    chunk_queries: int = 256
    max_frame_bytes: int = 256 * 1024 * 1024
    send_weights: bool = False
    curve_keys: str | None = None
    client_keys: str | None = None              # per-worker keys: the allow-list folder (`ance keys issue`)
    max_shards: int = 64                        # the most inferencers one refresh is split over
    shard_deadline_s: float = 3600.0            # no progress on a shard this long (before any rate is measured)


@dataclass
class InferencerConfig:
    batch_size: int = 256
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    warm_up: bool = True          # tokenize the corpus and initialise the device before the first job
    compile: str = "off"          # torch.compile the towers on a GPU: off | on | max-autotune
    kernels: str = "hf"           # the towers' forward: hf (transformers') | lean | lean-tanh (BERT only)
    knn_kernel: str = "auto"      # the torch backend's exact top-k: auto | tiles | fused (Triton, GPU) | overlap


@dataclass
class TelemetryConfig:
    tensorboard: bool = True
    prometheus_port: int | None = None
    prometheus_addr: str = "127.0.0.1"
    mlflow: str | None = None        # MLflow tracking URI, e.g. file:./mlruns
    wandb: str | None = None         # Weights & Biases project (offline mode by default)


@dataclass
class SlurmConfig:
    """How `ance launch --slurm` splits an allocation's nodes (ance.launch.slurm_place)."""

    trainer_nodes: int = 1                 # the first N nodes: trainer group (torchrun); broker on the first
    inferencer_nodes: int | None = None    # the next M nodes: inferencer pool; null = all the others
    cpu_inferencers: int = 2               # inferencers per inferencer node without GPUs
    cpu_trainer_procs: int = 1             # trainer ranks per trainer node without GPUs (gloo)
    broker_port: int = 5555                # the broker listens on the first trainer node, off loopback, CURVE
    rdzv_port: int = 29400                 # torchrun c10d rendezvous on the first trainer node
    shared_fs: bool = True                 # false: weights through the broker, keys in broker.curve_keys
    wait_s: float = 300.0                  # how long other nodes wait for the first trainer node's set-up


@dataclass
class LaunchConfig:
    inferencers: int = 2
    restart_backoff_s: list[float] = field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0])
    max_restarts: int = 10
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@dataclass
class EvalConfig:
    every: int | None = None          # steps between the trainer's evaluations of data.eval_split; null: at
                                      # the start and the end for inbatch/static (async: refreshes); 0: never
    best_metric: str | None = "ndcg@10"  # the measure the checkpoints/best.json alias follows; null: none
    depth: int = 100                  # documents retrieved per eval query (recall@depth is the deepest)


@dataclass
class Config:
    run_dir: str = "runs/default"
    seed: int = 13
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    inferencer: InferencerConfig = field(default_factory=InferencerConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values: sections as dicts, tuples as lists."""
        return _plain(dataclasses.asdict(self))


_CHOICES = {
    "data.format": ("auto", "beir", "msmarco", "tevatron", "pairs", "hf"),
    "model.pooling": ("cls", "mean", "last"), "model.similarity": ("cosine", "dot"),
    "model.long_doc": ("firstp", "maxp"),
    "train.loss": ("infonce", "bidirectional"), "train.sample_by": ("query", "pair"),
    "train.precision": ("auto", "bf16", "fp16", "fp32"),
    "train.kernels": ("hf", "lean"),
    "train.compile": ("off", "on", "max-autotune"),
    "negatives.source": ("inbatch", "static", "async"),
    "negatives.warmup": ("inbatch", "bm25", "static"),
    "negatives.sampling": ("uniform", "top", "rank", "score"),
    "inferencer.backend": ("auto", "faiss", "torch"),
    "inferencer.precision": ("auto", "bf16", "fp16", "fp32"),
    "inferencer.compile": ("off", "on", "max-autotune"),
    "inferencer.kernels": ("hf", "lean", "lean-tanh"),
    "inferencer.knn_kernel": ("auto", "tiles", "fused", "overlap"),
}

_POSITIVE = (
    "train.batch_size", "train.checkpoint_every", "train.keep_checkpoints",
    "train.log_every", "negatives.n_per_query", "negatives.depth", "negatives.keep",
    "broker.chunk_queries", "broker.max_frame_bytes", "broker.max_shards", "inferencer.batch_size",
    "model.query_max_length", "model.passage_max_length", "model.maxp_windows", "eval.depth",
    "launch.slurm.trainer_nodes", "launch.slurm.cpu_inferencers", "launch.slurm.cpu_trainer_procs",
    "launch.slurm.broker_port", "launch.slurm.rdzv_port", "launch.slurm.wait_s",
)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
