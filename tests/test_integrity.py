"""A study never loses or mixes up results: failed arms, damaged checkpoints and data, lost store files,
and two `learnforget run` processes on one directory (the real CLI on the micro study)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from learnforget.evaluate import arm_model
from learnforget.study import base_model
from learnforget.study.store import Store
from tests.conftest import MICRO_STUDY, cli_exit_code

pytestmark = pytest.mark.slow

FULL, LORA = "full-lr1e-3-s0", "lora-r2-all-lr1e-2-s0"


def set_evaluate_model(function) -> None:
    """Put `function` where the base and every arm look up evaluate_model (study/base_model.py and
    evaluate/arm_model.py's ArmEvaluator)."""
    arm_model.evaluate_model = base_model.evaluate_model = function


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = cli_exit_code(args)
    return code, capsys.readouterr().err


def metrics(study_dir: Path) -> dict[tuple[str, int, str], float]:
    return {(r["arm"], r["tokens"], r["metric"]): r["value"] for r in Store(study_dir).metrics()}


@pytest.fixture(scope="module")
def failed_run(micro_config, tmp_path_factory):
    """The micro study whose full arm raises at its second milestone: a checkpoint at the first is left."""
    out = tmp_path_factory.mktemp("failed") / "micro"
    calls = []
    evaluate = arm_model.evaluate_model

    def flaky(*args):
        calls.append(1)
        if len(calls) == 3:  # base, full @ milestone 1, full @ milestone 2
            raise RuntimeError("injected failure")
        return evaluate(*args)

    set_evaluate_model(flaky)
    try:
        code = cli_exit_code(["run", str(micro_config), "--out", str(out)])
    finally:
        set_evaluate_model(evaluate)
    return out, code


def test_a_failed_arm_is_recorded_the_study_goes_on_and_exits_1(failed_run):
    out, code = failed_run
    assert code == 1
    store = Store(out)
    full, lora = store.arm(FULL), store.arm(LORA)
    assert (full["status"], full["error"]) == ("failed", "RuntimeError: injected failure")
    assert lora["status"] == "done" and len(store.finished_steps(LORA)) == 3
    assert store.finished_steps(FULL) == {4}  # the first milestone (step 4 of 12) was kept
    assert (out / "arms" / FULL / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def resumed(failed_run, micro_config, tmp_path_factory):
    """The failed study rerun as it is: the full arm resumes from its checkpoint."""
    out = tmp_path_factory.mktemp("resumed") / "micro"
    shutil.copytree(failed_run[0], out)
    assert cli_exit_code(["run", str(micro_config), "--out", str(out)]) == 0
    assert len(Store(out).starts(FULL)) == 2 and Store(out).finished_steps(FULL) == {4, 8, 12}
    return out


def test_the_failure_summary_names_the_arm_and_its_reason(failed_run, micro_config, tmp_path, capsys):
    out = tmp_path / "again"
    shutil.copytree(failed_run[0], out)
    (out / "arms" / FULL / "checkpoint.pt").unlink()
    real = arm_model.evaluate_model
    set_evaluate_model(lambda *a: (_ for _ in ()).throw(MemoryError("out of memory")))
    try:
        code, err = run_cli(["run", str(micro_config), "--out", str(out)], capsys)
    finally:
        set_evaluate_model(real)
    assert code == 1
    assert err.strip().splitlines()[-1] == f"failed: {FULL}: MemoryError: out of memory"
    assert Store(out).arm(FULL)["status"] == "failed" and Store(out).arm(LORA)["status"] == "done"


def test_damaged_checkpoint_and_data_are_detected_and_the_arm_retrains_exactly(
    failed_run, resumed, micro_config, tmp_path, capsys
):
    out = tmp_path / "damaged"
    shutil.copytree(failed_run[0], out)
    for name in (f"arms/{FULL}/checkpoint.pt", "data.pt"):
        path = out / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the middle of the tensors
        path.write_bytes(bytes(data))
    code, err = run_cli(["run", str(micro_config), "--out", str(out)], capsys)
    assert code == 0, err
    assert f"checkpoint {out}/arms/{FULL}/checkpoint.pt: checksum mismatch" in err
    assert "retraining the arm from the start" in err and "data.pt: checksum mismatch" in err
    assert len(Store(out).starts(FULL)) == 2  # the failed start and the retraining
    assert metrics(out) == metrics(resumed)  # retrained from scratch = resumed from the checkpoint


def test_an_empty_checkpoint_restarts_the_arm_with_a_warning(
    failed_run, resumed, micro_config, tmp_path, capsys
):
    out = tmp_path / "empty"
    shutil.copytree(failed_run[0], out)
    (out / "arms" / FULL / "checkpoint.pt").write_bytes(b"")
    code, err = run_cli(["run", str(micro_config), "--out", str(out)], capsys)
    assert code == 0 and "checkpoint.pt: empty file; retraining" in err
    assert metrics(out) == metrics(resumed)


def test_lost_store_files_with_a_checkpoint_recompute_the_milestones(
    failed_run, resumed, micro_config, tmp_path, capsys
):
    out = tmp_path / "lost"
    shutil.copytree(failed_run[0], out)
    shutil.rmtree(out / "results")
    (out / "results.db").unlink()
    code, err = run_cli(["run", str(micro_config), "--out", str(out)], capsys)
    assert code == 0, err
    assert "at step 4, but the store lacks milestones at steps [4]" in err
    assert metrics(out) == metrics(resumed)  # every milestone back, with the same numbers


def two_processes_env(tmp_path: Path) -> tuple[Path, dict]:
    config = dict(MICRO_STUDY, workers=1)
    config["arms"] = [
        {"method": "full", "learning_rate": [1e-3, 1.4e-3]},  # one name before arms had ids
        {"method": "lora", "rank": [1, 2], "learning_rate": 1e-2},
    ]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent.parent))
    return path, env


def test_two_runs_on_one_directory_split_the_arms(micro_config, tmp_path, capsys):
    path, env = two_processes_env(tmp_path)
    assert run_cli(["pretrain", str(path)], capsys)[0] == 0  # both find the base cached
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "learnforget", "run", str(path), "--out", str(out)]
    runs = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=900)[1] for p in runs]
    assert [p.returncode for p in runs] == [0, 0], errors
    store = Store(out)
    arms = ["full-lr1e-3-s0", "full-lr1.4e-3-s0", "lora-r1-all-lr1e-2-s0", "lora-r2-all-lr1e-2-s0"]
    assert {a["name"] for a in store.arms()} == {*arms, "base"}
    starts = store.starts()
    assert sorted(s["arm"] for s in starts) == sorted(arms), "every arm trained once, none twice"
    assert len({s["pid"] for s in starts}) == 2, "both processes trained arms"
    table = metrics(out)
    assert all(a["status"] == "done" for a in store.arms())
    assert table[("full-lr1e-3-s0", 6144, "code/loss")] != table[("full-lr1.4e-3-s0", 6144, "code/loss")]


def test_a_rebuilt_data_file_with_other_evaluation_sets_is_refused(
    failed_run, micro_config, tmp_path, capsys
):
    """data.pt is lost and the store says its milestones were measured on other evaluation sets (as after
    a version that builds them otherwise): one line, exit 2, nothing trained or measured."""
    out = tmp_path / "other-eval"
    shutil.copytree(failed_run[0], out)
    store = Store(out)
    assert len(store.info("eval_digest")) == 64  # recorded when data.pt was first built
    before = metrics(out)
    store.set_info("eval_digest", "0" * 64)
    (out / "data.pt").unlink()
    code, err = run_cli(["run", str(micro_config), "--out", str(out)], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: {out}: data.pt was rebuilt with other evaluation sets than the stored milestones were "
        "measured on (a different learnforget version?); rerun it with that version, or use another --out"
    )
    assert metrics(out) == before
