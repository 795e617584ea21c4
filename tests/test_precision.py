"""Precision and memory knobs: bf16 / fp16 mixed and pure bf16 train on the CPU, gradient checkpointing
and the attention implementation leave the numbers unchanged, arms are saved in the base's dtype."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
import yaml

from learnforget.arms.build import load_arm_model
from learnforget.config.arms import Arm
from learnforget.errors import UserError
from learnforget.train.loop import make_optimizer, train_steps
from tests.conftest import MICRO_STUDY
from tests.test_choice_generate import make_tokenizer


def arm(method="full", **extra) -> Arm:
    settings = dict(
        name="a", method=method, rank=4 if method == "lora" else None, alpha=8 if method == "lora" else None,
        target_modules="all", learning_rate=1e-3, weight_decay=0.0, dropout=0.0,
        train_embeddings=method == "full", optimizer="adamw", seed=0,
    )  # fmt: skip
    return Arm(**(settings | extra))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny Llama saved in bfloat16 (as hub models are) with a byte-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("bf16base")
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


def rows(n=16, seq=32):
    return torch.randint(0, 300, (n, seq), generator=torch.Generator().manual_seed(1))


def one_step_loss(model, precision="fp32", steps=1):
    torch.manual_seed(0)
    opt, sched = make_optimizer(model, 1e-3, 0.0, 0, steps)
    return train_steps(model, opt, sched, rows(), 4, 0, steps, precision=precision)


def test_storage_dtype_follows_precision(tiny_base):
    full_bf16 = load_arm_model(tiny_base, arm(), precision="bf16")
    assert {p.dtype for p in full_bf16.parameters()} == {torch.bfloat16}
    mixed = load_arm_model(tiny_base, arm(), precision="bf16-mixed")
    assert {p.dtype for p in mixed.parameters()} == {torch.float32}  # fp32 master weights
    lora = load_arm_model(tiny_base, arm("lora"), precision="bf16")
    trainable = {p.dtype for p in lora.parameters() if p.requires_grad}
    frozen = {p.dtype for p in lora.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}  # 2 bytes per frozen parameter


def test_mixed_precision_runs_matmuls_in_low_precision_and_trains(tiny_base):
    model = load_arm_model(tiny_base, arm(), precision="bf16-mixed")
    seen = []
    handle = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    fp32_model = load_arm_model(tiny_base, arm(), precision="fp32")
    mixed = one_step_loss(model, "bf16-mixed", steps=3)
    handle.remove()
    reference = one_step_loss(fp32_model, "fp32", steps=3)
    assert seen and set(seen) == {torch.bfloat16}
    assert abs(mixed - reference) < 0.05 * reference  # bf16 rounding, same model
    fp16 = load_arm_model(tiny_base, arm(), precision="fp16-mixed")
    from learnforget.runtime.precision import grad_scaler

    torch.manual_seed(0)
    opt, sched = make_optimizer(fp16, 1e-3, 0.0, 0, 3)
    loss = train_steps(
        fp16, opt, sched, rows(), 4, 0, 3, precision="fp16-mixed", scaler=grad_scaler("fp16-mixed", "cpu")
    )
    assert abs(loss - reference) < 0.05 * reference


@pytest.mark.parametrize("method", ["full", "lora"])
def test_gradient_checkpointing_and_attention_kernel_leave_losses_unchanged(tiny_base, method):
    plain = one_step_loss(load_arm_model(tiny_base, arm(method)), steps=2)
    checkpointed_model = load_arm_model(tiny_base, arm(method), gradient_checkpointing=True)
    inner = checkpointed_model.get_base_model() if method == "lora" else checkpointed_model
    assert inner.is_gradient_checkpointing
    assert abs(one_step_loss(checkpointed_model, steps=2) - plain) < 1e-5
    eager = load_arm_model(tiny_base, arm(method), attn_implementation="eager")
    assert abs(one_step_loss(eager, steps=2) - plain) < 1e-5


def test_unknown_attention_kernel_is_a_one_line_error(tiny_base):
    with pytest.raises(UserError, match="cannot load the model"):
        load_arm_model(tiny_base, arm(), attn_implementation="no_such_kernel")


def test_bf16_on_a_cpu_without_native_bf16_is_a_one_line_warning(monkeypatch):
    import platform

    from learnforget.runtime import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    # torch's checks: no AVX512_BF16 and no AMX on an x86 CPU is no native bf16; either one is.
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert precision.native_cpu_bf16() is False
    assert precision.cpu_bf16_warning("bf16-mixed") == (
        "precision bf16-mixed on a CPU without native bf16 (AVX2): expect ~15× slower than fp32; "
        "use precision: fp32 on this machine"
    )
    assert precision.cpu_bf16_warning("bf16").startswith("precision bf16 on a CPU without native bf16")
    assert precision.cpu_bf16_warning("fp32") is None and precision.cpu_bf16_warning("fp16-mixed") is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert precision.native_cpu_bf16() is True and precision.cpu_bf16_warning("bf16-mixed") is None
    monkeypatch.setattr(platform, "machine", lambda: "arm64")  # torch cannot tell: no warning
    assert precision.native_cpu_bf16() is None and precision.cpu_bf16_warning("bf16-mixed") is None
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU trains: the CPU does not matter
    assert precision.cpu_bf16_warning("bf16-mixed") is None


def test_dry_run_warns_of_bf16_on_a_cpu_without_native_bf16(monkeypatch, capsys):
    from learnforget.runtime import precision
    from tests.test_study import run_cli

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = run_cli(["run", "--dry-run", "--set", "precision=bf16-mixed"], capsys)
    assert code == 0, err
    assert "warning: precision bf16-mixed on a CPU without native bf16 (" in out
    code, out, err = run_cli(["run", "--dry-run"], capsys)
    assert "without native bf16" not in out + err  # fp32


def test_bf16_study_end_to_end_saves_in_the_base_dtype(tiny_base, tmp_path, capsys, monkeypatch):
    """The real CLI on a bf16 hub-style base in pure bf16: finite metrics, learning, a bf16 artifact; on a
    CPU without native bf16, a warning when the run starts."""
    import sqlite3

    from transformers import AutoModelForCausalLM

    from learnforget.cli import main
    from learnforget.runtime import precision

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)

    config = copy.deepcopy(MICRO_STUDY)
    config.update(base_model=tiny_base, precision="bf16", seq_len=64, milestones=1, budget_tokens=4 * 64 * 6)
    config["eval"] = dict(config["eval"], generation_problems=0, diversity_prompts=0, choice_items=4)
    path = tmp_path / "bf16.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = sys.argv
    sys.argv = ["learnforget", "run", str(path), "--out", str(tmp_path / "study")]
    try:
        main()
    except SystemExit as e:
        assert not e.code, capsys.readouterr().err
    finally:
        sys.argv = argv
    with sqlite3.connect(tmp_path / "study" / "results.db") as conn:
        values = dict(
            ((a, m), v)
            for a, m, v in conn.execute("SELECT arm, metric, value FROM metrics WHERE metric LIKE '%loss'")
        )
    assert values and all(v == v and abs(v) < 1e3 for v in values.values())
    assert values[("full-lr1e-3-s0", "code/loss")] < values[("base", "code/loss")]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "study" / "arms" / "full-lr1e-3-s0" / "model")
    assert {p.dtype for p in saved.parameters()} == {torch.bfloat16}
    warned = "warning: precision bf16 on a CPU without native bf16 (" in capsys.readouterr().err
    assert warned != torch.cuda.is_available()
