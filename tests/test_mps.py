"""`ance launch --mps`: when the launcher runs a CUDA MPS daemon, and what its children are given.

The daemon itself needs a GPU (exercised on the device, docs/benchmarks.md co-location); here the
decision, the private pipe directory and the one-line error when the binary is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ance.run.errors import ConfigError
from ance.launch.mps import client_env, pipe_dir_for, shares_gpu, wanted

ROOT = Path(__file__).resolve().parents[1]


def test_auto_only_when_a_trainer_gpu_runs_an_inferencer_too():
    assert shares_gpu([0], [0]) and not shares_gpu([0], [1])
    assert wanted("auto", [0], [0], "/usr/bin/nvidia-cuda-mps-control")
    assert not wanted("auto", [0], [1], "/usr/bin/nvidia-cuda-mps-control")
    assert not wanted("auto", [0], [0], None)          # no binary: auto quietly stays off
    assert not wanted("off", [0], [0], "/usr/bin/nvidia-cuda-mps-control")
    assert not wanted("on", [], [], "/usr/bin/nvidia-cuda-mps-control")  # CPU run: nothing to share
    assert wanted("on", [0], [1], "/usr/bin/nvidia-cuda-mps-control")


def test_a_daemon_named_by_the_environment_is_used_not_doubled():
    assert not wanted("on", [0], [0], "/usr/bin/nvidia-cuda-mps-control", existing="/tmp/mps")
    assert not wanted("auto", [0], [0], None, existing="/tmp/mps")  # no error: the user runs MPS


def test_on_without_the_binary_says_what_to_do():
    with pytest.raises(ConfigError, match="nvidia-cuda-mps-control is not on PATH.*--mps off"):
        wanted("on", [0], [0], None)


def test_pipe_dir_is_short_private_and_per_run(tmp_path):
    deep = tmp_path / ("x" * 150) / "run"
    a, b = pipe_dir_for(deep, "/tmp"), pipe_dir_for(tmp_path / "other", "/tmp")
    assert a != b and len(str(a)) < 40 and a == pipe_dir_for(deep, "/tmp")
    env = client_env(a, tmp_path / "logs" / "mps")
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(a) and env["CUDA_MPS_LOG_DIRECTORY"] == str(tmp_path / "logs" / "mps")


def test_launch_mps_on_without_the_binary_exits_2_before_touching_the_run_dir(tmp_path):
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "ance.cli", "launch", str(ROOT / "configs" / "tiny-cpu.yaml"),
                          f"run_dir={run}", "--trainer-gpus", "0", "--inferencer-gpus", "0", "--mps", "on"],
                         cwd=ROOT, capture_output=True, text=True, env={"PATH": "/nonexistent", "HF_HUB_OFFLINE": "1"},
                         timeout=120)
    assert res.returncode == 2, res.stderr
    assert "nvidia-cuda-mps-control" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not run.exists()
