"""End to end: the real CLI runs a micro study (built-in base and a local HF model) and its numbers hold up."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch

from tests.conftest import cli_exit_code


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `learnforget ARGS` in this process (one import of torch/transformers for the whole suite)."""
    code = cli_exit_code(args)
    out, err = capsys.readouterr()
    return code, out, err


def metric_table(study_dir) -> dict[tuple[str, int, str], float]:
    with sqlite3.connect(study_dir / "results.db") as conn:
        return {(a, t, m): v for a, t, m, v in conn.execute("SELECT arm, tokens, metric, value FROM metrics")}


@pytest.fixture(scope="module")
def micro_run(micro_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "micro"
    code = cli_exit_code(["run", str(micro_config), "--out", str(out)])
    assert not code, f"learnforget run exited {code}"
    return out


def test_micro_study_writes_report_plot_and_every_number(micro_run):
    assert (micro_run / "summary.md").read_text().count("### ") == 3  # base + 2 arms
    assert (micro_run / "learning_forgetting.png").stat().st_size > 10_000
    metrics = metric_table(micro_run)
    arms = {a for a, _, _ in metrics}
    assert arms == {"base", "full-lr1e-3-s0", "lora-r2-all-lr1e-2-s0"}
    for arm in arms - {"base"}:
        assert sorted({t for a, t, m in metrics if a == arm}) == [2048, 4096, 6144]
    base_code = metrics[("base", 0, "code/loss")]
    full_code = metrics[("full-lr1e-3-s0", 6144, "code/loss")]
    assert full_code < base_code - 0.01, "full finetuning on code must lower held-out code loss"
    assert 0 < metrics[("full-lr1e-3-s0", 6144, "spectrum/rank_delta_fraction")] <= 1
    lora_fraction = metrics[("lora-r2-all-lr1e-2-s0", 6144, "spectrum/rank_delta_fraction")]
    assert lora_fraction <= 2 / 32 + 1e-9, "a rank-2 LoRA update cannot need more than 2 directions"
    for metric in ("english/mc_acc", "english/mc_acc_norm", "code/pass@1", "code/distinct_fraction"):
        assert 0 <= metrics[("full-lr1e-3-s0", 6144, metric)] <= 1
    assert metrics[("full-lr1e-3-s0", 6144, "code/ref_nll")] < metrics[("base", 0, "code/ref_nll")]
    adapter = micro_run / "arms" / "lora-r2-all-lr1e-2-s0" / "adapter" / "adapter_config.json"
    assert json.loads(adapter.read_text())["r"] == 2


def test_same_config_and_seed_give_identical_numbers(micro_run, micro_config, tmp_path, capsys):
    code, out, err = run_cli(["run", str(micro_config), "--out", str(tmp_path / "again")], capsys)
    assert code == 0
    assert metric_table(tmp_path / "again") == metric_table(micro_run)
    printed = out + err  # the run ends with one line per stage
    assert "Time per stage" in printed and all(
        f"  {stage} " in printed for stage in ("train", "eval/loss", "save")
    )


def test_every_arm_records_seconds_per_stage_within_its_wall_time(micro_run):
    from learnforget.study.stage_times import stage_summary, stage_table
    from learnforget.study.store import Store

    store = Store(micro_run)
    totals = store.stage_totals()
    # Greedy generation and the diversity samples are decoded together: one stage.
    suites = {"eval/loss", "eval/choice", "eval/reference", "eval/generation"}
    assert set(totals["base"]) == suites
    for arm in ("full-lr1e-3-s0", "lora-r2-all-lr1e-2-s0"):
        merge = {"eval/merge"} if arm.startswith("lora") else set()  # adapter arms: the merged copy's weights
        assert set(totals[arm]) == suites | merge | {"train", "spectra", "checkpoint", "save"}
        assert all(seconds > 0 for seconds in totals[arm].values())
        wall = store.arm(arm)["wall_seconds"]
        assert sum(totals[arm].values()) <= wall
        assert totals[arm]["train"] == pytest.approx(store.arm(arm)["train_seconds"])
        # One row per milestone for the per-milestone stages, one for the final save.
        rows = store._read("SELECT step, stage FROM stage_times WHERE arm = ?", (arm,))
        assert sorted(r["step"] for r in rows if r["stage"] == "train") == [4, 8, 12]
        assert [r["step"] for r in rows if r["stage"] == "save"] == [12]
    header, rows = stage_table(store)
    assert header[0] == "arm" and header[1] == "train" and header[-2:] == ["other", "wall"]
    assert len(rows) == 3 and all(r[-1] >= sum(v or 0 for v in r[1:-1]) - 1e-9 for r in rows)
    assert [line.split()[0] for line in stage_summary(store)] == header[1:-1]
    assert "## Time per stage (seconds)" in (micro_run / "summary.md").read_text()
    assert "stages-table" in (micro_run / "report.html").read_text()


def test_compare_json_lists_every_metric_with_arm_settings(micro_run, capsys):
    code, out, _ = run_cli(["compare", str(micro_run), "--json"], capsys)
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(metric_table(micro_run))
    base = [r for r in rows if r["arm"] == "base"]
    assert base and all(r["method"] == "base" and r["milestone"] == 0 for r in base)
    lora = next(r for r in rows if r["method"] == "lora")
    assert lora["rank"] == 2 and lora["target_modules"] == "all" and lora["learning_rate"] == 1e-2


def test_local_hf_model_directory_works_as_base(micro_config, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.data.tokens import train_tokenizer

    tokenizer = train_tokenizer(["def f(x):\n    return x + 1\n", "To be, or not to be."] * 50, 280)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=64)
    )  # fmt: skip
    model.save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")
    code, _, err = run_cli(
        ["run", str(micro_config), "--out", str(tmp_path / "s"), "--set", f"base_model={tmp_path / 'hf'}",
         "--set", "arms=[{method: lora, rank: 2, learning_rate: 0.01}]"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = metric_table(tmp_path / "s")
    assert metrics[("lora-r2-all-lr1e-2-s0", 6144, "code/loss")] < metrics[("base", 0, "code/loss")]


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "missing.yaml"], "missing.yaml: no such config file"),
        (["run", "--set", "budget_tokens=-3"], "budget_tokens: Input should be greater than or equal to 1"),
        (["run", "--set", "base_model=/no/such/dir"], "no such model directory"),
        (["ls", "/no/such/study"], "not a study directory"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message, capsys):
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_suite_of_settings_runs_each_into_its_own_directory_and_judges_claims(tmp_path, capsys):
    import yaml

    from tests.conftest import MICRO_STUDY

    suite = dict(MICRO_STUDY, settings={"code-cpt": {"domain": "code"}, "math-ift": {
        "domain": "math", "regime": "ift", "epochs": 1, "data": {"examples": 8}}})  # fmt: skip
    suite["arms"] = [
        {"method": "full", "learning_rate": 1e-3, "seed": [0, 1]},
        {"method": "lora", "rank": 2, "learning_rate": 1e-2},
    ]
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    code, _, err = run_cli(["run", str(path), "--out", str(tmp_path / "suite")], capsys)
    assert code == 0, err
    for setting in ("code-cpt", "math-ift"):
        assert (tmp_path / "suite" / setting / "summary.md").exists()
    summary = (tmp_path / "suite" / "summary.md").read_text()
    assert "| claim | code-cpt | math-ift |" in summary
    assert (
        summary.count("**inconclusive**") + summary.count("**supported**") + summary.count("**contradicted**")
        >= 14
    )
    code, out, _ = run_cli(["claims", str(tmp_path / "suite")], capsys)
    assert code == 0 and "Claims: code-cpt" in out and "Claims: math-ift" in out


def test_a_study_directory_refuses_another_study_but_accepts_new_arms(
    micro_run, micro_config, tmp_path, capsys
):
    import shutil

    code, _, err = run_cli(
        ["run", str(micro_config), "--out", str(micro_run), "--set", "budget_tokens=4096"], capsys
    )
    assert code == 2 and "holds a study with a different config (budget_tokens: 6144 → 4096)" in err
    # Changing an arm's settings makes it another arm: its old results must not pass for the new one's.
    code, _, err = run_cli(
        ["run", str(micro_config), "--out", str(micro_run), "--set", "arms.0.learning_rate=1.2e-3"], capsys
    )
    assert code == 2 and "(arms.0.learning_rate: 0.001 → 0.0012)" in err and len(err.splitlines()) == 1
    grown = tmp_path / "grown"
    shutil.copytree(micro_run, grown)
    before = metric_table(grown)
    extra = "arms=[{method: full, learning_rate: 0.001}, {method: lora, rank: [2, 4], learning_rate: 0.01}]"
    code, _, err = run_cli(["run", str(micro_config), "--out", str(grown), "--set", extra], capsys)
    assert code == 0, err
    after = metric_table(grown)
    assert {k: after[k] for k in before} == before  # finished arms untouched
    assert {a for a, _, _ in after} - {a for a, _, _ in before} == {"lora-r4-all-lr1e-2-s0"}
