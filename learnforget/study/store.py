"""The results store of a study directory: one SQLite file per writing process, merged on read.

Why per-process files: SQLite's WAL needs shared memory, and its file locks are unreliable on network
filesystems (NFS, Lustre), so several nodes writing one database can corrupt it. Here each process
writes only its own part, `results/<host>-<pid>.db`, in rollback-journal mode: no two processes ever
write the same file, so no cross-process lock is needed for writing. Every read merges all parts (in
memory, cached until a part changes). After writes (at most once a second, and at the end of every arm
and study) the process also refreshes `results.db`, a merged snapshot written to a temporary file and renamed into place (atomic on POSIX and NFS), so any
SQLite client can read the study at any time; it is derived data, never a source (delete it and it
comes back). A `results.db` written by an older version (a single WAL database) is copied into
`results/legacy.db` once and read as a part.

Schema of every part and of the snapshot (query it with any SQLite client, e.g. `sqlite3 runs/default/results.db`):

    study(key TEXT PRIMARY KEY, value TEXT)            -- 'config' (JSON), 'base_path', ...
    arms(name TEXT PRIMARY KEY, method, rank, alpha, target_modules, learning_rate, weight_decay,
         dropout, train_embeddings, optimizer, seed,   -- the arm's settings ('base' has method 'base'; a
                                                       -- peft arm's method is its family: dora, vera, ...)
         trainable_params, total_params,               -- counted once per tied weight
         status,                                       -- 'pending' | 'running' | 'done' | 'failed' |
                                                       -- 'diverged' (learnforget/study/divergence.py)
         tokens_per_s, peak_memory_mb, train_seconds, error,
         arm_id,                                       -- hash of all the arm's settings (`Arm.id`)
         peft, quantization,                           -- a peft arm's type and keywords (JSON), QLoRA's bits
         registered, updated,                          -- times; the merge keeps the latest update
         wall_seconds)                                 -- the arm's wall time, over every process that ran it
    metrics(arm, step, tokens, metric, value,          -- one row per arm x milestone x metric
            checksum,                                  -- of the row (`row_checksum`), checked on read
            PRIMARY KEY (arm, tokens, metric))
    matrices(arm, tokens, name, rank_delta, rank_base, rank_random, min_dim, delta_fro,
             relative_delta, intruders, PRIMARY KEY (arm, tokens, name))   -- ΔW spectra
    files(path, sha256, size, written)                 -- checksums of checkpoints and artifacts
    starts(arm, arm_id, host, pid, started)            -- one row each time a process starts training an arm
    steps(arm, step, loss, learning_rate, grad_norm,   -- one row per arm x optimizer step (training curves)
          PRIMARY KEY (arm, step))
    stage_times(arm, step, stage, seconds,             -- seconds per arm x milestone x stage: 'train',
                PRIMARY KEY (arm, step, stage))        -- 'eval/<suite>', 'spectra', 'checkpoint', 'save'

Metric names are '<domain>/<measure>', e.g. 'code/loss', 'english/loss', 'english/mc_acc_norm'.
Every write is one transaction, so a killed process never leaves half a milestone. Clocks of
different hosts should agree to within seconds (the merge keeps an arm's most recent update).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import time
from collections.abc import Iterable
from contextlib import closing
from pathlib import Path

from learnforget.errors import UserError, storage_error
from learnforget.files import writing
from learnforget.study.store_merge import _MERGES, _Merged
from learnforget.study.store_schema import (
    ALL_ARM_COLUMNS,
    ARM_COLUMNS,
    DB_NAME,
    FAILED,
    JSON_ARM_COLUMNS,
    LEGACY_PART,
    PARTS_DIR,
    SNAPSHOT_SECONDS,
    StoreDamaged,
    _last_snapshot,
    _migrate,
    row_checksum,
    store_error,
)


class Store:
    """Results of one study directory (see the module docstring for the layout)."""

    def __init__(self, study_dir: str | Path):
        self.study_dir = Path(study_dir)
        self.path = self.study_dir / DB_NAME  # the merged snapshot
        self.parts_dir = self.study_dir / PARTS_DIR
        with writing(self.study_dir, f"the results store ({PARTS_DIR}/)"):
            self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._adopt_legacy()

    # --- files -------------------------------------------------------------------------------------
    @property
    def part_path(self) -> Path:
        """This process's own part (computed per call: a forked child writes its own)."""
        return self.parts_dir / f"{socket.gethostname()}-{os.getpid()}.db"

    def parts(self) -> list[Path]:
        """Every part, oldest change first (later parts win where rows collide)."""
        paths = [p for p in self.parts_dir.glob("*.db") if p.is_file()]
        return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def _adopt_legacy(self) -> None:
        """A results.db that is not a snapshot comes from an older version: copy it in as a part, once."""
        legacy = self.parts_dir / LEGACY_PART
        tmp = legacy.with_name(f".{legacy.name}.{os.getpid()}.tmp")
        if not self.path.exists() or legacy.exists():
            return
        try:
            with closing(sqlite3.connect(self.path, timeout=60)) as src:
                tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                if "study" in tables and src.execute("SELECT 1 FROM study WHERE key = 'snapshot'").fetchone():
                    return
                if not tables:
                    return
                with closing(sqlite3.connect(tmp)) as dst:
                    src.backup(dst)  # includes what is still in the WAL
                    _migrate(dst)
                    dst.commit()
        except sqlite3.DatabaseError as e:
            problem = storage_error(e, self.parts_dir, f"a copy of an older store ({LEGACY_PART})")
            if problem is not None:
                tmp.unlink(missing_ok=True)
                raise problem from None
            if any(p.name != LEGACY_PART for p in self.parts()):  # only the derived snapshot is damaged
                print(
                    f"warning: {self.path}: damaged ({e}); rewriting it from {self.parts_dir}",
                    file=sys.stderr,
                )
                self.path.unlink(missing_ok=True)
                self.refresh_snapshot()
                return
            raise store_error(self.path, e) from None
        os.replace(tmp, legacy)

    def _connect_part(self) -> sqlite3.Connection:
        path = self.part_path
        try:
            with writing(self.parts_dir, f"this process's results ({path.name})"):
                conn = sqlite3.connect(path, timeout=60)
                conn.execute("PRAGMA journal_mode=DELETE")
                _migrate(conn)
                conn.commit()
        except sqlite3.DatabaseError as e:
            raise store_error(path, e) from None
        conn.row_factory = sqlite3.Row
        return conn

    def _write(self, sql: str, rows: Iterable[tuple], snapshot: bool = False) -> None:
        """Write rows to this process's part; refresh the snapshot now when `snapshot` (a finished
        milestone or an arm's new status: outside readers must see them at once), else at most every
        SNAPSHOT_SECONDS."""
        rows = list(rows)
        with writing(self.parts_dir, f"results ({self.part_path.name})"):
            with closing(self._connect_part()) as conn, conn:
                conn.executemany(sql, rows)
        if snapshot or time.monotonic() - _last_snapshot.get(str(self.study_dir), -1e9) > SNAPSHOT_SECONDS:
            self.refresh_snapshot()
        else:
            _flush_at_exit(self.study_dir)

    # --- merged reading ----------------------------------------------------------------------------
    def _merged(self) -> sqlite3.Connection:
        """An in-memory database holding the merge of every part (kept per process and study, and
        brought up to date by copying only the parts that changed since)."""
        where = str(self.parts_dir.resolve())
        for attempt in range(5):  # a part being written on another node can read torn for a moment
            merged = _MERGES.get(where) or _Merged()
            try:
                merged.update(self.parts())
                _MERGES[where] = merged
                return merged.conn
            except FileNotFoundError:
                _MERGES.pop(where, None)
                time.sleep(0.05)
            except StoreDamaged:
                _MERGES.pop(where, None)
                raise
            except sqlite3.DatabaseError as e:
                _MERGES.pop(where, None)  # a part copied halfway: start again from nothing
                if attempt == 4:
                    raise store_error(getattr(e, "part", self.parts_dir), e) from None
                time.sleep(0.2 * (attempt + 1))
        raise store_error(self.parts_dir, OSError("parts kept disappearing while being read"))

    def _read(self, sql: str, args: tuple = ()) -> list[dict]:
        return [dict(r) for r in self._merged().execute(sql, args)]

    def refresh_snapshot(self) -> None:
        """Write the merge of all parts to results.db atomically (for outside SQLite clients)."""
        tmp = self.study_dir / f".{DB_NAME}.{socket.gethostname()}-{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        merged = self._merged()
        parts = json.dumps(sorted(p.name for p in self.parts()))
        with writing(self.study_dir, f"the merged results ({DB_NAME})", tmp):
            with closing(sqlite3.connect(tmp)) as dst:
                merged.backup(dst)
                dst.execute("INSERT OR REPLACE INTO study VALUES ('snapshot', 'true')")
                dst.execute("INSERT OR REPLACE INTO study VALUES ('snapshot_parts', ?)", (parts,))
                dst.commit()
            os.replace(tmp, self.path)
        _last_snapshot[str(self.study_dir)] = time.monotonic()
        _dirty.discard(str(self.study_dir))
        for stale in (f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal"):
            (self.study_dir / stale).unlink(missing_ok=True)

    def lost_results(self) -> str | None:
        """What results.db (the last merge) holds that no part does, as one line naming the missing part
        files and how to rebuild them, or None: parts are never deleted, so a difference means a part
        file was lost (a finished study would otherwise be recomputed silently)."""
        try:
            with closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as snapshot:
                info = dict(snapshot.execute("SELECT key, value FROM study WHERE key LIKE 'snapshot%'"))
                if "snapshot" not in info:
                    return None
                held = set(snapshot.execute("SELECT arm, tokens, metric FROM metrics"))
        except sqlite3.DatabaseError:  # none yet, or damaged: it is derived data
            return None
        lost = held - {
            (r["arm"], r["tokens"], r["metric"])
            for r in self._read("SELECT arm, tokens, metric FROM metrics")
        }
        if not lost:
            return None
        arms = sorted({arm for arm, _, _ in lost})
        names = [
            n for n in json.loads(info.get("snapshot_parts") or "[]") if not (self.parts_dir / n).exists()
        ]
        return (
            f"{self.parts_dir}: {', '.join(names) or 'part files'} missing: {DB_NAME} holds {len(lost):,} "
            f"metric rows of {len(arms)} arm(s) ({', '.join(arms[:3])}{', ...' * (len(arms) > 3)}) that no part does; "
            f"rebuild them from it with `cp {self.path} {self.parts_dir}/restored.db`, or rerun with --recompute "
            "to train those arms again"
        )

    # --- study -------------------------------------------------------------------------------------
    def set_info(self, key: str, value) -> None:
        self._write("INSERT OR REPLACE INTO study VALUES (?, ?)", [(key, json.dumps(value))])

    def info(self, key: str, default=None):
        rows = self._read("SELECT value FROM study WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows else default

    # --- arms --------------------------------------------------------------------------------------
    def register_arms(self, arms: Iterable[tuple[str, dict, str | None]]) -> None:
        """Add arms (name, settings, arm id) if new, in one transaction; the order is kept for display."""
        known = {a["name"] for a in self.arms()}
        now = time.time()
        rows = [
            (name, *(_column_value(c, settings.get(c)) for c in ARM_COLUMNS), arm_id, now + i * 1e-6)
            for i, (name, settings, arm_id) in enumerate(arms)
            if name not in known
        ]
        if not rows:
            return
        cols = ", ".join(("name", *ARM_COLUMNS, "arm_id", "registered"))
        marks = ", ".join("?" * (len(ARM_COLUMNS) + 3))
        self._write(f"INSERT OR IGNORE INTO arms ({cols}) VALUES ({marks})", rows)

    def register_arm(self, name: str, settings: dict, arm_id: str | None = None) -> None:
        self.register_arms([(name, settings, arm_id)])

    def update_arm(self, name: str, **fields) -> None:
        """Set fields of an arm: its merged row, updated, goes into this process's part."""
        with closing(self._connect_part()) as conn:  # this process's row is the latest of an arm it holds
            own = conn.execute("SELECT * FROM arms WHERE name = ?", (name,)).fetchone()
        row = (
            dict(own)
            if own
            else self.arm(name) or {"name": name, "status": "pending", "registered": time.time()}
        )
        row.update(fields, updated=time.time())
        values = [row.get(c) for c in ALL_ARM_COLUMNS]
        marks = ", ".join("?" * len(ALL_ARM_COLUMNS))
        self._write(
            f"INSERT OR REPLACE INTO arms ({', '.join(ALL_ARM_COLUMNS)}) VALUES ({marks})",
            [values],
            snapshot="status" in fields,
        )

    def arms(self) -> list[dict]:
        return self._read("SELECT * FROM arms ORDER BY rowid")

    def arm(self, name: str) -> dict | None:
        rows = self._read("SELECT * FROM arms WHERE name = ?", (name,))
        return rows[0] if rows else None

    # --- metrics -----------------------------------------------------------------------------------
    def add_metrics(self, arm: str, step: int, tokens: int, values: dict[str, float]) -> None:
        """All metrics of one milestone in one transaction."""
        rows = [
            (arm, step, tokens, k, float(v), row_checksum(arm, step, tokens, k, v)) for k, v in values.items()
        ]
        self._write("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?, ?)", rows, snapshot=True)

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

    def matrices(self, every_arm: bool = False) -> list[dict]:
        """ΔW spectra rows, without failed or diverged arms' unless `every_arm`."""
        if every_arm:
            return self._read("SELECT * FROM matrices ORDER BY arm, tokens, name")
        return self._read(
            "SELECT x.* FROM matrices x LEFT JOIN arms a ON a.name = x.arm WHERE a.status IS NULL OR"
            f" a.status NOT IN ({', '.join('?' * len(FAILED))}) ORDER BY x.arm, x.tokens, x.name",
            FAILED,
        )

    def add_steps(self, arm: str, rows: list[dict]) -> None:
        """Training-curve rows ({step, loss, learning_rate, grad_norm}) in one transaction: callers batch
        them (a milestone's worth), so logging every step costs one write per milestone."""
        values = [(arm, r["step"], r["loss"], r.get("learning_rate"), r.get("grad_norm")) for r in rows]
        self._write("INSERT OR REPLACE INTO steps VALUES (?, ?, ?, ?, ?)", values)

    def steps(self, arm: str | None = None) -> list[dict]:
        if arm is None:
            return self._read("SELECT * FROM steps ORDER BY arm, step")
        return self._read("SELECT * FROM steps WHERE arm = ? ORDER BY step", (arm,))

    def metric_rows(self, every_arm: bool = False) -> list[dict]:
        """Every metric joined with its arm's settings and status (the base model appears as method
        'base'): the rows analyses use, without failed or diverged arms unless `every_arm`."""
        where = (
            ""
            if every_arm
            else f" WHERE a.status IS NULL OR a.status NOT IN ({', '.join('?' * len(FAILED))})"
        )
        return self._read(
            f"SELECT m.arm, {', '.join('a.' + c for c in ARM_COLUMNS)}, a.trainable_params, a.status, m.step,"
            " m.tokens AS milestone, m.metric, m.value"
            f" FROM metrics m JOIN arms a ON a.name = m.arm{where} ORDER BY a.rowid, m.tokens, m.metric",
            () if every_arm else FAILED,
        )

    def add_stage_times(self, arm: str, step: int, seconds: dict[str, float]) -> None:
        """Seconds per stage of one milestone (a redone milestone replaces its rows), in one transaction."""
        rows = [(arm, step, stage, float(value)) for stage, value in seconds.items()]
        self._write("INSERT OR REPLACE INTO stage_times VALUES (?, ?, ?, ?)", rows)

    def stage_totals(self) -> dict[str, dict[str, float]]:
        """arm -> stage -> seconds summed over milestones (stages in the order first recorded)."""
        totals: dict[str, dict[str, float]] = {}
        rows = self._read(
            "SELECT arm, stage, SUM(seconds) AS seconds FROM stage_times GROUP BY arm, stage ORDER BY MIN(rowid)"
        )
        for row in rows:
            totals.setdefault(row["arm"], {})[row["stage"]] = row["seconds"]
        return totals

    # --- checksums and training starts -------------------------------------------------------------
    def record_file(self, path: str, sha256: str, size: int) -> None:
        """The checksum of a file just written (path relative to the study directory)."""
        self._write("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", [(path, sha256, size, time.time())])

    def files(self) -> list[dict]:
        return self._read("SELECT * FROM files ORDER BY path")

    def checksums(self, path: str) -> set[str]:
        """Every checksum recorded for a path (a kill between writing and recording leaves two)."""
        return {r["sha256"] for r in self._read("SELECT sha256 FROM files WHERE path = ?", (path,))}

    def record_start(self, arm: str, arm_id: str | None) -> None:
        row = (arm, arm_id, socket.gethostname(), os.getpid(), time.time())
        self._write("INSERT INTO starts VALUES (?, ?, ?, ?, ?)", [row])

    def starts(self, arm: str | None = None) -> list[dict]:
        if arm is None:
            return self._read("SELECT * FROM starts ORDER BY started")
        return self._read("SELECT * FROM starts WHERE arm = ? ORDER BY started", (arm,))


_dirty: set[str] = set()
_flush_registered = False


def _flush_at_exit(study_dir: Path) -> None:
    """A write left out of the snapshot (throttled) reaches it when this process exits normally."""
    global _flush_registered
    if not _flush_registered:
        import atexit  # only this path needs it
        from multiprocessing import util  # only this path needs it

        atexit.register(_flush_dirty)
        util.Finalize(None, _flush_dirty, exitpriority=10)  # worker processes skip atexit
        _flush_registered = True
    _dirty.add(str(study_dir))


def _flush_dirty() -> None:
    for study_dir in list(_dirty):
        try:
            Store(study_dir).refresh_snapshot()
        except Exception:  # noqa: BLE001 (exiting: the next write of any process refreshes it)
            pass
    _dirty.clear()


def _column_value(column: str, value):
    """An arm setting as its column holds it (the peft keywords as JSON text, read back as given)."""
    return json.dumps(value, sort_keys=True) if column in JSON_ARM_COLUMNS and value is not None else value


def open_store(study_dir: str | Path) -> Store:
    """An existing study's store (error if the directory holds no study)."""
    study_dir = Path(study_dir)
    if not (study_dir / DB_NAME).exists() and not any((study_dir / PARTS_DIR).glob("*.db")):
        raise UserError(
            f"{study_dir}: not a study directory (no {DB_NAME}); run `learnforget run --out {study_dir}`"
        )
    return Store(study_dir)
