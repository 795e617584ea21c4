"""A store written before the redesign (its schema pinned here, as learnforget 0.x wrote it) still loads,
reads as the same rows, reports, and is accepted as the same study."""

from __future__ import annotations

import json
import sqlite3

from learnforget.config.arms import configuration_label, expand_arms, sweep_label
from learnforget.config.load import load_study
from learnforget.study.identity import check_same_study
from learnforget.study.store import Store
from learnforget.study.store_schema import row_checksum
from tests.conftest import cli_exit_code

# The arms table as the store of commit 6acdb6a created it: settings, then run columns, peft and
# quantization added at the end by migration.
OLD_SCHEMA = """
CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE arms (
    name TEXT PRIMARY KEY, method TEXT, rank INTEGER, alpha REAL, target_modules TEXT,
    learning_rate REAL, weight_decay REAL, dropout REAL, train_embeddings INTEGER, optimizer TEXT,
    seed INTEGER, trainable_params INTEGER, total_params INTEGER, status TEXT DEFAULT 'pending',
    tokens_per_s REAL, peak_memory_mb REAL, train_seconds REAL, error TEXT,
    arm_id TEXT, registered REAL, updated REAL, peft TEXT, quantization TEXT, wall_seconds REAL);
CREATE TABLE metrics (
    arm TEXT, step INTEGER, tokens INTEGER, metric TEXT, value REAL, checksum TEXT,
    PRIMARY KEY (arm, tokens, metric));
"""


def write_old_store(directory, study) -> dict:
    """A finished two-seed study in the old format, as one legacy results.db; returns {(arm, metric): value}."""
    directory.mkdir(parents=True)
    conn = sqlite3.connect(directory / "results.db")
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO study VALUES ('config', ?)", (json.dumps(json.loads(study.model_dump_json())),))
    conn.execute("INSERT INTO arms (name, method, status) VALUES ('base', 'base', 'done')")
    values = {}
    for i, arm in enumerate(expand_arms(study)):
        s = arm.model_dump()
        conn.execute(
            "INSERT INTO arms (name, method, rank, alpha, target_modules, learning_rate, weight_decay, dropout,"
            " train_embeddings, optimizer, seed, status, arm_id, registered) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (arm.name, s["method"], s["rank"], s["alpha"], s["target_modules"], s["learning_rate"],
             s["weight_decay"], s["dropout"], s["train_embeddings"], s["optimizer"], s["seed"], "done", arm.id, i),
        )  # fmt: skip
        values[arm.name] = 1.0 + i / 8
    values["base"] = 2.0
    for arm, value in values.items():
        for metric, v in (("code/loss", value), ("english/loss", 3.0 + value / 4)):
            tokens = 0 if arm == "base" else 4096
            conn.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)",
                         (arm, tokens // 1024, tokens, metric, v, row_checksum(arm, tokens // 1024, tokens, metric, v)))  # fmt: skip
    conn.commit()
    conn.close()
    return values


def test_a_store_from_before_the_redesign_loads_reports_and_resumes(tmp_path):
    study = load_study(None, ["arms.1.seed=[0,1]", "arms.1.rank=4"])
    directory = tmp_path / "old"
    values = write_old_store(directory, study)
    store = Store(directory)
    rows = store.metric_rows()
    assert {(r["arm"], r["metric"]): r["value"] for r in rows if r["metric"] == "code/loss"} == {
        (arm, "code/loss"): v for arm, v in values.items()
    }
    # Seed groups and sweeps come from the stored settings: both seeds of the LoRA arm share one.
    groups = {r["arm"]: (configuration_label(r), sweep_label(r)) for r in rows}
    assert (
        groups["lora-r4-all-lr2e-3-s0"]
        == groups["lora-r4-all-lr2e-3-s1"]
        == ("lora-r4-all-lr2e-3", "lora-r4-all")
    )
    assert groups["base"] == ("base", "base")
    check_same_study(store, study, expand_arms(study))  # the same study: a rerun resumes it
    assert cli_exit_code(["report", str(directory)]) == 0
    summary = (directory / "summary.md").read_text()
    assert "lora-r4-all-lr2e-3" in summary and "full-lr2e-4-s0" in summary
