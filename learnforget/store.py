"""The results store: one SQLite database per study directory (`results.db`), safe under concurrent writers.

Schema (query it with any SQLite client, e.g. `sqlite3 runs/default/results.db`):

    study(key TEXT PRIMARY KEY, value TEXT)            -- 'config' (JSON), 'base_path', 'created'
    arms(name TEXT PRIMARY KEY, method, rank, alpha, target_modules, learning_rate, weight_decay,
         dropout, train_embeddings, optimizer, seed,   -- the arm's settings ('base' has method 'base')
         trainable_params, total_params,               -- counted once per tied weight
         status,                                       -- 'pending' | 'running' | 'done' | 'failed'
         tokens_per_s, peak_memory_mb, train_seconds, error)
    metrics(arm, step, tokens, metric, value,          -- one row per arm x milestone x metric
            PRIMARY KEY (arm, tokens, metric))
    matrices(arm, tokens, name, rank_delta, rank_base, rank_random, min_dim, delta_fro,
             relative_delta, intruders, PRIMARY KEY (arm, tokens, name))   -- ΔW spectra
    steps(arm, step, loss, learning_rate, grad_norm,   -- one row per arm x optimizer step (training curves)
          PRIMARY KEY (arm, step))

Metric names are '<domain>/<measure>', e.g. 'code/loss', 'english/loss', 'english/mc_acc_norm'.
Every write is one transaction (WAL journal, busy timeout), so two processes writing the same study
lose no rows, and a killed process never leaves half a milestone.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

DB_NAME = "results.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS arms (
    name TEXT PRIMARY KEY, method TEXT, rank INTEGER, alpha REAL, target_modules TEXT,
    learning_rate REAL, weight_decay REAL, dropout REAL, train_embeddings INTEGER, optimizer TEXT,
    seed INTEGER, trainable_params INTEGER, total_params INTEGER, status TEXT DEFAULT 'pending',
    tokens_per_s REAL, peak_memory_mb REAL, train_seconds REAL, error TEXT);
CREATE TABLE IF NOT EXISTS metrics (
    arm TEXT, step INTEGER, tokens INTEGER, metric TEXT, value REAL, PRIMARY KEY (arm, tokens, metric));
CREATE TABLE IF NOT EXISTS matrices (
    arm TEXT, tokens INTEGER, name TEXT, rank_delta INTEGER, rank_base INTEGER, rank_random INTEGER,
    min_dim INTEGER, delta_fro REAL, relative_delta REAL, intruders INTEGER, PRIMARY KEY (arm, tokens, name));
CREATE TABLE IF NOT EXISTS steps (
    arm TEXT, step INTEGER, loss REAL, learning_rate REAL, grad_norm REAL, PRIMARY KEY (arm, step));
"""

ARM_COLUMNS = (
    "method", "rank", "alpha", "target_modules", "learning_rate", "weight_decay", "dropout",
    "train_embeddings", "optimizer", "seed",
)  # fmt: skip


class Store:
    """Results of one study directory."""

    def __init__(self, study_dir: str | Path):
        self.path = Path(study_dir) / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn, conn:
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60)
        conn.row_factory = sqlite3.Row
        for attempt in range(20):  # switching to WAL needs a moment without other writers
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError:
                time.sleep(0.05 * (attempt + 1))
        return conn

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with closing(self._connect()) as conn, conn:
            conn.executemany(sql, list(rows))

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        with closing(self._connect()) as conn:
            return [dict(r) for r in conn.execute(sql, args)]

    # --- study -------------------------------------------------------------------------------------
    def set_info(self, key: str, value) -> None:
        self._write("INSERT OR REPLACE INTO study VALUES (?, ?)", [(key, json.dumps(value))])

    def info(self, key: str, default=None):
        rows = self._read("SELECT value FROM study WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # --- arms --------------------------------------------------------------------------------------
    def register_arm(self, name: str, settings: dict) -> None:
        """Add an arm if new (settings never change for a name: the name encodes them)."""
        values = [settings.get(c) for c in ARM_COLUMNS]
        cols = ", ".join(("name",) + ARM_COLUMNS)
        marks = ", ".join("?" * (len(ARM_COLUMNS) + 1))
        self._write(f"INSERT OR IGNORE INTO arms ({cols}) VALUES ({marks})", [(name, *values)])

    def update_arm(self, name: str, **fields) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._write(f"UPDATE arms SET {sets} WHERE name = ?", [(*fields.values(), name)])

    def arms(self) -> list[dict]:
        return self._read("SELECT * FROM arms ORDER BY rowid")

    def arm(self, name: str) -> dict | None:
        rows = self._read("SELECT * FROM arms WHERE name = ?", (name,))
        return rows[0] if rows else None

    # --- metrics -----------------------------------------------------------------------------------
    def add_metrics(self, arm: str, step: int, tokens: int, values: dict[str, float]) -> None:
        """All metrics of one milestone in one transaction."""
        rows = [(arm, step, tokens, k, float(v)) for k, v in values.items()]
        self._write("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)

    def metrics(self, arm: str | None = None) -> list[dict]:
        if arm is None:
            return self._read("SELECT * FROM metrics ORDER BY arm, tokens, metric")
        return self._read("SELECT * FROM metrics WHERE arm = ? ORDER BY tokens, metric", (arm,))

    def finished_steps(self, arm: str) -> set[int]:
        return {r["step"] for r in self._read("SELECT DISTINCT step FROM metrics WHERE arm = ?", (arm,))}

    def add_matrices(self, arm: str, tokens: int, matrices: list[dict]) -> None:
        rows = [
            (arm, tokens, m["name"], m["rank_delta"], m["rank_base"], m["rank_random"], min(m["shape"]),
             m["delta_fro"], m["relative_delta"], m["intruders"])
            for m in matrices
        ]  # fmt: skip
        self._write("INSERT OR REPLACE INTO matrices VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def matrices(self) -> list[dict]:
        return self._read("SELECT * FROM matrices ORDER BY arm, tokens, name")

    def add_steps(self, arm: str, rows: list[dict]) -> None:
        """Training-curve rows ({step, loss, learning_rate, grad_norm}) in one transaction: callers batch
        them (a milestone's worth), so logging every step costs one write per milestone."""
        values = [(arm, r["step"], r["loss"], r.get("learning_rate"), r.get("grad_norm")) for r in rows]
        self._write("INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?)", values)

    def steps(self, arm: str | None = None) -> list[dict]:
        if arm is None:
            return self._read("SELECT * FROM steps ORDER BY arm, step")
        return self._read("SELECT * FROM steps WHERE arm = ? ORDER BY step", (arm,))

    def metric_rows(self) -> list[dict]:
        """Every metric joined with its arm's settings (the base model appears as method 'base')."""
        return self._read(
            "SELECT m.arm, a.method, a.rank, a.alpha, a.target_modules, a.learning_rate, a.weight_decay,"
            " a.dropout, a.train_embeddings, a.seed, m.step, m.tokens AS milestone, m.metric, m.value"
            " FROM metrics m JOIN arms a ON a.name = m.arm ORDER BY a.rowid, m.tokens, m.metric"
        )


def open_store(study_dir: str | Path) -> Store:
    """An existing study's store (error if the directory holds no study)."""
    from learnforget.errors import UserError

    if not (Path(study_dir) / DB_NAME).exists():
        raise UserError(
            f"{study_dir}: not a study directory (no {DB_NAME}); run `learnforget run --out {study_dir}`"
        )
    return Store(study_dir)
