"""The config reference is generated from the dataclasses: every key documented, docs/config.md in step,
`ance config show` / `ance config keys`, and the messages of bad keys, overrides and flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ance.cli import _where, main
from ance.run import reference
from ance.run.config import load_config
from ance.run.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "scifact-quickstart.yaml"


def test_every_config_key_is_documented_with_its_resume_class():
    missing = reference.undocumented()
    assert not missing, (f"config keys without an entry in ance/run/keydocs.py KEYS (add (MAY or FIXED, "
                         f"'what it does') for each, then run `{reference.REGENERATE}`): {', '.join(missing)}")
    assert not reference.stale(), f"KEYS entries that are no config key: {reference.stale()}"


def test_docs_config_md_is_the_generated_reference():
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == reference.markdown(), (
        f"docs/config.md drifted from the config dataclasses; regenerate it: {reference.REGENERATE}")


def test_config_keys_and_show(capsys):
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "train.lr  (float, default 2.0e-05; may change on resume)" in out
    assert "negatives.sampling  (str, default uniform; uniform | top | rank | score; fixed on resume)" in out
    assert main(["config", "show", str(QUICK), "train.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.0001  # peak learning rate" in out
    assert "sampling: uniform  # [uniform | top | rank | score]" in out
    assert yaml.safe_load(out) == load_config(QUICK, ["train.lr=1e-4"]).to_dict()  # a config file again
    assert main(["config", "show", "train.max_steps=7"]) == 0  # no CONFIG: the defaults
    assert "  max_steps: 7" in capsys.readouterr().out


def _error(overrides, path=QUICK) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(path, overrides)
    return str(err.value)


def test_override_errors_name_the_override_and_suggest():
    msg = _error(["train.max_step=5"])
    assert msg.startswith("override train.max_step=5: unknown config key train.max_step; did you mean "
                          "train.max_steps?"), msg
    assert "scifact-quickstart" not in msg
    assert _error(["train.lr=abc"]).startswith("override train.lr=abc: train.lr: expected a number")
    assert "train.num_workers was removed" in _error(["train.num_workers=8"])


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_step: 3\n")
    assert _error([], bad) == f"{bad}: unknown config key train.max_step; did you mean train.max_steps?"


def test_epochs_is_the_alternative_to_max_steps(tmp_path):
    cfg = load_config(QUICK, ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.max_steps) == (2.0, None)
    cfg = load_config(QUICK, ["train.epochs=2", "train.max_steps=null"])
    assert cfg.train.max_steps is None
    both = tmp_path / "both.yaml"
    both.write_text("train:\n  max_steps: 10\n  epochs: 1\n")
    assert "give exactly one of the two" in _error([], both)
    epochs = tmp_path / "epochs.yaml"
    epochs.write_text("train:\n  epochs: 1\n")
    assert load_config(epochs, ["train.max_steps=50"]).train.epochs is None  # the command line wins


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_hf_style_flags_and_subcommand_usage(capsys):
    err = _cli_error(["train", str(QUICK), "--learning_rate", "1e-5"], capsys)
    assert err.startswith("usage: ance train"), err
    assert "e.g. train.lr=VALUE (not --learning_rate)" in err
    err = _cli_error(["eval", "--run", "x", "--qrels", "y", "--mesures", "ndcg@10"], capsys)
    assert err.startswith("usage: ance eval"), err
    assert "did you mean --measures?" in err
    err = _cli_error(["train", str(QUICK), "--max_steps", "3"], capsys)
    assert "train.max_steps=VALUE" in err


def test_a_missing_relative_path_names_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _where(DataError("../nowhere/scifact", None, "no such directory")) == (
        f" (a relative path, resolved against {tmp_path})")
    assert _where(DataError(str(tmp_path / "x"), None, "no such directory")) == ""
