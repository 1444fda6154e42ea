from pathlib import Path

import pytest
import yaml

from ance.run.config import config_hash, load_config, load_run_config, parse_overrides, save_config
from ance.run.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = write(tmp_path, "train:\n  lr: 1.0e-4\n  max_steps: 10\n")
    cfg = load_config(p, ["train.lr=3e-5", "negatives.max_gap=7", "train.checkpoint_every=5", "run_dir=runs/x",
                          "data.eval_split=null"])
    assert cfg.train.lr == pytest.approx(3e-5)
    assert cfg.train.max_steps == 10
    assert cfg.negatives.max_gap == 7
    assert cfg.run_dir == "runs/x"
    assert cfg.data.eval_split is None


def test_unknown_key_lists_valid_ones(tmp_path):
    p = write(tmp_path, "train:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"unknown config key train.learning_rate.*lr"):
        load_config(p)


def test_bad_types_and_choices(tmp_path):
    with pytest.raises(ConfigError, match="train.max_steps: expected an integer"):
        load_config(None, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="model.pooling"):
        load_config(None, ["model.pooling=max"])
    with pytest.raises(ConfigError, match="rank_window"):
        load_config(None, ["negatives.rank_window=[5, 2]"])
    with pytest.raises(ConfigError, match="static_file"):
        load_config(None, ["negatives.warmup=static"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_invalid_yaml_names_line(tmp_path):
    p = write(tmp_path, "train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_roundtrip_and_hash(tmp_path):
    cfg = load_config(None, ["train.max_steps=5", f"run_dir={tmp_path / 'run'}"])
    path = save_config(cfg)
    assert yaml.safe_load(path.read_text())["train"]["max_steps"] == 5
    again = load_run_config(tmp_path / "run")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(None, ["train.max_steps=6"])) != config_hash(cfg)
    # run_dir does not change the hash
    assert config_hash(load_config(None, ["train.max_steps=5", "run_dir=elsewhere"])) == config_hash(cfg)


def test_on_off_choices_read_as_yaml_writes_them(tmp_path):
    """YAML 1.1 reads a bare on / off as true / false: a key whose choices are on / off takes them back."""
    assert load_config(write(tmp_path, "inferencer:\n  compile: off\n")).inferencer.compile == "off"
    assert load_config(None, ["inferencer.compile=on"]).inferencer.compile == "on"
    assert load_config(None, ["inferencer.compile=max-autotune"]).inferencer.compile == "max-autotune"
    with pytest.raises(ConfigError, match="inferencer.compile"):
        load_config(None, ["inferencer.compile=fast"])
    with pytest.raises(ConfigError, match="data.format: expected a string"):  # other keys stay strict
        load_config(None, ["data.format=off"])


def test_send_weights_needs_a_frame_with_room_for_weights():
    # 1 MiB of every frame is the job itself: at the 1 MiB minimum no checkpoint could ever be shipped
    with pytest.raises(ConfigError, match=r"broker.max_frame_bytes=1048576 leaves no room.*send_weights=false"):
        load_config(None, ["broker.send_weights=true", "broker.max_frame_bytes=1048576"])
    load_config(None, ["broker.send_weights=false", "broker.max_frame_bytes=1048576"])  # nothing to ship: fine
    load_config(None, ["broker.send_weights=true", "broker.max_frame_bytes=2097152"])
