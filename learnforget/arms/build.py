"""An arm's model: the base loaded for the arm's method, wrapped by peft when the method adapts it.

Every adapter method, the paper's LoRA included, is built the same way: the method type gives its peft
settings (config/methods.py), `config.peft.build_config` makes peft's config, peft wraps the model.
"""

from __future__ import annotations

import torch
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import AutoConfig, BitsAndBytesConfig, PreTrainedModel

from learnforget.arms.targets import dropout_overrides, resolve_targets, uses_conv1d
from learnforget.base.load import load_causal_lm
from learnforget.config.arms import Arm
from learnforget.config.methods import Full
from learnforget.config.peft import build_config


def load_arm_model(
    base_path: str,
    arm: Arm,
    precision: str = "fp32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The base model set up for one arm: full finetuning or a peft LoRA wrapper, embeddings as asked."""
    overrides = dropout_overrides(
        AutoConfig.from_pretrained(base_path), isinstance(arm.kind, Full), arm.dropout
    )
    if arm.quantization:
        overrides["quantization_config"] = quantization_config(arm.quantization)
    model = load_causal_lm(base_path, precision, attn_implementation, **overrides)
    if arm.quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input gradients, so it works under a frozen base (LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return prepare_arm(model, arm)


def quantization_config(kind: str):
    """bitsandbytes loading for QLoRA: 4-bit NF4 with double quantization computing in bfloat16 (the
    QLoRA paper's setting), or 8-bit."""
    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_arm(model: PreTrainedModel, arm: Arm) -> PreTrainedModel:
    """Wrap a loaded base for an adapter arm (targets resolved from its structure) and set the embeddings."""
    settings = arm.kind.peft_settings()
    if settings is not None:
        targets = None if "target_modules" in settings else resolve_targets(model, arm.target_modules)
        config = build_config(settings, targets, fan_in_fan_out=bool(targets) and uses_conv1d(model, targets))
        model = get_peft_model(model, config)
    set_embeddings_trainable(model, arm.train_embeddings)
    return model


def set_embeddings_trainable(model: torch.nn.Module, trainable: bool) -> None:
    """Freeze or unfreeze the token embeddings and the LM head (tied or not)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    for module in (inner.get_input_embeddings(), inner.get_output_embeddings()):
        if module is not None:
            module.weight.requires_grad_(trainable)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied weights once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors by name (what a checkpoint must hold to restore the arm)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
