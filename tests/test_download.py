"""`beir:NAME` data paths: downloaded once (here from a file:// mirror), then read from the cache."""

import shutil
import zipfile
from pathlib import Path

import pytest

from ance.data.dataset import load_dataset
from ance.run.errors import DataError

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact"


def make_mirror(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "minifact.zip", "w") as z:
        lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[:50]
        z.writestr("minifact/corpus.jsonl", "\n".join(lines) + "\n")
        ids = [__import__("json").loads(line)["_id"] for line in lines[:3]]
        z.writestr("minifact/queries.jsonl", "".join(
            f'{{"_id": "q{i}", "text": "claim {i}"}}\n' for i in range(3)))
        z.writestr("minifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
            f"q{i}\t{d}\t1\n" for i, d in enumerate(ids)))
    return mirror


@pytest.mark.skipif(not SCIFACT.exists(), reason="needs ../shared/data/scifact")
def test_beir_name_downloads_once_then_reads_the_cache(tmp_path, monkeypatch):
    mirror = make_mirror(tmp_path)
    monkeypatch.setenv("ANCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANCE_BEIR_URL", f"file://{mirror}/{{name}}.zip")
    ds = load_dataset("beir:minifact", splits="test")
    assert len(ds.corpus) == 50 and len(ds.split("test")) == 3
    assert (tmp_path / "cache" / "beir" / "minifact" / "corpus.jsonl").exists()
    shutil.rmtree(mirror)  # second load must not need the network
    assert len(load_dataset("beir:minifact", splits="test").corpus) == 50
    assert not [p for p in (tmp_path / "cache" / "beir").iterdir() if p.name.startswith(".")]


def test_beir_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ANCE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ANCE_BEIR_URL", f"file://{tmp_path}/nowhere/{{name}}.zip")
    with pytest.raises(DataError, match="could not download .*set data.path"):
        load_dataset("beir:scifact", splits="test")
    with pytest.raises(DataError, match="not a BEIR dataset name"):
        load_dataset("beir:../etc", splits="test")
    assert not (tmp_path / "cache" / "beir" / "scifact").exists()
