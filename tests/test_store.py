"""The results store under concurrent writers and failures: no row is lost, no milestone is half written."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from learnforget.store import Store

MILESTONES, METRICS = 150, 12


def metric_values(writer: int, milestone: int) -> dict[str, float]:
    """Distinct, checkable values: each row can be traced to its writer and milestone."""
    return {f"m{i:02d}": writer * 1e6 + milestone * 100 + i + 0.25 for i in range(METRICS)}


def write_study(study_dir: str, writer: int, start) -> None:
    """One worker: open the store (maybe creating it), wait for the others, then write every milestone."""
    store = Store(study_dir)
    store.register_arm(f"arm{writer}", {"method": "lora", "rank": writer + 1})
    start.wait()
    for milestone in range(MILESTONES):
        store.add_metrics(f"arm{writer}", milestone, milestone * 1000, metric_values(writer, milestone))
        store.update_arm(f"arm{writer}", status="running", train_seconds=float(milestone))
        time.sleep(0.002)  # let the other writer in: without a pause one writer can starve the other
    store.update_arm(f"arm{writer}", status="done")


def write_forever(study_dir: str) -> None:
    """Wide milestones, written as fast as possible until killed."""
    store = Store(study_dir)
    milestone = 0
    while True:
        store.add_metrics("arm", milestone, milestone, {f"metric{i:03d}": float(i) for i in range(300)})
        milestone += 1


def test_two_processes_writing_one_store_lose_no_rows(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    writers = [ctx.Process(target=write_study, args=(str(tmp_path), w, start)) for w in (0, 1)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=120)
        assert p.exitcode == 0

    store = Store(tmp_path)
    rows = store.metrics()
    assert len(rows) == 2 * MILESTONES * METRICS
    with sqlite3.connect(store.path) as conn:
        order = [arm for (arm,) in conn.execute("SELECT arm FROM metrics ORDER BY rowid")]
    assert sum(a != b for a, b in zip(order, order[1:], strict=False)) > 2, "the writers never overlapped"
    for writer in (0, 1):
        written = {(r["step"], r["metric"]): r["value"] for r in rows if r["arm"] == f"arm{writer}"}
        expected = {(m, k): v for m in range(MILESTONES) for k, v in metric_values(writer, m).items()}
        assert written == expected
        assert store.finished_steps(f"arm{writer}") == set(range(MILESTONES))
        arm = store.arm(f"arm{writer}")
        assert (arm["status"], arm["rank"], arm["train_seconds"]) == ("done", writer + 1, MILESTONES - 1)


def test_add_metrics_is_all_or_nothing(tmp_path):
    store = Store(tmp_path)
    store.add_metrics("arm", 1, 100, {"a": 1.0, "b": 2.0})
    # A row that the database refuses halfway through the batch: every row of the batch is rolled back.
    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON metrics WHEN NEW.metric = 'bad'"
            " BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="refused"):
        store.add_metrics("arm", 2, 200, {"a": 3.0, "b": 4.0, "bad": 5.0, "z": 6.0})
    with pytest.raises(ValueError):  # a value that is not a number fails before anything is written
        store.add_metrics("arm", 3, 300, {"a": 7.0, "b": "not a number"})
    assert [(r["tokens"], r["metric"], r["value"]) for r in store.metrics("arm")] == [
        (100, "a", 1.0),
        (100, "b", 2.0),
    ]


def test_killed_writer_never_leaves_half_a_milestone(tmp_path):
    process = multiprocessing.get_context("spawn").Process(target=write_forever, args=(str(tmp_path),))
    process.start()
    deadline = time.monotonic() + 60
    while len(Store(tmp_path).finished_steps("arm")) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.join()

    counts: dict[int, int] = {}
    for row in Store(Path(tmp_path)).metrics("arm"):
        counts[row["step"]] = counts.get(row["step"], 0) + 1
    assert len(counts) >= 5
    assert set(counts.values()) == {300}
