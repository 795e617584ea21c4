"""Training speed: learnforget's loop vs a plain Hugging Face `Trainer` + peft, full finetuning and LoRA.

    python bench/bench_train.py              # the built-in base's architecture, 24 steps of 8×256, 3 repeats
    python bench/bench_train.py --quick      # a tiny Llama, 2 steps, 1 repeat

Both train the same model (random weights of the built-in base's architecture, saved once and loaded
afresh for every run) on the same random token rows for the same steps, with the same optimizer
settings (AdamW, β = 0.9/0.95, warm-up then cosine to 10%, clipping at 1.0), on one thread, in one
process, alternating. Timed: the steps after the first WARMUP_STEPS, on both sides (steady state: the
first steps carry one-off costs, compiling above all, which are reported apart). Full mode also times
`compile: true` (compiling.py) against the same baseline; quick mode leaves it out (a cold compile takes
tens of seconds).

Full mode also measures this CPU's single-thread sgemm peak (`torch.mm` on a real model's shapes, the
best GFLOP/s) and reports each row's tokens/s as a share of it: 6·N·tokens/s ÷ peak, N the parameters of
the forward's matmuls (every weight matrix; a tied embedding once, as the LM head), the usual "model FLOPs
utilisation" convention, for LoRA too (its frozen base costs 4·N: no weight gradients). And it times
SmolLM2-135M (full, LoRA r16 on paper-all; `real_model`: $LEARNFORGET_SMOL, else the named base
`smollm2-135m`, else /root/smol), REAL's steps of 4×256 each; skipped with a note where there is none.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `learnforget` as a script too

import torch

from bench.common import Row, alternate, format_table

LEARNING_RATE = {"full": 2e-4, "lora": 2e-3}  # the default study's
FULL = dict(  # the shipped built-in base (learnforget/builtin_base/config.json), at studies' seq_len
    hidden=64, layers=4, heads=4, intermediate=256, vocab=512, seq_len=256, batch=8, steps=24, repeats=3
)
QUICK = dict(
    hidden=32, layers=2, heads=2, intermediate=64, vocab=512, seq_len=64, batch=4, steps=3, repeats=1
)
WARMUP_STEPS = 2  # untimed on both sides
# SmolLM2-135M: 7-15 s a step; one untimed step (nothing is compiled), 2 timed, 2 repeats: ~3 min idle.
REAL = dict(batch=4, seq_len=256, warmup=1, steps=3, repeats=2)
SMOL_DIRECTORY = "/root/smol"  # SmolLM2-135M-Instruct converted to a model directory, where there is one
# (m, k, n) of the real model's matmuls at 1024 tokens: attention q/o, k/v, MLP up and down, LM head.
SGEMM_SHAPES = [(1024, 576, 576), (1024, 576, 192), (1024, 576, 1536), (1024, 1536, 576), (1024, 576, 49152)]


def tiny_base(directory: Path, size: dict) -> str:
    """A randomly initialised Llama of the given size, saved as a model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=size["vocab"], hidden_size=size["hidden"], num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"], num_key_value_heads=size["heads"],
        intermediate_size=size["intermediate"], max_position_embeddings=size["seq_len"], tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(directory)
    return str(directory)


def arm_for(method: str, targets: str = "all"):
    from learnforget.config.arms import expand_arms
    from learnforget.config.study import StudyConfig

    settings = {"method": method, "learning_rate": LEARNING_RATE[method]}
    if method == "lora":
        settings.update(rank=16, target_modules=targets)
    return expand_arms(StudyConfig(arms=[settings]))[0]


def sgemm_peak(shapes=SGEMM_SHAPES, repeats: int = 3) -> float:
    """Best GFLOP/s of `torch.mm` (float32, this process's threads) over `shapes`, the best of `repeats`."""
    best = 0.0
    gen = torch.Generator().manual_seed(0)
    for m, k, n in shapes:
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        torch.mm(a, b)  # first call: allocation and dispatch
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * m * k * n / (time.perf_counter() - started) / 1e9)
    return best


def forward_matmul_params(base: str) -> int:
    """N of 6·N per token: the parameters of every matmul in the forward pass (a tied head counted once;
    an untied input embedding, a lookup, not at all)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2)
    if not model.config.tie_word_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n


def ours(
    base: str, method: str, rows: torch.Tensor, size: dict, compiled: bool = False, warmups=None,
    targets: str = "all",
) -> float:  # fmt: skip
    """Seconds of learnforget's loop after its warm-up steps (as `run_arm` sets an arm up and trains it);
    `compiled`: with `compile: true`. The warm-up's seconds are appended to `warmups`."""
    from learnforget.arms.build import load_arm_model
    from learnforget.runtime.compiling import compile_layers
    from learnforget.train.loop import make_optimizer, train_steps

    arm = arm_for(method, targets)
    torch.manual_seed(0)
    model = load_arm_model(base, arm)
    if compiled:
        compile_layers(model)
    steps = size["steps"]
    started = time.perf_counter()
    optimizer, scheduler = make_optimizer(
        model, arm.learning_rate, arm.weight_decay, steps // 10, steps, "adamw"
    )
    warmup = size.get("warmup", WARMUP_STEPS)
    train_steps(model, optimizer, scheduler, rows, size["batch"], 0, warmup)
    warmed = time.perf_counter()
    train_steps(model, optimizer, scheduler, rows, size["batch"], warmup, steps)
    if warmups is not None:
        warmups.append(warmed - started)
    return time.perf_counter() - warmed


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def hf_trainer(
    base: str, method: str, rows: torch.Tensor, size: dict, output_dir: str, targets: str = "all"
) -> float:
    """Seconds of `transformers.Trainer` (+ peft's `get_peft_model` for LoRA) on the same work."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from learnforget.arms.targets import resolve_targets

    arm = arm_for(method, targets)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    if method == "lora":
        lora = LoraConfig(r=arm.rank, lora_alpha=arm.alpha, lora_dropout=arm.dropout,
                          target_modules=resolve_targets(model, arm.target_modules), bias="none")  # fmt: skip
        model = get_peft_model(model, lora)
    steps = size["steps"]
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=size["batch"], max_steps=steps,
        learning_rate=arm.learning_rate, weight_decay=arm.weight_decay, adam_beta1=0.9, adam_beta2=0.95,
        warmup_steps=steps // 10, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": 0.1},
        max_grad_norm=1.0, use_cpu=True, report_to="none", save_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_pin_memory=False, seed=0,
    )  # fmt: skip

    class StepClock(TrainerCallback):
        """When the Trainer has finished its warm-up steps, and its last step."""

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == size.get("warmup", WARMUP_STEPS):
                self.warmed = time.perf_counter()
            self.ended = time.perf_counter()

    clock = StepClock()
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(rows), callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # it prints the final metrics dict
    trainer.train()
    return clock.ended - clock.warmed


def run(quick: bool = False) -> list[Row]:
    """One row per method: learnforget's loop vs Trainer + peft."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    size = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows_out = []
    peak = None if quick else sgemm_peak()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = tiny_base(Path(tmp) / "base", size)
            gen = torch.Generator().manual_seed(0)
            rows = torch.randint(
                0, size["vocab"], (size["steps"] * size["batch"], size["seq_len"]), generator=gen
            )
            for compiled in (False, True) if not quick else (False,):
                for method in ("full", "lora"):
                    warmups: list[float] = []
                    cand, baseline, _, _ = alternate(
                        lambda m=method, c=compiled, w=warmups: ours(base, m, rows, size, c, w),
                        lambda m=method: hf_trainer(base, m, rows, size, f"{tmp}/trainer"),
                        size["repeats"],
                        self_timed=True,
                    )
                    name = f"training, {'LoRA r16' if method == 'lora' else 'full finetuning'}"
                    note = _describe(size) if method == "full" and not compiled else ""
                    if compiled:
                        name += ", compile: true"
                        note = (f"first {WARMUP_STEPS} steps with compiling (untimed): "
                                f"{', '.join(f'{w:.1f}' for w in warmups)} s")  # fmt: skip
                    if peak:
                        note = "; ".join(filter(None, [note, _share(base, size, cand, peak)]))
                    rows_out.append(Row(name, cand, baseline, "HF Trainer + peft", note=note))
            if not quick:
                rows_out += real_model_rows(tmp, peak)
    finally:
        torch.set_num_threads(threads)
    return rows_out


def real_model() -> tuple[str | None, str]:
    """A SmolLM2-135M model directory and where it came from: $LEARNFORGET_SMOL, else the named base
    `smollm2-135m` (its GGUF converted once, learnforget/gguf_base.py), else SMOL_DIRECTORY; (None, why)."""
    if os.environ.get("LEARNFORGET_SMOL"):
        return os.environ["LEARNFORGET_SMOL"], "$LEARNFORGET_SMOL"
    try:
        from learnforget.base.load import resolve_base
        from learnforget.config.study import BaseRecipe

        return resolve_base("smollm2-135m", BaseRecipe()), "base_model smollm2-135m"
    except Exception as e:  # no resolver for named bases, or its package is not installed
        reason = f"smollm2-135m: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if (Path(SMOL_DIRECTORY) / "config.json").exists():
        return SMOL_DIRECTORY, SMOL_DIRECTORY
    return None, f"{reason}; no model at {SMOL_DIRECTORY} (set LEARNFORGET_SMOL)"


def real_model_rows(tmp: str, peak: float) -> list[Row]:
    """SmolLM2-135M (`real_model`), full and LoRA r16 on paper-all, ours vs Trainer + peft; none (with a
    note on stderr) where there is no such model."""
    base, source = real_model()
    if base is None:
        print(f"bench_train: SmolLM2-135M rows skipped: {source}", file=sys.stderr)
        return []
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(base).vocab_size
    size = {**REAL, "vocab": vocab}
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, vocab, (size["steps"] * size["batch"], size["seq_len"]), generator=gen)
    out = []
    for method in ("full", "lora"):
        cand, baseline, _, _ = alternate(
            lambda m=method: ours(base, m, rows, size, targets="paper-all"),
            lambda m=method: hf_trainer(base, m, rows, size, f"{tmp}/trainer", targets="paper-all"),
            size["repeats"],
            self_timed=True,
        )
        name = f"training SmolLM2-135M, {'LoRA r16 paper-all' if method == 'lora' else 'full finetuning'}"
        note = (f"{source}; steps {size['warmup'] + 1}-{size['steps']} of {size['batch']}×{size['seq_len']} "
                f"tokens timed, 1 thread; {_share(base, size, cand, peak)}")  # fmt: skip
        out.append(Row(name, cand, baseline, "HF Trainer + peft", note=note))
    return out


def _share(base: str, size: dict, seconds: list[float], peak: float) -> str:
    """Our fastest repeat's tokens/s, and 6·N·tokens/s as a share of the sgemm peak."""
    tokens = (size["steps"] - size.get("warmup", WARMUP_STEPS)) * size["batch"] * size["seq_len"]
    rate = tokens / min(seconds)
    n = forward_matmul_params(base)
    return (f"ours {rate:.0f} tokens/s = {6 * n * rate / 1e9:.1f} GFLOP/s by 6·N (N = {n / 1e6:.1f}M), "
            f"{100 * 6 * n * rate / 1e9 / peak:.0f}% of the single-thread sgemm peak {peak:.0f} GFLOP/s")  # fmt: skip


def _describe(size: dict) -> str:
    return (f"Llama hidden {size['hidden']}, {size['layers']} layers, vocab {size['vocab']}; steps "
            f"{WARMUP_STEPS + 1}-{size['steps']} of {size['batch']}×{size['seq_len']} tokens timed, 1 thread")  # fmt: skip


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
