"""Reading a store: every process's part merged in memory, checked row by row, cached until a part changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from learnforget.study.store_schema import (
    ALL_ARM_COLUMNS,
    ROW_TABLES,
    SCHEMA,
    StoreDamaged,
    row_checksum,
)


def _change_counter(path: Path) -> bytes:
    """SQLite's file change counter (header bytes 24-27): it moves on every commit, even when neither
    the size nor a coarse mtime does."""
    with path.open("rb") as f:
        return f.read(28)[24:]


class _Merged:
    """The merge of a study's parts, brought up to date by copying only the rows parts gained: rows of
    later-changed parts replace equal keys; an arm keeps its most recently updated row and its first
    registration (for the display order)."""

    def __init__(self):
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.executescript(SCHEMA)
        self.conn.create_function("row_checksum", 5, row_checksum, deterministic=True)
        self.conn.execute("CREATE TEMP TABLE all_arms AS SELECT *, 0 AS part FROM arms WHERE 0")
        self.keys: dict[str, tuple] = {}
        self.ids: dict[str, int] = {}
        self.marks: dict[str, dict[str, int]] = {}  # part -> table -> highest rowid copied

    def update(self, parts: list[Path]) -> None:
        keys = {p.name: (p.stat().st_mtime_ns, p.stat().st_size, _change_counter(p)) for p in parts}
        if set(self.keys) - set(keys):
            raise FileNotFoundError("a part was removed: merge again from nothing")
        changed = [p for p in parts if self.keys.get(p.name) != keys[p.name]]
        if not changed:
            return
        conn = self.conn
        for part in changed:
            index = self.ids.setdefault(part.name, len(self.ids))
            try:
                conn.execute("ATTACH DATABASE ? AS p", (str(part),))
                try:
                    _copy_part(conn, index, self.marks.setdefault(part.name, {}), part)
                finally:
                    conn.commit()
                    conn.execute("DETACH DATABASE p")
            except sqlite3.DatabaseError as e:
                e.part = part
                raise
        cols = ", ".join(ALL_ARM_COLUMNS)
        conn.execute("DELETE FROM arms")
        conn.execute(
            f"INSERT INTO arms ({cols}) SELECT {cols} FROM ("
            " SELECT *, ROW_NUMBER() OVER (PARTITION BY name ORDER BY COALESCE(updated, 0) DESC, part DESC)"
            " AS pick, MIN(COALESCE(registered, 0) + part * 1e-9) OVER (PARTITION BY name) AS first_seen"
            " FROM all_arms) WHERE pick = 1 ORDER BY first_seen, name"
        )
        conn.commit()
        self.keys.update(keys)


_MERGES: dict[str, _Merged] = {}


def _copy_part(conn: sqlite3.Connection, index: int, marks: dict[str, int], part: Path) -> None:
    """Copy the rows a part gained since the last copy. A part's rows are only ever inserted or
    replaced, and SQLite gives a replacing row a rowid above every existing one, so the rows with a
    rowid above the last copy's highest are exactly the new ones. Metric rows are checked against
    their checksums (rows written before checksums have none)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM p.sqlite_master WHERE type = 'table'")}
    for table in (*ROW_TABLES, "arms"):
        if table not in tables:
            continue
        top = conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM p.{table}").fetchone()[0]
        window = (marks.get(table, 0), top)
        theirs = {r[1] for r in conn.execute(f"PRAGMA p.table_info({table})")}
        if table == "metrics" and "checksum" in theirs:
            _check_metric_rows(conn, window, part)
        if table == "arms":
            select = ", ".join(c if c in theirs else "NULL" for c in ALL_ARM_COLUMNS)
            conn.execute(
                f"INSERT INTO all_arms ({', '.join(ALL_ARM_COLUMNS)}, part) SELECT {select}, ? FROM p.arms"
                " WHERE rowid > ? AND rowid <= ?",
                (index, *window),
            )
        else:
            mine = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
            select = ", ".join(c if c in theirs else "NULL" for c in mine)
            conn.execute(
                f"INSERT OR REPLACE INTO main.{table} SELECT {select} FROM p.{table} WHERE rowid > ? AND rowid <= ?",
                window,
            )
        marks[table] = top


def _check_metric_rows(conn: sqlite3.Connection, window: tuple[int, int], part: Path) -> None:
    bad = conn.execute(
        "SELECT arm, tokens, metric FROM p.metrics WHERE rowid > ? AND rowid <= ? AND checksum IS NOT NULL"
        " AND checksum != row_checksum(arm, step, tokens, metric, value) LIMIT 1",
        window,
    ).fetchone()
    if bad is not None:
        raise StoreDamaged(
            f"{part}: metric {bad[2]} of arm {bad[0]} at {bad[1]:,} tokens does not match its checksum "
            "(edited or damaged after it was written); restore the part from a backup, or move it away "
            "and rerun with --recompute to train what it held again"
        )
