"""Reading back a W&B offline run (``RUN_DIR/wandb/offline-run-*/run-*.wandb``) without a network.

wandb >= 0.19 has no Python reader of its run log any more (``wandb.sdk.internal.datastore`` went
with the move to the Go ``wandb-core`` service) and writes no ``wandb-summary.json`` offline; the
log is what ``wandb sync`` uploads. Its format is LevelDB's log format behind a 7-byte header
(``:W&B``, magic 0xBEE1, version 0): 32 KiB blocks of records, each a 7-byte header (CRC, length,
type: 1 full, 2 first, 3 middle, 4 last) and a chunk; a block's tail too short for a header is
padding. A whole record is one ``wandb_internal_pb2.Record`` protobuf (wandb's own message).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

HEADER = 7
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: str | Path) -> Iterator[Any]:
    """The ``Record`` protobufs of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and data[4:6] == b"\xe1\xbe" and data[6] == 0, f"{path}: not a W&B run log"
    i, pending = HEADER, b""
    while i + HEADER <= len(data):
        space = BLOCK - i % BLOCK
        if space < HEADER:
            i += space
            continue
        length, kind = int.from_bytes(data[i + 4:i + 6], "little"), data[i + 6]
        chunk = data[i + HEADER:i + HEADER + length]
        i += HEADER + length
        if kind == 0:  # zero padding: the end of what was written
            break
        assert kind in (FULL, FIRST, MIDDLE, LAST), f"{path}: record type {kind} at byte {i}"
        if kind in (FIRST, MIDDLE):
            pending += chunk
            continue
        record = pb.Record()
        record.ParseFromString(pending + chunk)
        pending = b""
        yield record


def _items(items) -> dict[str, Any]:
    return {(it.key or "/".join(it.nested_key)): json.loads(it.value_json) for it in items}


def wandb_run(run_dir: str | Path) -> dict[str, Any]:
    """The one offline run under ``run_dir/wandb``: its ``run`` (project, name, config), ``history`` rows,
    ``metrics`` defined (name -> step metric) and ``exit`` code (None when the run never finished)."""
    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, [p.name for p in runs]
    out: dict[str, Any] = {"run": None, "history": [], "metrics": {}, "exit": None, "kinds": []}
    for record in wandb_records(next(runs[0].glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        out["kinds"].append(kind)
        if kind == "run":
            out["run"] = {"project": record.run.project, "name": record.run.display_name,
                          "config": {k: v for k, v in _items(record.run.config.update).items() if k != "_wandb"}}
        elif kind == "history":
            out["history"].append(_items(record.history.item))
        elif kind == "metric":
            out["metrics"][record.metric.name or record.metric.glob_name] = record.metric.step_metric
        elif kind == "exit":
            out["exit"] = record.exit.exit_code
    return out
