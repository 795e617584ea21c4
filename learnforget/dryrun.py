"""`run --dry-run`: the expanded grid with trainable parameters and a memory estimate per arm, no training.

Models are instantiated on the meta device (no memory, no weights), so a 7B grid dry-runs in seconds.
"""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from learnforget.config import Arm, StudyConfig

# Architectures of the paper's base, so its recipes dry-run offline (the hub is not needed for counting).
KNOWN_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
    ),
}  # fmt: skip
ADAM_BYTES_PER_PARAM = 8  # two fp32 moments
ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN = (
    34  # rough fp32 activations kept for backward per token, layer, width
)


def base_config(study: StudyConfig):
    """The base model's transformers config, without downloading or loading weights."""
    from transformers import AutoConfig, LlamaConfig

    if study.base_model == "builtin":
        r = study.base
        return LlamaConfig(
            vocab_size=r.vocab_size, hidden_size=r.hidden_size, num_hidden_layers=r.num_layers,
            num_attention_heads=r.num_heads, num_key_value_heads=r.num_heads,
            intermediate_size=r.intermediate_size, max_position_embeddings=r.seq_len, tie_word_embeddings=True,
        )  # fmt: skip
    if study.base_model in KNOWN_CONFIGS:
        return LlamaConfig(**KNOWN_CONFIGS[study.base_model])
    return AutoConfig.from_pretrained(study.base_model)


def arm_size(config, arm: Arm) -> tuple[int, int]:
    """(trainable, total) parameters of an arm, counted on the meta device."""
    from transformers import AutoModelForCausalLM

    from learnforget.train import count_parameters, prepare_arm

    with torch.device("meta"):  # LoRA weights too: nothing is allocated, even for r=256 on 7B
        model = prepare_arm(AutoModelForCausalLM.from_config(config), arm)
    return count_parameters(model)


def estimate_memory_gb(config, study: StudyConfig, trainable: int, total: int) -> float:
    """fp32 weights + gradients and Adam moments of trainable weights + activations of one batch."""
    weights = total * 4
    optimizer = trainable * (4 + ADAM_BYTES_PER_PARAM)
    tokens = study.batch_size * study.seq_len
    activations = (
        tokens * config.num_hidden_layers * config.hidden_size * ACTIVATION_BYTES_PER_TOKEN_LAYER_HIDDEN
    )
    logits = tokens * config.vocab_size * 4 * 2
    return (weights + optimizer + activations + logits) / 2**30


def print_dry_run(study: StudyConfig, arms: list[Arm], console: Console) -> list[dict]:
    """Print (and return) one row per arm: name, settings, trainable parameters, estimated memory."""
    from learnforget.study import check_arms_fit
    from learnforget.targets import check_targets

    config = base_config(study)
    check_targets(config, arms)  # every arm's targets and dropout, before the table
    check_arms_fit(arms, config.to_dict())
    table = Table(
        title=f"{study.name}: {len(arms)} arms × {study.budget_tokens:,} tokens, {study.milestones} milestones"
    )
    for col in (
        "arm",
        "method",
        "rank",
        "alpha",
        "targets",
        "lr",
        "wd",
        "dropout",
        "seed",
        "trainable",
        "% of total",
        "est. memory GB",
    ):
        table.add_column(col, justify="left" if col in ("arm", "method", "targets") else "right")
    rows = []
    for arm in arms:
        trainable, total = arm_size(config, arm)
        memory = estimate_memory_gb(config, study, trainable, total)
        rows.append({"arm": arm.name, "trainable": trainable, "total": total, "memory_gb": memory})
        table.add_row(
            arm.name, arm.method, str(arm.rank or "–"), f"{arm.alpha:g}" if arm.alpha else "–",
            arm.target_modules if arm.method == "lora" else "all", f"{arm.learning_rate:g}",
            f"{arm.weight_decay:g}", f"{arm.dropout:g}", str(arm.seed), f"{trainable:,}",
            f"{100 * trainable / total:.2f}", f"{memory:.2f}",
        )  # fmt: skip
    console.print(table)
    return rows
