"""ance.run.rundir: the one place that names the paths of a run directory."""

from __future__ import annotations

import pytest

from ance.run.rundir import (CONFIG, MANIFEST, METRICS, TRAINER_STATE, RunDir, checkpoint_files, is_complete_checkpoint,
                             negatives_name, parse_negatives_name, parse_step, shipped_bytes, step_name,
                             weights_limit)


def test_names_round_trip():
    assert step_name(200) == "step-000200" and parse_step("step-000200") == 200
    assert parse_step("step-1234567") == 1234567
    assert parse_step(".tmp-step-000004-99") is None and parse_step("step-12") is None
    assert negatives_name(7) == "step-000007.tsv" and negatives_name(7, partial=True) == "step-000007.partial.tsv"
    assert parse_negatives_name("step-000007.tsv") == 7
    assert parse_negatives_name("step-000007.partial.tsv") is None


def test_paths(tmp_path):
    run = RunDir(str(tmp_path))
    assert run.root == tmp_path and run.config == tmp_path / CONFIG and run.metrics == tmp_path / METRICS
    assert run.checkpoint(3) == tmp_path / "checkpoints" / "step-000003"
    assert run.negatives(3, partial=True) == tmp_path / "negatives" / "step-000003.partial.tsv"
    assert run.log("inferencer-0") == tmp_path / "logs" / "inferencer-0.log"
    assert run.cache == tmp_path / "cache" and run.tensorboard == tmp_path / "tensorboard"
    with pytest.raises(AttributeError):
        run.root = tmp_path  # frozen


def test_listings_see_complete_entries_only(tmp_path):
    run = RunDir(tmp_path)
    assert run.complete_checkpoints() == [] and run.latest_checkpoint() is None and run.complete_negatives() == []
    for step, complete in ((2, True), (4, True), (6, False)):
        run.checkpoint(step).mkdir(parents=True)
        if complete:
            (run.checkpoint(step) / MANIFEST).write_text("{}")
    (run.checkpoints / ".tmp-step-000008-1").mkdir()
    assert run.complete_checkpoints() == [(2, run.checkpoint(2)), (4, run.checkpoint(4))]
    assert run.latest_checkpoint() == (4, run.checkpoint(4))
    assert is_complete_checkpoint(run.checkpoint(4)) and not is_complete_checkpoint(run.checkpoint(6))
    run.negatives_dir.mkdir()
    for v, partial in ((1, False), (3, False), (5, True)):
        run.negatives(v, partial).write_text("")
    assert run.complete_negatives() == [(1, run.negatives(1)), (3, run.negatives(3))]


def test_checkpoint_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "x.bin").write_bytes(b"12345")
    (tmp_path / TRAINER_STATE).write_bytes(b"big")
    assert checkpoint_files(tmp_path, 100) == {"config.json": b"{}", "sub/x.bin": b"12345"}
    with pytest.raises(ValueError, match="max_frame_bytes"):
        checkpoint_files(tmp_path, 4)


def test_shipped_bytes_counts_what_checkpoint_files_ships(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "sub" / "x.bin").write_bytes(b"12345")
    (tmp_path / TRAINER_STATE).write_bytes(b"big state")
    (tmp_path / "link").symlink_to(tmp_path / "config.json")
    assert shipped_bytes(tmp_path) == 7 == sum(map(len, checkpoint_files(tmp_path, 100).values()))
    assert weights_limit(3 << 20) == 2 << 20


def test_a_checkpoint_too_large_to_ship_is_a_config_error_before_it_is_announced(tmp_path):
    from ance.run.config import Config
    from ance.run.errors import ConfigError
    from ance.trainer.checkpoint import check_shippable

    ckpt = tmp_path / "step-000008"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    (ckpt / TRAINER_STATE).write_bytes(b"\0" * (8 << 20))  # the optimizer state never ships
    cfg = Config()
    cfg.broker.send_weights, cfg.broker.max_frame_bytes = True, 5 << 20
    check_shippable(cfg, ckpt)
    cfg.broker.max_frame_bytes = 4 << 20  # exactly fits: 4 MiB less the frame's 1 MiB
    check_shippable(cfg, ckpt)
    cfg.broker.max_frame_bytes = (4 << 20) - 1
    with pytest.raises(ConfigError, match=r"step-000008 holds 3 MiB.*broker.send_weights=false"):
        check_shippable(cfg, ckpt)
    cfg.broker.send_weights = False  # inferencers read it from the shared file system
    check_shippable(cfg, ckpt)
