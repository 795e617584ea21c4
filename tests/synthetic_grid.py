"""A study store filled with made-up numbers for a paper-sized grid (150 arms), so that reports can be
checked at scale in seconds, without training anything."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path

GRID_ARMS = [
    {"method": "full", "learning_rate": [3e-5, 1e-4, 3e-4, 1e-3, 3e-3], "seed": [0, 1, 2]},
    {"method": "full", "learning_rate": 3e-4, "weight_decay": [0.01, 0.1], "seed": [0, 1, 2]},
    {"method": "full", "learning_rate": 3e-4, "dropout": [0.05, 0.1], "seed": [0, 1, 2]},
    {"method": "full", "learning_rate": 3e-4, "train_embeddings": False, "seed": [0, 1, 2]},
    {"method": "lora", "rank": [1, 4, 16, 64], "target_modules": ["attention", "paper-mlp", "paper-all"],
     "learning_rate": [1e-3, 3e-3, 1e-2], "seed": [0, 1, 2]},
    {"method": "lora", "rank": [4, 16, 64], "target_modules": "paper-all", "learning_rate": 3e-3,
     "train_embeddings": True, "seed": [0, 1, 2]},
]  # fmt: skip


def synthetic_study(study_dir: Path, arms=GRID_ARMS, unfinished: int = 0, seed: int = 0):
    """Write a store for a CPT code study with `arms`; the last `unfinished` arms are left running with
    no numbers. Returns (store, StudyConfig, arm names)."""
    from learnforget.config.arms import expand_arms
    from learnforget.config.study import StudyConfig
    from learnforget.study.store import Store
    from learnforget.study.store_schema import ARM_COLUMNS

    study = StudyConfig.model_validate(
        {"name": "grid", "budget_tokens": 40_960, "milestones": 3, "arms": arms}
    )
    store = Store(study_dir)
    store.set_info("config", json.loads(study.model_dump_json()))
    store.set_info("base_path", "builtin")
    rng = random.Random(seed)
    store.register_arm("base", {"method": "base"})
    store.update_arm("base", status="done", trainable_params=0, total_params=1_600_000)
    base = {"code/loss": 4.14, "english/loss": 4.56, "spectrum/rank_random_fraction": 0.52}
    store.add_metrics("base", 0, 0, {k: v for k, v in base.items() if not k.startswith("spectrum")})
    expanded = expand_arms(study)
    # Rows go into this process's part of the store through one connection: the store's
    # one-transaction-per-call writes take seconds at this size.
    arms, steps, metrics = [], [], []
    for i, arm in enumerate(expanded):
        done = i < len(expanded) - unfinished
        cost = (1000 * (arm.rank or 1500), 9000.0, 4.5, 480.0) if done else (None,) * 4
        settings = arm.model_dump()
        settings["peft"] = json.dumps(arm.peft, sort_keys=True) if arm.peft else None
        row = (arm.name, *[settings.get(c) for c in ARM_COLUMNS], "done" if done else "running", *cost)
        arms.append((*row, time.time() + i * 1e-3))  # registration time: the display order
        if not done:
            continue
        strength = (
            math.log10(arm.learning_rate / 1e-5)
            / 3
            * (1 if arm.method == "full" else math.log2(2 * arm.rank) / 7)
        )
        loss = 4.1
        for step in range(1, study.steps + 1):
            loss -= 0.01 * strength * rng.uniform(0.5, 1.5)
            steps.append((arm.name, step, loss, arm.learning_rate, rng.uniform(0.2, 2)))
        for step in study.milestone_steps():
            progress = step / study.steps
            values = {
                "code/loss": base["code/loss"] - 0.4 * strength * progress + rng.gauss(0, 0.01),
                "english/loss": base["english/loss"] + 0.3 * strength * progress + rng.gauss(0, 0.01),
                "spectrum/rank_delta_fraction": (0.15 if arm.method == "full" else arm.rank / 128)
                * (0.5 + progress),
                "spectrum/rank_random_fraction": base["spectrum/rank_random_fraction"],
            }
            metrics += [(arm.name, step, step * study.tokens_per_step, k, v) for k, v in values.items()]
    extra = (
        "status",
        "trainable_params",
        "tokens_per_s",
        "train_seconds",
        "peak_memory_mb",
        "registered",
    )
    columns = ", ".join(("name", *ARM_COLUMNS, *extra))
    with closing(sqlite3.connect(store.part_path)) as conn, conn:  # this process's part of the store
        conn.executemany(f"INSERT INTO arms ({columns}) VALUES ({', '.join('?' * len(arms[0]))})", arms)
        conn.executemany("INSERT INTO steps VALUES (?, ?, ?, ?, ?)", steps)
        conn.executemany(
            "INSERT INTO metrics (arm, step, tokens, metric, value) VALUES (?, ?, ?, ?, ?)", metrics
        )
    return store, study, [a.name for a in expanded]
