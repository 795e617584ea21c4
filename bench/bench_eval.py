"""Evaluation throughput per suite: items/s of each milestone suite (loss, choice, reference, generation,
diversity) on one model, as a study measures it at every milestone (`study.evaluate_model`).

    python bench/bench_eval.py            # the default study's evaluation sets on the cached built-in base
    python bench/bench_eval.py --quick    # a tiny random Llama and tiny sets

Full mode uses the built-in base (shipped, or cached by `learnforget pretrain`), else a randomly initialised
model of its architecture (which never emits a stop sequence, so every generation runs to max_new_tokens).
Items: rows of held-out text (loss), choice items, reference solutions, greedy completions and sampled
completions (generation: one decoding loop for both). One thread, as a study's worker processes run. A
last row times choice scoring from shared contexts (each context run once, its KV cache repeated per
choice) against one request per choice, on the same items, alternating (5 repeats; quick: 1).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `learnforget` as a script too

import torch

from bench.common import Row, alternate, format_table

QUICK_STUDY = {
    "base": {"vocab_size": 300, "tokenizer_bytes": 50_000, "hidden_size": 32, "num_layers": 2, "num_heads": 2,
             "intermediate_size": 64, "seq_len": 128},
    "seq_len": 128,
    "eval": {"loss_tokens": 1024, "choice_items": 8, "generation_problems": 4, "reference_problems": 4,
             "diversity_prompts": 2, "diversity_samples": 3, "max_new_tokens": 16},
}  # fmt: skip


def model_and_tokenizer(study, quick: bool):
    """The built-in base (full mode: the shipped one, else a cached one), else a random model of its
    architecture."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.base.load import (
        build_tokenizer,
        builtin_base_path,
        load_causal_lm,
        load_tokenizer,
        shipped_base,
    )

    path = shipped_base(study.base) or builtin_base_path(study.base)
    if not quick and path.exists():
        return load_causal_lm(str(path)), load_tokenizer(str(path)), "the built-in base"
    tokenizer = build_tokenizer(study.base)
    recipe = study.base
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe.hidden_size, num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads, intermediate_size=recipe.intermediate_size,
        max_position_embeddings=recipe.seq_len, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer, "a random model of the built-in base's architecture"


def suite_items(study, sets: dict) -> dict[str, int]:
    greedy = len(sets.get("generation") or [])
    sampled = len(sets.get("diversity") or []) * study.eval.diversity_samples
    return {
        "loss": sum(len(rows) for rows in sets["loss"].values()),
        "choice": len(sets.get("choice") or []),
        "reference": len(sets.get("reference") or []),
        # Greedy completions and diversity samples are decoded together when both are measured.
        "generation": greedy + sampled if greedy and sampled else greedy,
        "diversity": sampled,
    }


def choice_row(model, tokenizer, items: list[dict], batch_size: int, repeats: int) -> Row:
    """Choice log-likelihoods from shared contexts vs one request per choice; notes their largest gap."""
    from learnforget.evaluate.choice import choice_loglikelihoods

    shared, per_request, ours, reference = alternate(
        lambda: choice_loglikelihoods(model, tokenizer, items, batch_size),
        lambda: choice_loglikelihoods(model, tokenizer, items, batch_size, share_contexts=False),
        repeats,
    )
    gap = max(abs(a - b) for x, y in zip(ours, reference, strict=True) for a, b in zip(x, y, strict=True))
    return Row(
        "eval: choice, shared contexts", shared, per_request, baseline_name="one request per choice",
        note=f"{len(items)} items, batch {batch_size}, 1 thread; max |Δ log-likelihood| {gap:.1e}",
    )  # fmt: skip


def run(quick: bool = False) -> list[Row]:
    """One throughput row per suite (3 repeats; quick: 1), then the choice-scoring row."""
    import transformers

    from learnforget.config.study import StudyConfig
    from learnforget.evaluate.arm_model import evaluate_model
    from learnforget.evaluate.sets import evaluation_sets

    transformers.logging.set_verbosity_error()
    study = StudyConfig.model_validate(QUICK_STUDY if quick else {})
    model, tokenizer, which = model_and_tokenizer(study, quick)
    data = {"eval": evaluation_sets(study, tokenizer)}
    items = suite_items(study, data["eval"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    seconds: dict[str, list[float]] = {}
    try:
        for _ in range(1 if quick else 3):
            timings: dict[str, float] = {}
            evaluate_model(model, tokenizer, study, data, timings)
            for name, value in timings.items():
                seconds.setdefault(name, []).append(value)
        choice = choice_row(
            model, tokenizer, data["eval"]["choice"], study.eval.batch_size, 1 if quick else 5
        )
    finally:
        torch.set_num_threads(threads)
    rows = [Row(f"eval: {name}", values, items=items[name]) for name, values in seconds.items()]
    rows[0].note = f"{which}; {study.domain} {study.regime.upper()} evaluation sets, 1 thread"
    return rows + [choice]


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv)))
