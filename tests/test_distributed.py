"""Scale-out: one arm trained by 2 CPU processes under `accelerate launch` (DDP, gloo) matches 1 process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest
import yaml

from tests.conftest import MICRO_STUDY, launch_env, loss_metrics


def test_two_process_ddp_matches_single_process(tmp_path):
    config = dict(MICRO_STUDY, eval={"loss_tokens": 1024, "choice_items": 0, "generation_problems": 0,
                                     "reference_problems": 0, "diversity_prompts": 0, "spectra": False})  # fmt: skip
    config["arms"] = [{"method": "lora", "rank": 2, "learning_rate": 1e-2}]
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    env = launch_env(tmp_path)
    single = [sys.executable, "-m", "learnforget", "run", str(path), "--out", str(tmp_path / "one")]
    subprocess.run(single, env=env, check=True, capture_output=True, timeout=600)
    # torchrun-style launch (on a machine without GPUs Accelerate then runs DDP on the CPU with gloo).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "learnforget", "run", str(path), "--out", str(tmp_path / "two")]  # fmt: skip
    result = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with sqlite3.connect(tmp_path / "two" / "results.db") as conn:
        assert conn.execute("SELECT value FROM study WHERE key = 'processes'").fetchone()[0] == "2"
    one, two = loss_metrics(tmp_path / "one"), loss_metrics(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) >= 6
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-4), key
    trained = [k for k in one if k[0] != "base"]
    assert any(one[k] != one[("base", 0, k[2])] for k in trained)  # the arm really trained
