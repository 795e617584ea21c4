"""Shared fixtures: a micro study (seconds) whose built-in base is pretrained once per test session."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
import yaml

MICRO_STUDY = {
    "name": "micro",
    "base": {
        "vocab_size": 300, "tokenizer_bytes": 50_000, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
        "intermediate_size": 64, "seq_len": 128, "steps": 30, "batch_size": 4, "threads": 1,
    },
    "budget_tokens": 6144,
    "batch_size": 4,
    "seq_len": 128,
    "milestones": 3,
    "workers": 1,
    "eval": {
        "loss_tokens": 1024, "choice_items": 8, "generation_problems": 4, "reference_problems": 4,
        "diversity_prompts": 2, "diversity_samples": 3, "max_new_tokens": 16,
    },
    "arms": [{"method": "full", "learning_rate": 1e-3}, {"method": "lora", "rank": 2, "learning_rate": 1e-2}],
}  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Built-in bases go to a per-session cache, never the user's."""
    os.environ["LEARNFORGET_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def micro_config(tmp_path_factory) -> Path:
    """The micro study as a YAML file."""
    path = tmp_path_factory.mktemp("configs") / "micro.yaml"
    path.write_text(yaml.safe_dump(MICRO_STUDY))
    return path


def cli_exit_code(args: list[str]) -> int:
    """Run `learnforget ARGS` in this process (torch and transformers are imported once) and return its exit code."""
    import sys

    from learnforget.cli import main

    argv = sys.argv
    sys.argv = ["learnforget", *args]
    try:
        main()
        return 0
    except SystemExit as e:
        return e.code or 0
    finally:
        sys.argv = argv


def launch_env(tmp_path: Path) -> dict[str, str]:
    """Environment for `learnforget run` subprocesses: offline, one thread, a cache all runs share."""
    return dict(
        os.environ, LEARNFORGET_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"
    )


def loss_metrics(study_dir: Path) -> dict[tuple[str, int, str], float]:
    """(arm, tokens, metric) -> value of every loss metric (`*/loss`, `*/ref_nll`) in a study's store."""
    with sqlite3.connect(study_dir / "results.db") as conn:
        rows = conn.execute(
            "SELECT arm, tokens, metric, value FROM metrics WHERE metric LIKE '%loss' OR metric LIKE '%nll'"
        )
        return {(a, t, m): v for a, t, m, v in rows}
