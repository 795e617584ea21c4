"""The results store under concurrent writers and failures: no row is lost, no milestone is half written."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from learnforget.study.store import Store

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


def run_together(target, args: list[tuple]) -> None:
    """One spawned process per argument tuple, started at a barrier (passed last); all must exit 0."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(len(args))
    processes = [ctx.Process(target=target, args=(*a, start)) for a in args]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=120)
        assert p.exitcode == 0


def test_two_processes_writing_one_store_lose_no_rows(tmp_path):
    run_together(write_study, [(str(tmp_path), 0), (str(tmp_path), 1)])

    store = Store(tmp_path)
    rows = store.metrics()
    assert len(rows) == 2 * MILESTONES * METRICS
    assert len(store.parts()) == 2, "each process writes its own part"
    with sqlite3.connect(store.path) as conn:  # the merged snapshot, as any SQLite client reads it
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2 * MILESTONES * METRICS
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
    with sqlite3.connect(store.part_path) as conn:
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


def test_a_store_of_an_older_version_is_adopted_and_gains_the_arm_id_column(tmp_path):
    with sqlite3.connect(tmp_path / "results.db") as conn:  # the single-file WAL schema of before
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(
            "CREATE TABLE study (key TEXT PRIMARY KEY, value TEXT);"
            "CREATE TABLE arms (name TEXT PRIMARY KEY, method TEXT, rank INTEGER, alpha REAL, target_modules TEXT,"
            " learning_rate REAL, weight_decay REAL, dropout REAL, train_embeddings INTEGER, optimizer TEXT,"
            " seed INTEGER, trainable_params INTEGER, total_params INTEGER, status TEXT DEFAULT 'pending',"
            " tokens_per_s REAL, peak_memory_mb REAL, train_seconds REAL, error TEXT);"
            "CREATE TABLE metrics (arm TEXT, step INTEGER, tokens INTEGER, metric TEXT, value REAL,"
            " PRIMARY KEY (arm, tokens, metric));"
            "INSERT INTO arms (name, method, status) VALUES ('full-lr1e-3-s0', 'full', 'done');"
            "INSERT INTO metrics VALUES ('full-lr1e-3-s0', 4, 400, 'code/loss', 3.5);"
        )
    store = Store(tmp_path)
    assert store.arm("full-lr1e-3-s0")["status"] == "done" and store.arm("full-lr1e-3-s0")["arm_id"] is None
    assert store.metrics()[0]["value"] == 3.5
    store.update_arm("full-lr1e-3-s0", arm_id="abc")
    store.register_arm("full-lr2e-3-s0", {"method": "full"}, "def")
    assert [(a["name"], a["arm_id"]) for a in Store(tmp_path).arms()] == [
        ("full-lr1e-3-s0", "abc"),
        ("full-lr2e-3-s0", "def"),
    ]
    with sqlite3.connect(tmp_path / "results.db") as conn:  # now the merged snapshot
        assert conn.execute("SELECT value FROM metrics").fetchall() == [(3.5,)]


def test_the_snapshot_is_derived_and_a_damaged_store_is_one_line(tmp_path):
    from learnforget.errors import UserError

    store = Store(tmp_path)
    store.add_metrics("arm", 1, 10, {"a": 1.0})
    (tmp_path / "results.db").unlink()
    assert Store(tmp_path).metrics()[0]["value"] == 1.0  # nothing lost: the parts are the truth
    (tmp_path / "results.db").write_bytes(b"garbage" * 100)
    Store(tmp_path)  # a damaged snapshot is rewritten from the parts at once
    with sqlite3.connect(tmp_path / "results.db") as conn:
        assert conn.execute("SELECT value FROM metrics").fetchall() == [(1.0,)]
    store.part_path.write_bytes(b"\0garbage" * 200)
    with pytest.raises(UserError, match=r"\.db: not a readable results store .*move it away"):
        Store(tmp_path).metrics()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "results.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(UserError, match="results.db: not a readable results store"):
        Store(fresh)


ARMS = [f"arm{i}" for i in range(9)]


def claim_and_train(study_dir: str, start) -> None:
    """One `run` process: claim each arm's lease, record a training start, 'train' it, release."""
    from learnforget.study.lease import Lease

    store = Store(study_dir)
    store.register_arms([(a, {"method": "full"}, a) for a in ARMS])
    start.wait()
    for arm in ARMS:
        lease = Lease(study_dir, arm)
        if not lease.acquire():
            continue
        try:
            if store.arm(arm)["status"] == "done":
                continue
            store.record_start(arm, arm)
            for milestone in range(3):
                store.add_metrics(arm, milestone, milestone, {f"m{i}": float(i) for i in range(20)})
                time.sleep(0.02)
            store.update_arm(arm, status="done")
        finally:
            lease.release()


def test_three_processes_on_one_directory_split_the_arms_and_lose_nothing(tmp_path):
    run_together(claim_and_train, [(str(tmp_path),)] * 3)
    store = Store(tmp_path)
    starts = store.starts()
    assert sorted(s["arm"] for s in starts) == ARMS, "every arm trained exactly once"
    assert len({s["pid"] for s in starts}) >= 2, "the processes shared the work"
    assert len(store.metrics()) == len(ARMS) * 3 * 20
    assert all(a["status"] == "done" for a in store.arms())
    assert not list((tmp_path / "leases").glob("*.json")), "every lease released"


def test_a_stale_lease_is_taken_over_and_a_live_one_is_not(tmp_path, monkeypatch):
    import json

    from learnforget.study.lease import Lease

    mine = Lease(tmp_path, "x")
    assert mine.acquire() and not Lease(tmp_path, "x").acquire()  # same process, but held: refused
    mine.release()
    # A lease of a process of this host that is gone is stale at once.
    dead = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    (tmp_path / "leases" / "y.json").write_text(json.dumps({"host": mine.owner["host"], "pid": dead.pid}))
    assert Lease(tmp_path, "y").holder() is None
    # Another host's lease is stale once its heartbeat is older than LEARNFORGET_LEASE_SECONDS.
    other = tmp_path / "leases" / "z.json"
    other.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert not Lease(tmp_path, "z").acquire()
    monkeypatch.setenv("LEARNFORGET_LEASE_SECONDS", "0.5")
    os.utime(other, (time.time() - 5, time.time() - 5))
    taker = Lease(tmp_path, "z")
    assert taker.acquire() and taker.mine()
    time.sleep(0.3)  # the heartbeat keeps the new lease fresh
    assert Lease(tmp_path, "z").holder() == taker.owner
    taker.release()
    assert not other.exists()


# --- Checksums, lost parts, full and read-only disks (issue 24) ------------------------------------------


def _small_study(study_dir: Path, config: Path | None = None) -> Store:
    """Two arms with one milestone each (the study of `config`, by default the default study's)."""
    import json

    from learnforget.config.load import load_study

    store = Store(study_dir)
    store.set_info("config", json.loads(load_study(str(config) if config else None).model_dump_json()))
    for name in ("base", "full-lr5e-4-s0"):
        store.register_arm(name, {"method": "base" if name == "base" else "full", "learning_rate": 5e-4})
        store.add_metrics(name, 4, 4096, {"code/loss": 2.5, "english/loss": 3.5})
        store.update_arm(name, status="done")
    store.refresh_snapshot()
    return store


def _forget_merges() -> None:
    """Each command is a fresh process: drop this one's cached merges."""
    from learnforget.study import store as store_module

    store_module._MERGES.clear()


def test_an_edited_metric_value_is_named_with_its_part(tmp_path, capsys):
    from tests.conftest import cli_exit_code

    store = _small_study(tmp_path)
    (part,) = store.parts()
    with sqlite3.connect(part) as conn:  # passes SQLite's own integrity_check
        conn.execute("UPDATE metrics SET value = 1.5 WHERE arm = 'full-lr5e-4-s0' AND metric = 'code/loss'")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    _forget_merges()
    assert cli_exit_code(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        f"{part}: metric code/loss of arm full-lr5e-4-s0 at 4,096 tokens does not match its checksum" in err
    )


def test_lost_parts_stop_a_run_with_how_to_rebuild_them(tmp_path, micro_config, capsys):
    from tests.conftest import cli_exit_code

    (part,) = _small_study(tmp_path).parts()
    part.unlink()
    _forget_merges()
    assert cli_exit_code(["run", str(micro_config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and f"{part.name} missing: results.db holds 4 metric rows of 2 arm(s)" in err
    )
    assert "--recompute" in err and not list((tmp_path / "results").glob("*.db"))  # nothing was written
    # The rebuild the line names: the snapshot copied in as a part.
    (tmp_path / "results" / "restored.db").write_bytes((tmp_path / "results.db").read_bytes())
    _forget_merges()
    assert Store(tmp_path).lost_results() is None and len(Store(tmp_path).metrics()) == 4


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (needs root: skipped elsewhere), unmounted afterwards."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip() or 'not permitted'})")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _fill(disk: Path) -> None:
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.endswith((".tmp", "-journal"))]


def test_a_full_disk_is_one_line_naming_the_directory_and_leaves_no_temporary_files(
    small_disk, micro_config, capsys
):
    import torch

    from learnforget.errors import StorageError
    from learnforget.files import atomic_save
    from tests.conftest import cli_exit_code

    study = small_disk / "study"
    store = _small_study(study)
    with pytest.raises(
        StorageError, match=f"^{study}/arms/a: cannot write checkpoint.pt: no space left on the device"
    ):
        atomic_save({"weights": torch.zeros(200_000)}, study / "arms" / "a" / "checkpoint.pt")
    _fill(small_disk)
    with pytest.raises(StorageError, match=f"^{study}/results: cannot write .*: no space left on the device"):
        store.add_metrics("full-lr5e-4-s0", 8, 8192, {f"m{i}": float(i) for i in range(2000)})
    assert cli_exit_code(["run", str(micro_config), "--out", str(small_disk / "new")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device" in err and "not a readable" not in err
    assert not _leftovers(small_disk)


def test_a_read_only_directory_is_one_line_for_run_report_and_export(small_disk, micro_config, capsys):
    import subprocess

    from tests.conftest import cli_exit_code

    study = small_disk / "study"
    _small_study(study, micro_config)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    _forget_merges()
    for args in (
        ["run", str(micro_config), "--out", str(study)],
        ["report", str(study)],
        ["export", str(study)],
    ):
        assert cli_exit_code(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the filesystem is read-only" in err, (args, err)
        assert str(study) in err
