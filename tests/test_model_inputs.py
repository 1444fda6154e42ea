"""Issue 22's bad inputs through the command line: one line, exit 2, no traceback, nothing written.

A prefix longer than the max length, LoRA on a module that does not exist, a decoder whose tokenizer
has no EOS token; and the prompt overrides taken as typed ("query: " is text, not YAML)."""

from __future__ import annotations

import pytest

from ance.run.config import parse_overrides

from helpers_models import tiny_decoder
from test_hostile_inputs import CONFIG, assert_user_error, mini_beir, run_cli, small


def test_prompt_overrides_are_text():
    tree = parse_overrides(["model.query_prefix=query: ", r"model.query_template=Instruct: {task}\nQuery: {text}",
                            "model.passage_prefix=null"])
    assert tree["model"] == {"query_prefix": "query: ", "query_template": "Instruct: {task}\nQuery: {text}",
                             "passage_prefix": None}


def test_prefix_longer_than_max_length(capsys, tmp_path):
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "model.passage_max_length=8",
                               "model.passage_prefix=represent this scientific passage for retrieval please: "])
    assert_user_error(rc, err, "model.passage_prefix", "shorten the prefix or raise model.passage_max_length")
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_lora_on_a_module_that_does_not_exist(capsys, tmp_path):
    pytest.importorskip("peft")
    rc, err = run_cli(capsys, ["train", CONFIG, *small(tmp_path), "train.lora.r=4",
                               "train.lora.target_modules=[no_such_module]"])
    assert_user_error(rc, err, "train.lora.target_modules ['no_such_module']", "its linear layers:", "query")
    assert not list((tmp_path / "run").glob("checkpoints/step-*"))


def test_decoder_without_eos(capsys, tmp_path):
    model = tiny_decoder("qwen3", tmp_path / "noeos", eos=False)
    data = mini_beir(tmp_path / "data")
    rc, err = run_cli(capsys, ["encode", "--model", model, "--data", data, "--out", tmp_path / "emb",
                               "--max-length", 32, "--device", "cpu"])
    assert_user_error(rc, err, "no EOS token", "eos_token")
    assert not (tmp_path / "emb").exists()
