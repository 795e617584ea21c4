"""The results store's schema: its tables, an arm's columns (from ARM_SETTINGS), row checksums, migration."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

from learnforget.config.arms import ARM_SETTINGS
from learnforget.errors import UserError

DB_NAME = "results.db"
PARTS_DIR = "results"
LEGACY_PART = "legacy.db"

SCHEMA_TEMPLATE = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT);
{arms}
CREATE TABLE IF NOT EXISTS metrics (
    arm TEXT, step INTEGER, tokens INTEGER, metric TEXT, value REAL, checksum TEXT,
    PRIMARY KEY (arm, tokens, metric));
CREATE TABLE IF NOT EXISTS matrices (
    arm TEXT, tokens INTEGER, name TEXT, rank_delta INTEGER, rank_base INTEGER, rank_random INTEGER,
    min_dim INTEGER, delta_fro REAL, relative_delta REAL, intruders INTEGER, PRIMARY KEY (arm, tokens, name));
CREATE TABLE IF NOT EXISTS files (
    path TEXT, sha256 TEXT, size INTEGER, written REAL, PRIMARY KEY (path, sha256));
CREATE TABLE IF NOT EXISTS starts (
    arm TEXT, arm_id TEXT, host TEXT, pid INTEGER, started REAL, PRIMARY KEY (arm, host, pid, started));
CREATE TABLE IF NOT EXISTS steps (
    arm TEXT, step INTEGER, loss REAL, learning_rate REAL, grad_norm REAL, PRIMARY KEY (arm, step));
CREATE TABLE IF NOT EXISTS stage_times (
    arm TEXT, step INTEGER, stage TEXT, seconds REAL, PRIMARY KEY (arm, step, stage));
"""

# An arm's row: its settings (config/arms.py's ARM_SETTINGS, the one list of them), then how it ran.
RUN_COLUMNS: dict[str, str] = {
    "trainable_params": "INTEGER", "total_params": "INTEGER", "status": "TEXT DEFAULT 'pending'",
    "tokens_per_s": "REAL", "peak_memory_mb": "REAL", "train_seconds": "REAL", "error": "TEXT",
    "arm_id": "TEXT", "registered": "REAL", "updated": "REAL", "wall_seconds": "REAL",
}  # fmt: skip
ARM_COLUMNS = tuple(ARM_SETTINGS)
ALL_ARM_COLUMNS = ("name", *ARM_COLUMNS, *RUN_COLUMNS)
SCHEMA = SCHEMA_TEMPLATE.format(
    arms="CREATE TABLE IF NOT EXISTS arms (name TEXT PRIMARY KEY, "
    + ", ".join(f"{column} {kind}" for column, kind in {**ARM_SETTINGS, **RUN_COLUMNS}.items())
    + ");"
)
# Columns added since the first schema: older stores get them on migration.
ADDED_ARM_COLUMNS = {
    c: {**ARM_SETTINGS, **RUN_COLUMNS}[c]
    for c in ("arm_id", "registered", "updated", "peft", "quantization", "wall_seconds")
}
# Arm settings stored as JSON text (the peft keywords), read back as they were given.
JSON_ARM_COLUMNS = ("peft",)
# The snapshot is refreshed at most this often by one process (and whenever `refresh_snapshot` is called).
SNAPSHOT_SECONDS = 1.0
_last_snapshot: dict[str, float] = {}
ROW_TABLES = ("study", "metrics", "matrices", "files", "starts", "steps", "stage_times")
# An arm's status: FAILED arms' numbers are not results (left out of tables, frontiers, noise and claims);
# FINISHED arms are not trained again by a rerun.
FAILED = ("failed", "diverged")
FINISHED = ("done", "diverged")


def store_error(path: Path, error: Exception) -> UserError:
    return UserError(
        f"{path}: not a readable results store ({error}); move it away and rerun to recompute the study, "
        "or restore it from a backup"
    )


def _migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)
    have = {r[1] for r in conn.execute("PRAGMA table_info(arms)")}
    for column, kind in ADDED_ARM_COLUMNS.items():
        if column not in have:
            conn.execute(f"ALTER TABLE arms ADD COLUMN {column} {kind}")
    if "checksum" not in {r[1] for r in conn.execute("PRAGMA table_info(metrics)")}:
        conn.execute("ALTER TABLE metrics ADD COLUMN checksum TEXT")  # older rows keep none


def row_checksum(arm: str, step: int, tokens: int, metric: str, value: float | None) -> str:
    """16 hex digits of the sha256 of a metric row as SQLite stores it (NaN is stored as NULL): an edited
    value, arm, milestone or name no longer matches."""
    value = None if value is None or value != value else float(value)
    return hashlib.sha256(json.dumps([arm, step, tokens, metric, value]).encode()).hexdigest()[:16]


class StoreDamaged(UserError):
    """A part's rows do not match their checksums: edited or damaged after they were written."""
