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
"""

from __future__ import annotations

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


def arm_for(method: str):
    from learnforget.config import StudyConfig, expand_arms

    settings = {"method": method, "learning_rate": LEARNING_RATE[method]}
    if method == "lora":
        settings["rank"] = 16
    return expand_arms(StudyConfig(arms=[settings]))[0]


def ours(
    base: str, method: str, rows: torch.Tensor, size: dict, compiled: bool = False, warmups=None
) -> float:
    """Seconds of learnforget's loop after its warm-up steps (as `run_arm` sets an arm up and trains it);
    `compiled`: with `compile: true`. The warm-up's seconds are appended to `warmups`."""
    from learnforget.compiling import compile_layers
    from learnforget.train import load_arm_model, make_optimizer, train_steps

    arm = arm_for(method)
    torch.manual_seed(0)
    model = load_arm_model(base, arm)
    if compiled:
        compile_layers(model)
    steps = size["steps"]
    started = time.perf_counter()
    optimizer, scheduler = make_optimizer(
        model, arm.learning_rate, arm.weight_decay, steps // 10, steps, "adamw"
    )
    train_steps(model, optimizer, scheduler, rows, size["batch"], 0, WARMUP_STEPS)
    warmed = time.perf_counter()
    train_steps(model, optimizer, scheduler, rows, size["batch"], WARMUP_STEPS, steps)
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


def hf_trainer(base: str, method: str, rows: torch.Tensor, size: dict, output_dir: str) -> float:
    """Seconds of `transformers.Trainer` (+ peft's `get_peft_model` for LoRA) on the same work."""
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from learnforget.targets import resolve_targets

    arm = arm_for(method)
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
            if state.global_step == WARMUP_STEPS:
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
                    rows_out.append(Row(name, cand, baseline, "HF Trainer + peft", note=note))
    finally:
        torch.set_num_threads(threads)
    return rows_out


def _describe(size: dict) -> str:
    return (f"Llama hidden {size['hidden']}, {size['layers']} layers, vocab {size['vocab']}; steps "
            f"{WARMUP_STEPS + 1}-{size['steps']} of {size['batch']}×{size['seq_len']} tokens timed, 1 thread")  # fmt: skip


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
