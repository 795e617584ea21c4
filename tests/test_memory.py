"""The memory estimate: measured against a real training peak on the CPU, and plausible for Llama-2-7B."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from learnforget.config.arms import expand_arms
from learnforget.config.load import load_study
from learnforget.train.memory import activation_bytes, estimate_memory
from tests.test_study import run_cli

BENCH = Path(__file__).parents[1] / "bench"


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_estimate_is_within_30_percent_of_a_measured_cpu_peak():
    bench = load_bench("bench_memory")
    cfg = next(c for c in bench.CONFIGS if c["name"] == "s256-full-fp32")
    result = bench.measure_in_fresh_process({**cfg, "batch_size": 2})
    assert result["measured"] > 100 * 2**20  # a real peak (weights, AdamW, activations), not noise
    assert 0.7 <= result["ratio"] <= 1.3, result


# ---------------------------------------------------------------------------------------------------
# Llama-2-7B (meta device, no weights)


@pytest.fixture(scope="module")
def paper():
    """paper/code-cpt's study, its model config, and the (trainable, total) of its full and LoRA-r16 arms."""
    from learnforget.study.dryrun import arm_size, base_config

    torch.set_num_threads(1)
    study = load_study("paper/code-cpt")
    config = base_config(study)
    arms = {a.method: a for a in reversed(expand_arms(study)) if a.rank in (None, 16)}
    return study, config, arms, {m: arm_size(config, a) for m, a in arms.items()}


def memory(paper, method: str, world_size: int = 1, **settings):
    from learnforget.study.dryrun import arm_memory

    study, config, arms, sizes = paper
    arm = arms[method].model_copy(update={"optimizer": settings.pop("optimizer", arms[method].optimizer)})
    # Start from one pass per process share and no checkpointing; each test sets what it compares.
    settings = {"micro_batch_size": None, "gradient_checkpointing": False} | settings
    return arm_memory(
        config, study.model_copy(update=settings), arm, *sizes[method], world_size, device="cuda"
    )


def test_full_finetuning_of_llama2_7b_in_bf16_mixed_with_adamw_is_16_bytes_per_parameter(paper):
    total = paper[3]["full"][1]
    m = memory(paper, "full", precision="bf16-mixed", optimizer="adamw", micro_batch_size=1)
    assert (m.weights, m.gradients, m.optimizer) == (4 * total, 4 * total, 8 * total)
    # autocast's bf16 copies of the matmul weights (all but the input embedding) count as activations
    copies = m.activations - activation_bytes(
        hidden=4096, intermediate=11008, layers=32, heads=32, vocab=32000, tokens=4096, seq_len=4096,
        precision="bf16-mixed",
    )  # fmt: skip
    assert copies == 2 * (total - 32000 * 4096)
    lion = memory(paper, "full", precision="bf16-mixed", optimizer="lion", micro_batch_size=1)
    assert lion.optimizer == 4 * total


def test_lora_on_a_bf16_llama2_7b_is_about_2_bytes_per_frozen_parameter(paper):
    trainable, total = paper[3]["lora"]
    m = memory(paper, "lora", precision="bf16", micro_batch_size=1)
    frozen = total - trainable
    assert m.weights == 2 * frozen + 4 * trainable  # peft keeps the adapters in fp32 on a bf16 model
    assert (m.gradients, m.optimizer) == (4 * trainable, 4 * trainable)  # Lion: one fp32 state
    assert 2.0 < (m.weights + m.gradients + m.optimizer) / frozen < 2.1  # ≈ 2.07 bytes per frozen param
    mixed = memory(paper, "lora", precision="bf16-mixed", micro_batch_size=1)
    assert mixed.weights == 4 * total  # documented: *-mixed keeps every weight, frozen too, in fp32


def test_paper_full_arm_fits_a_gpu_when_sharded_over_8_with_small_micro_batches(paper):
    gb = 2**30
    study = paper[0]
    assert study.batch_size == 192 and study.micro_batch_size == 2 and study.gradient_checkpointing
    as_shipped = memory(paper, "full", world_size=8, sharding="fsdp", precision="bf16-mixed", micro_batch_size=2,
                        gradient_checkpointing=True)  # fmt: skip
    assert as_shipped.total < 24 * gb  # the recipe's own plan fits a 40 GB GPU with room to spare
    everything = memory(paper, "full", world_size=8, sharding="fsdp", precision="bf16-mixed")
    assert everything.activations > 300 * gb  # 24 sequences of 4096 tokens per GPU in one pass
    sharded = memory(paper, "full", world_size=8, sharding="fsdp", precision="bf16-mixed", micro_batch_size=1)
    # Lion: (4 weights + 4 grads + 4 momentum) × 6.74B / 8 ≈ 9.4 GiB of state per GPU
    assert 9 * gb < sharded.weights + sharded.gradients + sharded.optimizer < 11 * gb
    assert 30 * gb < sharded.total < 60 * gb  # fits an 80 GB GPU, activations (~31 GiB) the largest part
    checkpointed = memory(paper, "full", world_size=8, sharding="fsdp", precision="bf16-mixed",
                          micro_batch_size=1, gradient_checkpointing=True)  # fmt: skip
    assert 10 * gb < checkpointed.total < sharded.total - 10 * gb
    two = memory(paper, "full", world_size=8, sharding="fsdp", precision="bf16-mixed", micro_batch_size=2)
    assert two.activations == 2 * sharded.activations
    unsharded = memory(
        paper, "full", world_size=8, sharding="none", precision="bf16-mixed", micro_batch_size=1
    )
    assert unsharded.weights + unsharded.gradients + unsharded.optimizer == 12 * paper[3]["full"][1]


def test_eager_attention_adds_its_scores():
    common = dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=100, tokens=256, seq_len=128,
                  precision="fp32")  # fmt: skip
    extra = activation_bytes(**common, attn_implementation="eager") - activation_bytes(**common)
    assert extra == 256 * 2 * 4 * 128 * 4  # tokens × layers × heads × seq_len × fp32


def test_estimate_memory_shards_only_under_fsdp():
    common = dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=100, trainable=1000, total=1000,
                  embedding_params=0, sequences=1, seq_len=8)  # fmt: skip
    ddp = estimate_memory(**common, world_size=4)
    fsdp = estimate_memory(**common, world_size=4, sharding="fsdp")
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4000, 4000, 8000)
    assert (fsdp.gradients, fsdp.optimizer) == (1000, 2000)
    assert fsdp.weights == 1000 + 2 * 500 * 4  # the shard + two gathered fp32 layers


def test_dry_run_prints_per_device_memory_for_the_world_size(paper, capsys):
    from learnforget.study.dryrun import arm_memory

    one_arm = "arms=[{method: full, learning_rate: 1.0e-5, optimizer: lion}]"
    args = ["run", "paper/code-cpt", "--dry-run", "--set", one_arm, "--set", "sharding=fsdp",
            "--set", "micro_batch_size=1", "--set", "precision=bf16-mixed"]  # fmt: skip
    code, out, err = run_cli([*args, "--world-size", "8"], capsys)
    assert code == 0, err
    study, config, arms, sizes = paper
    study = study.model_copy(update={"sharding": "fsdp", "micro_batch_size": 1, "precision": "bf16-mixed"})
    expected = arm_memory(config, study, arms["full"], *sizes["full"], 8)
    assert "8 processes, FSDP over 8" in out
    assert f"{expected.total / 2**30:.2f}" in out and f"{expected.weights / 2**30:.2f}" in out
    code, out1, err = run_cli(args, capsys)
    assert code == 0, err
    assert f"{expected.total / 2**30:.2f}" not in out1  # one process holds the whole model


def test_gpu_smoke_runs_a_study_on_the_cpu(tmp_path):
    smoke = load_bench("gpu_smoke")
    torch.set_num_threads(1)
    result = smoke.main(["--cpu", "--out", str(tmp_path)])
    assert result["failures"] == []
    assert {c["device"] for c in result["trained"]} == {"cpu"}
    assert [a["arm"].split("-")[0] for a in result["arms"]] == ["full", "lora"]
    for arm in result["arms"]:
        assert arm["tokens_per_s"] > 0 and arm["peak_memory_mb"] > 0 and arm["metrics"] >= 3
        assert arm["mfu"] is None  # no bf16 peak for a CPU
    full, lora = result["arms"]
    assert lora["trainable"] < full["trainable"] == full["total"]


def test_mfu_counts_6n_for_full_and_4n_for_lora():
    smoke = load_bench("gpu_smoke")
    assert smoke.model_flops_per_token("full", 10) == 60 and smoke.model_flops_per_token("lora", 10) == 40
    assert smoke.peak_flops("NVIDIA H200") == 989e12 and smoke.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert smoke.peak_flops("Tesla T4") is None


def test_a_cpu_estimate_holds_the_runtime_the_spectra_base_and_lora_s_evaluation_copy():
    from learnforget.train.memory import CPU_HEAP_SLACK, PROCESS_BYTES

    common = dict(hidden=64, intermediate=128, layers=2, heads=4, vocab=100, trainable=10, total=1000,
                  embedding_params=0, sequences=1, seq_len=8, adapted=["q_proj"])  # fmt: skip
    gpu = estimate_memory(**common, spectra=True, merged_copy=True)
    assert gpu.held == 4000  # the merged fp32 copy lives on the device; the spectra's base is host memory
    cpu = estimate_memory(**common, spectra=True, merged_copy=True, device="cpu")
    assert cpu.held == 4000 + 4000 + PROCESS_BYTES + int(CPU_HEAP_SLACK * cpu.activations)
    assert cpu.training == gpu.training and cpu.total == cpu.training + cpu.held


def test_evaluation_loss_bounds_its_logits_and_keeps_its_value(monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.evaluate import likelihood

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config)
    rows = torch.randint(0, 1000, (8, 32))
    whole = likelihood.mean_token_loss(model, rows, batch_size=8)
    monkeypatch.setattr(likelihood, "LOGITS_BYTES", 3 * 32 * 1000 * 4)  # three rows' logits a pass
    assert likelihood.rows_per_pass(model, 32, 8) == 3
    assert likelihood.mean_token_loss(model, rows, batch_size=8) == pytest.approx(whole, rel=1e-6)


def test_each_arm_records_its_own_peak_memory_not_its_workers_lifetime_peak():
    """Workers run arm after arm: the peak an arm records must start at the arm (run_arm resets it)."""
    import sys

    from learnforget.runtime.peak_memory import peak_memory_mb, reset_peak_memory

    if not sys.platform.startswith("linux"):
        pytest.skip("the resettable high-water mark is Linux's /proc/self/clear_refs")
    before = peak_memory_mb()
    block = torch.ones(64 * 2**20 // 4 * 8)  # 512 MiB, touched
    assert peak_memory_mb() >= before + 400
    del block
    reset_peak_memory()
    assert peak_memory_mb() < before + 200
