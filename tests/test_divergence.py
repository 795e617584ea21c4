"""A diverged arm is a status, not a result: the rule, the store and report that leave its numbers out,
and the real CLI on a micro study whose full arm trains at learning rate 10."""

from __future__ import annotations

import json
import math

import yaml

from learnforget.config.study import StudyConfig
from learnforget.report.tables import arm_rows, write_summary
from learnforget.study.divergence import DIVERGENCE_MARGIN, divergence
from learnforget.study.store import Store
from tests.conftest import MICRO_STUDY, cli_exit_code


def test_the_rule_is_a_loss_above_the_base_plus_margin_and_a_uniform_guess():
    base = {"code/loss": 2.0, "english/loss": 3.0}
    uniform = math.log(512)  # 6.24
    assert divergence({"code/loss": 6.2, "english/loss": 3.1, "code/pass@1": 0.0}, base, 512) is None
    why = divergence({"code/loss": 2092.0, "english/loss": 3.1}, base, 512)
    assert why.startswith("code/loss 2092 > 6.24") and "base 2" in why
    # Near an untrained base the margin decides; without the base (still evaluating) the uniform guess.
    assert divergence({"code/loss": 6.5 + DIVERGENCE_MARGIN - 0.1}, {"code/loss": 6.5}, 512) is None
    assert divergence({"code/loss": 6.5 + DIVERGENCE_MARGIN + 0.1}, {"code/loss": 6.5}, 512)
    assert divergence({"code/loss": uniform + 0.01}, {}, 512) and divergence(
        {"code/loss": float("nan")}, {}, 512
    )


def _store_with_a_diverged_and_a_failed_arm(study_dir) -> Store:
    store = Store(study_dir)
    store.set_info("config", json.loads(StudyConfig().model_dump_json()))
    for name, status, error in (("base", "done", None), ("good", "done", None),
                                ("wild", "diverged", "code/loss 2092 > 6.24"), ("broke", "failed", "NaN")):  # fmt: skip
        store.register_arm(name, {"method": "base" if name == "base" else "full", "learning_rate": 1e-3})
        store.add_metrics(
            name, 4, 4096, {"code/loss": 2092.0 if name == "wild" else 2.0, "english/loss": 3.0}
        )
        store.update_arm(name, status=status, error=error)
    return store


def test_failed_and_diverged_arms_show_no_numbers_as_final_and_leave_analyses(tmp_path):
    store = _store_with_a_diverged_and_a_failed_arm(tmp_path)
    study = StudyConfig()
    rows = {r["arm"]: r for r in arm_rows(store, study)}
    assert rows["good"]["code/loss"] == 2.0
    assert rows["wild (diverged)"]["code/loss"] is None and rows["broke (failed)"]["code/loss"] is None
    assert {r["arm"] for r in store.metric_rows()} == {"base", "good"}  # frontiers, noise, claims, plots
    every = {(r["arm"], r["status"]) for r in store.metric_rows(every_arm=True)}  # compare --json, export
    assert ("wild", "diverged") in every and ("broke", "failed") in every
    summary = write_summary(tmp_path, store, study).read_text()
    assert "| wild (diverged) | – |" in summary and "### wild (diverged: code/loss 2092 > 6.24)" in summary


def test_an_arm_at_learning_rate_10_is_recorded_diverged_and_the_run_exits_1(tmp_path, capsys):
    config = tmp_path / "wild.yaml"
    quick = {"choice_items": 0, "generation_problems": 0, "reference_problems": 0, "diversity_prompts": 0,
             "spectra": False}  # fmt: skip
    study = dict(MICRO_STUDY, arms=[{"method": "full", "learning_rate": 10.0}])
    config.write_text(yaml.safe_dump(dict(study, eval={**MICRO_STUDY["eval"], **quick})))
    out = tmp_path / "study"
    assert cli_exit_code(["run", str(config), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    arm = Store(out).arm("full-lr1e1-s0")
    assert arm["status"] == "diverged" and arm["error"].startswith("code/loss ")
    assert err.strip().splitlines()[-1] == f"diverged: full-lr1e1-s0: {arm['error']}"
    assert Store(out).finished_steps("full-lr1e1-s0") == {4}  # stopped at its first milestone
    assert not (out / "arms" / "full-lr1e1-s0" / "checkpoint.pt").exists()
    # A rerun does not train it again, and says so again.
    assert cli_exit_code(["run", str(config), "--out", str(out)]) == 1
    assert len(Store(out).starts("full-lr1e1-s0")) == 1
    assert capsys.readouterr().err.strip().endswith(f"diverged: full-lr1e1-s0: {arm['error']}")
