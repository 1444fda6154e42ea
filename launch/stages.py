"""Where a refresh spent its time: the stage and the shard that held it back, for ``ance monitor``
and ``ance report``. Stages are :data:`ance.wire.protocol.SHARD_STAGES` (per shard; a refresh event
carries the slowest shard's) and :data:`ance.wire.protocol.BROKER_STAGES` (the broker's, summed over
chunks); a refresh event's ``shards`` has one row per shard (``ance.broker.stats.shard_rows``)."""

from __future__ import annotations

from typing import Any

from ance.wire.protocol import BROKER_STAGES, SHARD_STAGES


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seconds(value: float | None) -> str:
    if not is_number(value):
        return "–"
    return f"{value:.2f}s" if value < 10 else f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}min"


def slowest(values: dict[Any, Any]) -> Any:
    """The key of the largest number in ``values`` (the stage or shard that held a refresh back), or None."""
    nums = {k: v for k, v in values.items() if is_number(v)}
    return max(nums, key=nums.get) if nums else None


def breakdown(ev: dict[str, Any]) -> dict[str, Any]:
    """A refresh event's ``stages`` (every stage it logged a number for) and ``shards`` (its rows)."""
    return {"stages": {k: ev[k] for k in SHARD_STAGES + BROKER_STAGES if is_number(ev.get(k))},
            "shards": [dict(r) for r in ev.get("shards") or [] if isinstance(r, dict)]}


def stage_line(stages: dict[str, float]) -> str:
    """``encode slowest: load 0.10s · encode 18.2s · ...  | broker merge 0.36s · ...``."""
    worker = {k: stages[k] for k in SHARD_STAGES if k in stages}
    broker = {k: stages[k] for k in BROKER_STAGES if k in stages and k != "queue_s"}
    top = slowest(worker)
    text = " · ".join(f"{k[:-2]} {seconds(v)}" for k, v in worker.items())
    if broker:
        text += "  | broker " + " · ".join(f"{k[:-2]} {seconds(v)}" for k, v in broker.items())
    return (f"{top[:-2]} slowest: " if top else "") + text


# shard_table's short column names (it fits 80 columns), explained in its legend
SHORT = {"load_s": "load", "encode_s": "enc", "index_s": "idx", "search_s": "srch", "transfer_s": "xfer"}
LEGEND = "dev=device enc=encode idx=index srch=search xfer=transfer *=slowest shard GiB=GPU-peak"


def short_worker(name: Any) -> str:
    """``inferencer-3`` -> ``inf-3`` (the column is narrow; names are unique either way)."""
    text = _text(name)
    return "inf-" + text[len("inferencer-"):] if text.startswith("inferencer-") else text


def shard_table(r: dict[str, Any]):
    """The last refresh shard by shard: which worker and GPU, its stages, and the one that held it back;
    short column names and a legend, so it fits 80 columns."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, padding=(0, 1), pad_edge=False, expand=False, caption=LEGEND, caption_justify="left")
    for col in ("#", "worker", "dev", "docs/s", *(SHORT.get(k, k[:-2]) for k in SHARD_STAGES), "total", "GiB"):
        table.add_column(col, no_wrap=True)
    last = slowest({i: row.get("shard_s") for i, row in enumerate(r["shards"])}) if len(r["shards"]) > 1 else None
    for i, row in enumerate(r["shards"]):
        peak = row.get("gpu_peak_bytes")
        total = seconds(row.get("shard_s")) + ("*" if i == last else "")
        table.add_row(_text(row.get("shard")), short_worker(row.get("worker")), _text(row.get("device")),
                      _text(row.get("encode_docs_per_s"), "{:,.0f}"), *(seconds(row.get(k)) for k in SHARD_STAGES),
                      Text(total, style="yellow" if i == last else ""),
                      f"{peak / 2**30:.1f}" if is_number(peak) else "–")
    return Panel(table, title=f"last refresh v{_text(r.get('version'))} by shard", title_align="left")


def _text(value: Any, fmt: str = "{}") -> str:
    if value is None:
        return "–"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)
