"""What every config key does and whether it may change on resume: the one table.

``KEYS["train.lr"] = (MAY, "peak learning rate ...")``. Type, default, choices and
the > 0 rule come from the dataclasses of :mod:`ance.run.sections`; this table adds
the words and the resume class (:mod:`ance.run.resume` enforces it,
:mod:`ance.run.reference` prints it, docs/config.md is generated from it).

* ``MAY``: may change on resume, and takes effect from the step resumed at
  (the learning-rate schedule is rebuilt, see trainer/resume.py);
* ``FIXED``: shapes the model, the data or the sampling state: a change on resume
  is refused (``--force`` accepts it, at your own risk).

A key of the sections without an entry here fails tests/test_config_reference.py.
"""

from __future__ import annotations

MAY, FIXED = "may change", "fixed"

KEYS: dict[str, tuple[str, str]] = {
    "run_dir": (MAY, "the run directory (config.yaml, checkpoints, negatives, metrics.jsonl, logs)"),
    "seed": (FIXED, "seed of the query order, positive and negative draws and model init"),
    # data
    "data.path": (FIXED, "BEIR folder, MS MARCO folder, Tevatron JSONL, sentence-transformers pairs/triplets (JSONL, CSV/TSV, Parquet), an HF dataset (save_to_disk folder, .arrow, hf:NAME), or beir:NAME (downloaded once); a relative path is "
                         "resolved against the current directory"),
    "data.format": (FIXED, "layout of data.path: auto (detected from the path and first record) | beir | msmarco | tevatron | pairs | hf"),
    "data.corpus": (FIXED, "record formats (Tevatron, pairs, HF): the corpus to index (Tevatron corpus JSONL "
                    "or a BEIR corpus.jsonl); null: the union of the file's passages, and ANCE mines only among them"),
    "data.columns": (FIXED, "pairs/HF: column mapping {query: COL, positive: COL, negatives: [COL, ...]}; null: "
                     "guessed from common names (anchor/query, positive/pos, negative/neg), else by position"),
    "data.eval_path": (FIXED, "evaluation queries and positives from this file or dataset (any format) instead of "
                       "data.eval_split of data.path; indexed against the same corpus"),
    "data.shared_token_cache": (MAY, "link the tokenized corpus from the user's cache ($ANCE_CACHE_DIR, else "
                                "~/.cache/ance) when a run with the same data and tokenizer made it, and publish "
                                "it there when this run makes it (hard links; false: the run dir's cache only)"),
    "data.train_split": (FIXED, "split whose queries are trained on"),
    "data.eval_split": (FIXED, "split evaluated at every refresh (nDCG@10, recall@100); null: none"),
    "data.max_docs": (FIXED, "corpus subset: every judged document of the kept queries, then a seeded sample "
                             "of the others up to max_docs in total (judged documents are never dropped, so the "
                             "corpus is larger when they alone exceed max_docs); null: the whole corpus"),
    "data.max_queries": (FIXED, "per split: the first N queries with judgements; null: all"),
    "data.subset_seed": (FIXED, "seed of the max_docs sample"),
    # model
    "model.name_or_path": (FIXED, "a path, a hub id, all-MiniLM-L6-v2, or tiny-bert"),
    "model.pooling": (FIXED, "how token vectors become one vector"),
    "model.normalize": (FIXED, "L2-normalise embeddings"),
    "model.similarity": (FIXED, "score of a query and a passage"),
    "model.temperature": (FIXED, "softmax temperature of the contrastive loss (> 0)"),
    "model.shared_towers": (FIXED, "one encoder for queries and passages; false: two towers"),
    "model.query_max_length": (FIXED, "query tokens (4..8192, and within the model's positions)"),
    "model.passage_max_length": (FIXED, "passage tokens; a passage is title + ' ' + text (4..8192)"),
    "model.long_doc": (FIXED, "firstp: first passage_max_length tokens; maxp: max over windows"),
    "model.maxp_windows": (FIXED, "windows per document with long_doc=maxp"),

    "model.query_prefix": (FIXED, "text put before every query (e5: 'query: '); null: the model's sentence-transformers "
                           "prompt 'query'; written back to every checkpoint's config_sentence_transformers.json"),
    "model.passage_prefix": (FIXED, "text put before every passage (e5: 'passage: '); null: the model's prompt "
                             "'passage' or 'document'; its tokens count against passage_max_length"),
    "model.query_template": (FIXED, "instead of query_prefix, a template ending in {text}, e.g. "
                             "'Instruct: {task}\\nQuery: {text}' (decoder embedders)"),
    "model.task": (FIXED, "the {task} of model.query_template"),    # train
    "train.max_steps": (MAY, "optimizer steps of the run; the lr schedule ends here (null with train.epochs)"),
    "train.epochs": (MAY, "alternative to max_steps: passes over the training queries (pairs with "
                          "sample_by=pair), rounded up to whole steps; null: use max_steps"),
    "train.batch_size": (FIXED, "queries per optimizer step (global; divisible by the number of ranks)"),
    "train.chunk_size": (MAY, "GradCache sub-batch (sequences per forward); null: plain step, one forward "
                              "of the whole batch: the fastest where it fits in memory (1.47x the steps/s of "
                              "chunk 64 for MiniLM, batch 64 + 64 negatives, on an H200)"),
    "train.chunk_by_tokens": (MAY, "a chunk holds chunk_size x passage_max_length tokens (more short "
                                   "sequences per forward, same peak memory)"),
    "train.lr": (MAY, "peak learning rate (AdamW, linear warm-up then linear decay to 0 at max_steps; "
                      "on resume the schedule continues from the current step, scaled to the new peak)"),
    "train.weight_decay": (MAY, "AdamW weight decay (not on biases and norms; >= 0)"),
    "train.warmup_ratio": (MAY, "fraction of max_steps spent warming up the lr (0 <= r < 1)"),
    "train.max_grad_norm": (MAY, "gradient clipping norm (> 0)"),

    "train.lora.r": (FIXED, "LoRA adapter rank (peft); 0: no LoRA, full fine-tuning; checkpoints then hold the "
                     "adapter only, and inferencers swap adapters into a base loaded once"),
    "train.lora.alpha": (FIXED, "LoRA scaling (alpha / r)"),
    "train.lora.dropout": (FIXED, "dropout on the LoRA branch"),
    "train.lora.target_modules": (FIXED, "module names the adapters wrap, e.g. [q_proj, v_proj]; empty: peft's "
                                  "default for the model type; an unknown name is refused, listing the linear layers"),
    "train.gradient_checkpointing": (MAY, "recompute activations in backward (less memory, about a third more "
                                     "compute), full fine-tuning and LoRA alike, composed with GradCache's RNG replay"),    "train.sample_by": (FIXED, "query: each query once a pass, one positive at random; pair: each "
                               "(query, positive) pair once a pass (sentence-transformers' way)"),
    "train.loss": (FIXED, "contrastive loss"),
    "train.gist_guide": (FIXED, "a frozen guide model (path or name) masking likely false negatives; null: none"),
    "train.gist_margin": (FIXED, "GIST: mask in-batch passages the guide scores above positive - margin"),
    "train.checkpoint_every": (MAY, "checkpoint (and, async, refresh) every this many steps"),
    "train.keep_checkpoints": (MAY, "checkpoints kept (those still in use are kept too)"),
    "train.precision": (MAY, "auto: bf16 on GPU, fp32 on CPU"),
    "train.kernels": (MAY, "the towers' forward while training: hf (transformers'); lean (BERT-family towers without "
                           "LoRA or gradient checkpointing: ance.model.leanbert, the same computation and dropout, "
                           "a fraction of the host time a step); other towers keep transformers'"),
    "train.compile": (MAY, "torch.compile the towers on a GPU (on: default mode; max-autotune: tuned kernels, minutes "
                           "of compiling): with train.kernels=lean, 3.2x sentence-transformers' steps/s on an H200 "
                           "(docs/benchmarks.md); the first steps compile; off on the CPU"),
    "train.log_every": (MAY, "a `step` event in metrics.jsonl every this many steps"),
    "train.device": (MAY, "auto: cuda:$LOCAL_RANK when CUDA is there, else cpu; cpu | cuda | cuda:N"),
    "train.progress_every_s": (MAY, "terminal progress of `ance train`: a line every this many seconds "
                                    "when stderr is not a terminal (a live bar when it is); 0: none"),
    # negatives
    "negatives.source": (FIXED, "where hard negatives come from"),
    "negatives.warmup": (FIXED, "async only: negatives before the first refreshed version"),
    "negatives.static_file": (FIXED, "negatives file (`ance mine`) for source or warmup static"),
    "negatives.static_min_coverage": (MAY, "refuse a static_file that lists negatives for less than this "
                                           "fraction of the training queries (the others would get random "
                                           "negatives; any gap is a warning); 0: accept any (0..1)"),
    "negatives.n_per_query": (FIXED, "hard negatives per query in a training example (<= keep)"),
    "negatives.depth": (FIXED, "top-k retrieved per training query at a refresh"),
    "negatives.rank_window": (FIXED, "ranks [lo, hi) eligible as negatives (0 <= lo < hi <= depth)"),
    "negatives.keep": (FIXED, "negatives stored per query and version"),
    "negatives.sampling": (FIXED, "how `keep` are chosen from the window"),
    "negatives.rank_decay": (FIXED, "sampling=rank: weights exp(-rank / rank_decay) (> 0)"),
    "negatives.score_temperature": (FIXED, "sampling=score: weights exp(score / score_temperature) (> 0)"),
    "negatives.denoise_margin": (FIXED, "drop candidates scored above the positive's score minus this; "
                                        "null: keep all"),
    "negatives.denoise_ratio": (FIXED, "drop candidates scored above this times the positive's score "
                                       "(NV-Retriever's TopK-PercPos, e.g. 0.95; > 0). The positive's score is "
                                       "its best in the query's ranked list (top `depth`): a query whose "
                                       "positive is not ranked keeps all. Taken as written when that score is "
                                       "negative (the bar is then above it). With denoise_margin: either rule "
                                       "drops; null: keep all"),
    "negatives.mix_static": (FIXED, "async: this fraction of a step's negatives from static_file (0..1)"),
    "negatives.max_gap": (MAY, "never train on negatives older than this many steps (async; >= checkpoint_every)"),
    "negatives.final_refresh": (MAY, "wait for the refresh (and eval) of the last checkpoint before exit"),
    "negatives.wait_timeout_s": (MAY, "a gap wait or the final refresh longer than this is an error"),
    # broker
    "broker.address": (MAY, "where peers connect: tcp://HOST:PORT, ipc://PATH or inproc://NAME"),
    "broker.bind": (MAY, "where the broker binds (null: address), e.g. tcp://0.0.0.0:5555"),
    "broker.heartbeat_s": (MAY, "seconds between heartbeats"),
    "broker.worker_timeout_s": (MAY, "a worker silent this long is dropped (>= 2 x heartbeat_s)"),
    "broker.chunk_queries": (MAY, "queries per streamed negatives chunk"),
    "broker.max_frame_bytes": (MAY, "largest message (1 MiB..2 GiB); the same on every process"),
    "broker.send_weights": (MAY, "ship checkpoint files in jobs (inferencers without the run directory); each checkpoint must fit in broker.max_frame_bytes less 1 MiB, or the trainer stops with exit 2 (use LoRA, or raise the limit)"),
    "broker.curve_keys": (MAY, "folder made by `ance keys`; required to bind off loopback"),
    "broker.client_keys": (MAY, "per-worker keys (broker only): the allow-list folder DIR/clients of "
                           "`ance keys issue DIR --name NAME`; the broker then admits only those keys, each under "
                           "its own name (null: every DIR/*.key, one shared client key)"),
    "broker.shard_deadline_s": (MAY, "a shard without progress this long is reassigned before any shard has "
                                "finished; after that the bound is 3x the measured rate (at least 3 heartbeats' timeout, "
                                "30 s); a worker missing twice is excluded"),
    "broker.max_shards": (MAY, "the most inferencers one refresh is split over"),
    # inferencer
    "inferencer.batch_size": (MAY, "passages per encoding batch"),
    "inferencer.backend": (MAY, "auto: faiss if usable on the device"),
    "inferencer.device": (MAY, "auto: cuda:0 when available; cpu | cuda | cuda:N"),
    "inferencer.precision": (MAY, "encoding precision"),
    "inferencer.warm_up": (MAY, "tokenize the corpus and load the base model before the first job"),
    "inferencer.compile": (MAY, "torch.compile the towers on a GPU (on: default mode; max-autotune: tuned "
                                "kernels, minutes of compiling); compiled once, each checkpoint's weights "
                                "copied in; off on the CPU"),
    "inferencer.kernels": (MAY, "the towers' encode forward: hf (transformers'); lean (BERT-family towers: one QKV "
                                "GEMM, attention on strided views, same vectors); lean-tanh (lean with bias + GELU "
                                "in the GEMM epilogue, tanh approximation on a GPU: bf16-rounding-sized change "
                                "for exact-GELU models); other towers keep transformers' forward"),
    "inferencer.knn_kernel": (MAY, "the torch backend's exact top-k: tiles (float16 score tiles, group maxima); fused "
                                  "(one Triton kernel keeps only the scores above each query's running k-th, the "
                                  "tiles never written; CUDA GPUs with Triton); overlap (the tiles, each tile's "
                                  "selection on a second CUDA stream behind the next tile's GEMM: the same top-k, "
                                  "1.03x the tiles on an H100, 0.8 GiB more GPU memory); auto: overlap on a GPU, "
                                  "tiles on a CPU (fused ran no faster on an H200)"),
    # telemetry
    "eval.every": (MAY, "steps between the trainer's evaluations of data.eval_split (trainer/evaluator.py); null: "
                   "at step 0 and the last step for inbatch/static, none for async (its refreshes evaluate); 0: never"),
    "eval.best_metric": (MAY, "the measure checkpoints/best.json follows (that checkpoint is never pruned), over "
                         "the trainer's evaluations (async: set eval.every); null: no best alias"),
    "eval.depth": (MAY, "documents retrieved per eval query (recall@depth is the deepest measure)"),
    "telemetry.tensorboard": (MAY, "trainer writes RUN_DIR/tensorboard/trainer"),
    "telemetry.prometheus_port": (MAY, "base port: broker +0, trainer +1, inferencer i +2+i; 0: any free; "
                                       "null: none"),
    "telemetry.prometheus_addr": (MAY, "address of the Prometheus endpoints (0.0.0.0 in containers)"),
    "telemetry.mlflow": (MAY, "MLflow tracking URI for the trainer's metrics (e.g. file:./mlruns, "
                              "pip install 'ance[mlflow]'); null: off"),
    "telemetry.wandb": (MAY, "Weights & Biases project for the trainer's metrics (offline unless "
                             "WANDB_MODE says otherwise; pip install 'ance[wandb]'); null: off"),
    # launch
    "launch.inferencers": (MAY, "CPU inferencer workers when no --inferencer-gpus"),
    "launch.restart_backoff_s": (MAY, "delay before restart n (the last one repeats)"),
    "launch.max_restarts": (MAY, "restarts per process over the whole run"),

    "launch.slurm.trainer_nodes": (MAY, "`ance launch --slurm`: the first N nodes of the allocation run the trainer "
                                   "group (torchrun, c10d rendezvous on the first); the broker runs on the first"),
    "launch.slurm.inferencer_nodes": (MAY, "--slurm: the next M nodes run the inferencer pool (one per GPU); null: "
                                      "the rest; 0: the pool on the first node"),
    "launch.slurm.cpu_inferencers": (MAY, "--slurm: inferencers per inferencer node without GPUs"),
    "launch.slurm.cpu_trainer_procs": (MAY, "--slurm: trainer ranks per trainer node without GPUs (gloo)"),
    "launch.slurm.broker_port": (MAY, "--slurm: the broker's port on the first node (bound 0.0.0.0, always with "
                                 "CURVE keys)"),
    "launch.slurm.rdzv_port": (MAY, "--slurm: torchrun's c10d rendezvous port on the first trainer node"),
    "launch.slurm.shared_fs": (MAY, "--slurm: whether the nodes share RUN_DIR; false: weights through the broker "
                               "(broker.send_weights), keys and the run secret from broker.curve_keys (`ance keys`)"),
    "launch.slurm.wait_s": (MAY, "--slurm: how long the other nodes wait for the first node's set-up"),}

# Keys that once existed: a config that still sets one gets this advice instead of "unknown key".
REMOVED: dict[str, str] = {
    "train.num_workers": "train.num_workers was removed (it never did anything: batches are built from "
                         "token caches in memory); delete it from the config",
}
