"""Hand-off: a checkpoint as a plain model dir a colleague loads with sentence-transformers or
transformers (``ance export CKPT OUT``): the model files without the trainer state or the manifest,
a model card (``README.md``: base model, data, recipe, evaluation, command), every file 0644 and
folder 0755 under the usual umask 022.

The files are written into ``OUT.tmp-<pid>`` and renamed into place: an interrupted export leaves
no half model at ``OUT``, and an existing ``OUT`` is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ance.model.lora import merge_adapter
from ance.run.errors import ConfigError
from ance.run.fsio import fsync_dir, honour_umask
from ance.run.rundir import CONFIG, MANIFEST, METRICS, parse_step, resolve_alias

#: never exported: the optimizer state (most of a checkpoint's bytes) and the atomic-write marker
SKIP = ("trainer_state.", MANIFEST)


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory of ``RUN/checkpoints/step-N``, when it has its config."""
    run = checkpoint.parent.parent
    return run if checkpoint.parent.name == "checkpoints" and (run / CONFIG).is_file() else None


def export_model(checkpoint: str | Path, out: str | Path, *, command: str | None = None) -> Path:
    """Write ``checkpoint`` (a checkpoint dir or alias ``RUN/checkpoints/best|final``) as a plain model
    dir at ``out`` (which must not exist, or be an empty folder); returns ``out``."""
    src = Path(resolve_alias(checkpoint))
    out = Path(out)
    if not src.is_dir() or not ((src / "config.json").is_file() or (src / "adapter_config.json").is_file()):
        raise ConfigError(f"{checkpoint}: not a model dir (no config.json); give RUN/checkpoints/step-N, "
                          "RUN/checkpoints/best or final")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; pick a new OUT (nothing is overwritten)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        if (src / "adapter_config.json").is_file() or any(src.glob("*/adapter_config.json")):
            merge_adapter(src, tmp)  # a LoRA checkpoint: the adapters folded into the base's weights
        else:
            _copy_model(src, tmp)
        card = model_card(src, run_dir_of(src), command=command)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        honour_umask(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _copy_model(src: Path, dst: Path) -> None:
    """Regular files of ``src`` (no symlinks, nothing outside it), minus :data:`SKIP`."""
    dst.mkdir(parents=True)
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_symlink() or any(part.startswith(".") for part in rel.parts) or p.name.startswith(SKIP):
            continue
        if p.is_dir():
            (dst / rel).mkdir(exist_ok=True)
        elif p.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst / rel)


def _eval_rows(run: Path | None) -> list[dict[str, Any]]:
    """The run's evaluations (the trainer's ``eval`` events, else the refreshes'), one per step."""
    if run is None or not (run / METRICS).is_file():
        return []
    from ance.run.telemetry import read_metrics

    rows: dict[int, dict] = {}
    for ev in read_metrics(run / METRICS):
        if ev.get("event") in ("eval", "refresh") and ev.get("eval_ndcg@10") is not None:
            step = ev.get("step") if ev.get("event") == "eval" else ev.get("version")
            if isinstance(step, int):
                rows[step] = ev
    return [rows[s] for s in sorted(rows)]


def model_card(src: Path, run: Path | None, *, command: str | None = None) -> str:
    """README.md of an exported model: what it is, how it was trained, how well it does, how to load it."""
    ance_json = _json(src / "ance.json")
    st = _json(src / "sentence_bert_config.json")
    cfg: dict[str, Any] = {}
    if run is not None:
        import yaml

        cfg = yaml.safe_load((run / CONFIG).read_text(encoding="utf-8")) or {}
    m, d, t, n = (cfg.get(k, {}) for k in ("model", "data", "train", "negatives"))
    step = parse_step(src.name)
    lines = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
             "tags: [sentence-transformers, feature-extraction, dense-retrieval, ance]",
             *([f"base_model: {m['name_or_path']}"] if m.get("name_or_path") else []), "---", "",
             f"# {src.parent.parent.name if run else src.name}" + (f" (step {step})" if step is not None else ""),
             "", "A dense retriever (bi-encoder) trained with ance "
             "(ANCE: asynchronously refreshed ANN hard negatives).", "", "## Model", ""]
    lines += [f"* base model: `{m.get('name_or_path', 'unknown')}`",
              f"* pooling: {ance_json.get('pooling', '?')}, normalize: {ance_json.get('normalize', '?')}, "
              f"similarity: {ance_json.get('similarity', '?')}",
              f"* max_seq_length: {st.get('max_seq_length', '?')}"
              + (f" (trained with queries at {m.get('query_max_length')}, passages at {m.get('passage_max_length')} "
                 "tokens)" if m else "")]
    if cfg:
        lines += ["", "## Data and recipe", "",
                  f"* data: `{d.get('path')}`, train split `{d.get('train_split')}`, eval split "
                  f"`{d.get('eval_split')}`" + (f", subset max_docs={d.get('max_docs')} max_queries="
                                                f"{d.get('max_queries')} seed={d.get('subset_seed')}"
                                                if d.get("max_docs") or d.get("max_queries") else ""),
                  f"* negatives: {n.get('source')} ({n.get('n_per_query')} per query"
                  + (f", refreshed, max gap {n.get('max_gap')} steps" if n.get("source") == "async" else "") + ")",
                  f"* training: {t.get('max_steps')} steps, batch {t.get('batch_size')}, lr {t.get('lr')}, "
                  f"loss {t.get('loss')}, temperature {m.get('temperature')}, seed {cfg.get('seed')}"]
    rows = _eval_rows(run)
    if rows:
        keys = [k for k in ("eval_ndcg@10", "eval_mrr@10", "eval_recall@100") if any(k in r for r in rows)]
        lines += ["", f"## Evaluation ({d.get('eval_split', 'eval')} split{' subset' if d.get('max_docs') else ''})",
                  "", "| step | " + " | ".join(k[5:] for k in keys) + " |", "|---:|" + "---:|" * len(keys)]
        for r in rows:
            s = r.get("step", r.get("version"))
            mark = " (this model)" if s == step else ""
            lines.append(f"| {s}{mark} | " + " | ".join(f"{r[k]:.4f}" if isinstance(r.get(k), float) else "–"
                                                          for k in keys) + " |")
    lines += ["", "## Use", "", "```python", "from sentence_transformers import SentenceTransformer",
              "model = SentenceTransformer('PATH_TO_THIS_DIR')",
              "q = model.encode(['what causes fever?'])", "p = model.encode(['Fever is caused by ...'])",
              "print(model.similarity(q, p))", "```", "",
              "Plain transformers: `AutoModel.from_pretrained(dir)`, then "
              f"{ance_json.get('pooling', 'mean')} pooling"
              + (" and L2 normalisation" if ance_json.get("normalize", True) else "") + "."]
    if (src / "query").is_dir():
        lines += ["", "Separate towers: the query encoder is in `query/` (load it for queries)."]
    if command:
        lines += ["", "## Made with", "", "```", command, "```"]
    return "\n".join(lines) + "\n"


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
