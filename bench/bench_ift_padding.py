"""IFT padding: tokens computed when rows are padded to seq_len, to each batch's longest row, and with
rows grouped by length, on the built-in IFT studies (default settings, the built-in base's tokenizer).

    python bench/bench_ift_padding.py            # code and math IFT, 2000 examples, 4 epochs
    python bench/bench_ift_padding.py --time     # also: forward+backward time of 24 steps of the default
                                                 # built-in base architecture, padded vs trimmed (1 thread)
"""

from __future__ import annotations

import sys
import time

import torch

from learnforget.base.load import build_tokenizer
from learnforget.config.study import StudyConfig
from learnforget.data.datasets import padding_stats, training_rows
from learnforget.train.loop import trim_padding


def time_steps(rows: dict, batch_size: int, steps: int, trim: bool, vocab_size: int) -> float:
    """Seconds of forward+backward over the first ``steps`` batches (the default base's architecture)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    recipe = StudyConfig().base
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size, hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
            num_attention_heads=recipe.num_heads, intermediate_size=recipe.intermediate_size,
            max_position_embeddings=recipe.seq_len, tie_word_embeddings=True,
        )
    )  # fmt: skip
    started = time.perf_counter()
    for step in range(steps):
        ids = rows["input_ids"][step * batch_size : (step + 1) * batch_size]
        labels = rows["labels"][step * batch_size : (step + 1) * batch_size]
        if trim:
            ids, labels = trim_padding(ids, labels)
        model(input_ids=ids, labels=labels).loss.backward()
    return time.perf_counter() - started


def main(examples: int = 2000, epochs: int = 4, timing: bool = False) -> None:
    started = time.perf_counter()
    tokenizer = build_tokenizer(StudyConfig().base)
    print(f"tokenizer: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    for domain in ("code", "math"):
        for grouped in (False, True):
            study = StudyConfig(
                domain=domain,
                regime="ift",
                epochs=epochs,
                data={"examples": examples, "group_by_length": grouped},
            )
            rows = training_rows(study, tokenizer)
            stats = padding_stats(rows["rows"].lengths(), study.batch_size, study.seq_len, study.epoch_rows)
            real, full, trimmed = (
                stats["real_tokens"],
                stats["padded_to_seq_len"],
                stats["padded_to_batch_longest"],
            )
            print(
                f"{domain} IFT, {examples} examples x {epochs} epochs, batch {study.batch_size}, seq_len "
                f"{study.seq_len}, grouped={grouped}: real {real:,}; padded to seq_len {full:,} "
                f"(padding {full - real:,}); trimmed to batch longest {trimmed:,} (padding {trimmed - real:,}, "
                f"{full / trimmed:.2f}x fewer tokens computed); overlong {rows['stats']['overlong']}"
            )
            if timing:
                torch.set_num_threads(1)
                padded = time_steps(rows, study.batch_size, 24, False, len(tokenizer))
                cut = time_steps(rows, study.batch_size, 24, True, len(tokenizer))
                print(f"  24 steps forward+backward: padded to seq_len {padded:.2f} s, trimmed {cut:.2f} s")


if __name__ == "__main__":
    main(timing="--time" in sys.argv)
