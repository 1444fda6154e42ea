"""BEIR datasets by name: ``data.path: beir:scifact`` downloads and unpacks the
official BEIR zip once into the cache (``$ANCE_CACHE_DIR/beir/<name>``, default
``~/.cache/ance``) and reads it from there afterwards.

The URL template is BEIR's public mirror; ``$ANCE_BEIR_URL`` overrides it (a
``{name}`` placeholder; ``file://`` works, for mirrors and tests). The archive
is unpacked into a temporary folder beside the target and renamed into place,
so an interrupted download never leaves a half dataset behind.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from ance.run.errors import DataError
from ance.run.fsio import default_cache_dir

PREFIX = "beir:"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*(/[a-z0-9_.-]+)?$")


def cache_root() -> Path:
    return default_cache_dir() / "beir"


def resolve_data_path(path: str | Path) -> Path:
    """``beir:NAME`` → the local folder (downloaded on first use); anything else unchanged."""
    text = str(path)
    if not text.startswith(PREFIX):
        return Path(path)
    name = text[len(PREFIX):]
    if not _NAME.match(name):
        raise DataError(text, None, "not a BEIR dataset name (e.g. beir:scifact, beir:nfcorpus, "
                                    "beir:cqadupstack/android)")
    top = name.split("/")[0]
    target = cache_root() / top
    if not (target / "corpus.jsonl").exists() and not (target / name.split("/")[-1]).is_dir():
        download(top, target)
    return target / name.split("/", 1)[1] if "/" in name else target


def download(name: str, target: Path) -> Path:
    url = os.environ.get("ANCE_BEIR_URL", BEIR_URL).format(name=name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        archive = tmp / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(archive, "wb") as f:
                shutil.copyfileobj(r, f, 1 << 20)
        except OSError as e:
            raise DataError(f"beir:{name}", None, f"could not download {url} ({e}); download and unzip it "
                                                  f"yourself and set data.path to the folder") from e
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp / "x")
        except zipfile.BadZipFile as e:
            raise DataError(url, None, f"not a zip archive ({e})") from e
        # BEIR zips hold one top folder named after the dataset
        inner = [p for p in (tmp / "x").iterdir() if p.is_dir()]
        src = inner[0] if len(inner) == 1 and not (tmp / "x" / "corpus.jsonl").exists() else tmp / "x"
        if not (src / "corpus.jsonl").exists() and not any(p.is_dir() for p in src.iterdir()):
            raise DataError(url, None, "the archive holds no corpus.jsonl; is this a BEIR dataset?")
        os.replace(src, target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
