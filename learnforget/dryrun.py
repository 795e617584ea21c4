"""`run --dry-run`: the expanded grid with trainable parameters and a memory estimate per arm, no training.

Models are instantiated on the meta device (no memory, no weights), so a 7B grid dry-runs in seconds.
"""

from __future__ import annotations

import os

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


def default_world_size() -> int:
    """Processes per arm: the launcher's WORLD_SIZE (accelerate launch / torchrun), else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def arm_memory(config, study: StudyConfig, arm: Arm, trainable: int, total: int, world_size: int = 1):
    """`memory.estimate_memory` of one arm per device, from the model config and the study's settings.

    Each process takes its share of every batch (`batch_size / world_size`, rounded up) and runs it in
    forward passes of `micro_batch_size` sequences when that is smaller.
    """
    from learnforget.memory import estimate_memory

    local = -(-study.batch_size // world_size)
    sequences = min(local, study.micro_batch_size or local)
    # A tied input embedding is also the LM head, a matmul weight (autocast copies it).
    tied = getattr(config, "tie_word_embeddings", False)
    embedding_params = 0 if tied else config.vocab_size * config.hidden_size
    return estimate_memory(
        hidden=config.hidden_size, intermediate=config.intermediate_size, layers=config.num_hidden_layers,
        heads=config.num_attention_heads, vocab=config.vocab_size, trainable=trainable, total=total,
        embedding_params=embedding_params, sequences=sequences, seq_len=study.seq_len,
        precision=study.precision, optimizer=arm.optimizer, gradient_checkpointing=study.gradient_checkpointing,
        attn_implementation=study.attn_implementation, sharding=study.sharding, world_size=world_size,
        adapted=adapted_linears(config, arm),
    )  # fmt: skip


def adapted_linears(config, arm: Arm) -> list[str]:
    """Short names of the linear layers a LoRA arm adapts in one block (q_proj, ...); none for full."""
    if arm.method == "full":
        return []
    from transformers import AutoModelForCausalLM

    from learnforget.targets import resolve_targets

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sorted({name.rsplit(".", 1)[-1] for name in resolve_targets(model, arm.target_modules)})


def print_dry_run(
    study: StudyConfig, arms: list[Arm], console: Console, world_size: int | None = None
) -> list[dict]:
    """Print (and return) one row per arm: settings, trainable parameters, estimated memory per device."""
    from learnforget.study import check_arms_fit
    from learnforget.targets import check_targets

    world_size = world_size or default_world_size()
    config = base_config(study)
    check_targets(config, arms)  # every arm's targets and dropout, before the table
    check_arms_fit(arms, config.to_dict())
    sharding = f", FSDP over {world_size}" if study.sharding == "fsdp" else ""
    table = Table(
        title=f"{study.name}: {len(arms)} arms × {study.budget_tokens:,} tokens, {study.milestones} milestones; "
        f"memory per device (GB): {world_size} process{'es' if world_size > 1 else ''}{sharding}, {study.precision}"
        f"{', gradient checkpointing' if study.gradient_checkpointing else ''}"
    )
    columns = ["arm", "method", "rank", "alpha", "targets", "lr", "wd", "dropout", "seed", "trainable",
               "% of total", "weights", "grads+opt", "activ.", "est. memory GB"]  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "method", "targets") else "right")
    rows = []
    for arm in arms:
        trainable, total = arm_size(config, arm)
        memory = arm_memory(config, study, arm, trainable, total, world_size)
        gb = {k: v / 2**30 for k, v in memory.as_dict().items()}
        rows.append({"arm": arm.name, "trainable": trainable, "total": total, "memory_gb": gb["total"],
                     "memory": memory.as_dict()})  # fmt: skip
        table.add_row(
            arm.name, arm.method, str(arm.rank or "–"), f"{arm.alpha:g}" if arm.alpha else "–",
            arm.target_modules if arm.method == "lora" else "all", f"{arm.learning_rate:g}",
            f"{arm.weight_decay:g}", f"{arm.dropout:g}", str(arm.seed), f"{trainable:,}",
            f"{100 * trainable / total:.2f}", f"{gb['weights']:.2f}", f"{gb['gradients'] + gb['optimizer']:.2f}",
            f"{gb['activations']:.2f}", f"{gb['total']:.2f}",
        )  # fmt: skip
    console.print(table)
    return rows
