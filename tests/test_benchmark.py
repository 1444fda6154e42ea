"""`ance benchmark`: 2 tiny models x 3 BEIR-format datasets in one call, a BEIR-style table with
Holm-adjusted paired tests (issue 24)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ance.eval.table import holm, render

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "scifact" / "corpus.jsonl").is_file() or
                                not (DATA / "squad" / "corpus.jsonl").is_file(), reason=f"no SciFact/SQuAD at {DATA}")


def small_scifact(out: Path) -> Path:
    """A BEIR folder of its own: SciFact's dev judgements and documents, plus 200 others, no train split."""
    qrels = (DATA / "scifact" / "qrels" / "dev.tsv").read_text().splitlines()
    judged = {line.split("\t")[1] for line in qrels[1:]}
    lines = (DATA / "scifact" / "corpus.jsonl").read_text().splitlines()
    keep = [line for line in lines if json.loads(line)["_id"] in judged]
    keep += [line for line in lines if json.loads(line)["_id"] not in judged][:200]
    (out / "qrels").mkdir(parents=True)
    (out / "corpus.jsonl").write_text("\n".join(keep) + "\n")
    (out / "queries.jsonl").write_text((DATA / "scifact" / "queries.jsonl").read_text())
    (out / "qrels" / "dev.tsv").write_text("\n".join(qrels) + "\n")
    return out


def other_model(out: Path) -> Path:
    """tiny-bert with its weights moved a little: a second model that ranks differently."""
    from ance.model.biencoder import BiEncoder, resolve_model

    model = BiEncoder.load(resolve_model("tiny-bert"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    model.save(out)
    return out


def test_two_models_over_three_datasets(tmp_path, capsys):
    from ance.cli import main

    mini = small_scifact(tmp_path / "scifact-mini")
    other = other_model(tmp_path / "tiny-moved")
    argv = ["benchmark", "tiny=tiny-bert", f"moved={other}", "--data", str(DATA / "scifact"), str(mini),
            str(DATA / "squad"), "--split", "test", "dev", "--max-docs", "300", "--max-queries", "20",
            "--max-length", "64", "--batch-size", "64", "--device", "cpu", "--quiet", "--table", "json",
            "--cache-dir", str(tmp_path / "cache"), "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["datasets"] == ["scifact", "scifact-mini", "squad"] and table["systems"] == ["tiny", "moved"]
    for measure in ("ndcg@10", "recall@100"):
        tested = [c for c in table["cells"] if c["measure"] == measure and c["p"] is not None]
        assert len(tested) == 3 and all(c["system"] == "moved" and c["n_paired"] == 20 for c in tested)
        assert [c["p_holm"] for c in tested] == pytest.approx(holm([c["p"] for c in tested]))
    assert len(list((tmp_path / "runs").rglob("*.trec"))) == 6
    md = render(table, "md")
    assert md.startswith("| ndcg@10 | scifact | scifact-mini | squad | avg |") and "Holm correction over the 3" in md
    assert r"\begin{tabular}{lrrrr}" in render(table, "latex")
