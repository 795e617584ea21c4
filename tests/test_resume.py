"""Kill and resume: a study SIGKILLed mid-run and rerun gives exactly the numbers of an uninterrupted run.

The real entry point (`python -m learnforget run`) runs in a subprocess while the test watches the
results store. It is killed in the middle of the first arm; rerun with two worker processes (which
must not outlive their killed parent), it is killed in the middle of the second; a last rerun
finishes it. Arms use dropout, weight decay and both optimizers, so restoring the RNG, the
optimizer state and the schedule all matter."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from tests.conftest import MICRO_STUDY

STEPS, MILESTONES = 40, 5
FULL, LORA = "full-lr1e-3-wd0.1-do0.1-s0", "lora-r2-all-lr1e-3-do0.1-lion-s0"
RESUME_STUDY = {
    **MICRO_STUDY,
    "name": "resume",
    "budget_tokens": STEPS * MICRO_STUDY["batch_size"] * MICRO_STUDY["seq_len"],
    "milestones": MILESTONES,
    "workers": 1,
    # Only the cheap metrics: what is under test is the training state, not the evaluators.
    "eval": {
        "loss_tokens": 1024, "choice_items": 0, "generation_problems": 0, "reference_problems": 0,
        "diversity_prompts": 0,
    },
    "arms": [
        {"method": "full", "learning_rate": 1e-3, "weight_decay": 0.1, "dropout": 0.1},
        {"method": "lora", "rank": 2, "learning_rate": 1e-3, "dropout": 0.1, "optimizer": "lion"},
    ],
}  # fmt: skip
Snapshot = dict[str, tuple[int, str | None]]  # arm -> (milestones recorded, status)


@pytest.fixture(scope="module")
def study_env(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The study file and an environment whose cache all runs share (the base is pretrained once)."""
    root = tmp_path_factory.mktemp("resume")
    config = root / "resume.yaml"
    config.write_text(yaml.safe_dump(RESUME_STUDY))
    env = {
        **os.environ,
        "LEARNFORGET_CACHE": os.environ["LEARNFORGET_CACHE"],
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    return config, env


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "learnforget", "run", str(config), "--out", str(out)]


def snapshot(study_dir: Path) -> Snapshot:
    """Milestones recorded and status of every arm, read like any outside SQLite client would."""
    path = study_dir / "results.db"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
            counts = dict(conn.execute("SELECT arm, COUNT(DISTINCT step) FROM metrics GROUP BY arm"))
            status = dict(conn.execute("SELECT name, status FROM arms"))
    except sqlite3.OperationalError:  # tables not created yet
        return {}
    return {arm: (counts.get(arm, 0), status.get(arm)) for arm in set(counts) | set(status)}


def child_pids(pid: int) -> set[int]:
    """Processes descended from `pid` (Linux /proc): workers are forked by a fork server, its child."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError):
            continue  # the process ended while we looked
    descendants, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - descendants
        descendants |= frontier
    return descendants


def alive(pid: int) -> bool:
    """Running (an exited process waiting to be reaped does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_and_kill(
    cmd: list[str], env: dict, study_dir: Path, when: Callable[[Snapshot], bool]
) -> tuple[Snapshot, set[int]]:
    """Start the command, SIGKILL it as soon as `when(snapshot)` holds.

    Returns the store's state after the kill and the processes the killed one had started."""
    log = study_dir.parent / f"{study_dir.name}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    try:
        while not when(snapshot(study_dir)):
            if process.poll() is not None:
                pytest.fail(
                    f"run ended (exit {process.returncode}) before the kill point:\n{log.read_text()}"
                )
            if time.monotonic() > deadline:
                pytest.fail("kill point not reached within 120 s")
            time.sleep(0.02)
        children = child_pids(process.pid)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    return snapshot(study_dir), children


def run_to_end(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def table(study_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(study_dir / "results.db") as conn:
        return sorted(conn.execute(sql))


def milestones(state: Snapshot, arm: str) -> int:
    return state.get(arm, (0, None))[0]


@pytest.fixture
def uninterrupted(study_env, tmp_path):
    """The same study run start to end in another directory, alongside the test once the shared base
    is pretrained; yields (process, study dir, log file)."""
    config, env = study_env
    study_dir, log = tmp_path / "reference", tmp_path / "reference.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command(config, study_dir), env=env, stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.monotonic() + 120
    while not snapshot(study_dir) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    yield process, study_dir, log
    if process.poll() is None:
        process.kill()
        process.wait()


def test_killed_and_resumed_study_matches_uninterrupted_run(study_env, uninterrupted, tmp_path):
    config, env = study_env
    cmd, resumed = command(config, tmp_path / "resumed"), tmp_path / "resumed"

    # 1. In the middle of the first arm (its checkpoint holds 2 or more milestones).
    state, _ = run_and_kill(cmd, env, resumed, lambda s: milestones(s, FULL) >= 2)
    assert 2 <= milestones(state, FULL) < MILESTONES and milestones(state, LORA) == 0, state
    assert (resumed / "arms" / FULL / "checkpoint.pt").exists()
    # 2. Both arms at once in worker processes, killed once the second has a milestone: the workers
    # must stop too, or they would go on training and writing behind the rerun's back.
    state, workers = run_and_kill(
        cmd + ["--set", "workers=2"], env, resumed, lambda s: milestones(s, LORA) >= 1
    )
    assert milestones(state, LORA) < MILESTONES, state
    assert len(workers) >= 4  # the fork server and its manager, and two workers
    deadline = time.monotonic() + 15
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "worker processes outlived their killed parent"
    run_to_end(cmd, env)
    process, reference, log = uninterrupted
    assert process.wait(timeout=300) == 0, log.read_text()

    metrics_sql = "SELECT arm, step, tokens, metric, value FROM metrics"
    expected = table(reference, metrics_sql)
    assert {row[0] for row in expected} == {"base", FULL, LORA}
    assert len({row[2] for row in expected if row[0] == LORA}) == MILESTONES
    assert table(resumed, metrics_sql) == expected  # exact float equality
    matrices_sql = "SELECT * FROM matrices"
    assert table(resumed, matrices_sql) == table(reference, matrices_sql)
    # Training curves: the steps retrained after the last checkpoint replace the killed run's, exactly.
    steps_sql = "SELECT arm, step, loss, learning_rate, grad_norm FROM steps ORDER BY arm, step"
    steps = table(reference, steps_sql)
    assert [row[:2] for row in steps if row[0] == FULL] == [(FULL, s) for s in range(1, len(steps) // 2 + 1)]
    assert table(resumed, steps_sql) == steps
    statuses = table(resumed, "SELECT name, status FROM arms")
    assert statuses == [("base", "done"), (FULL, "done"), (LORA, "done")]
    for weights in (f"arms/{FULL}/model", f"arms/{LORA}/adapter"):
        [file] = (reference / weights).glob("*.safetensors")
        again, first = load_file(resumed / weights / file.name), load_file(file)
        assert again.keys() == first.keys() and all(again[k].equal(first[k]) for k in first)
        assert not (resumed / Path(weights).parent / "checkpoint.pt").exists()
