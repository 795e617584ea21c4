"""Training: the optimizer loop shared by base pretraining and every arm, and arm model preparation.

One loop for everything: AdamW or Lion (β = 0.9, 0.95), linear warm-up then cosine decay to 10% of the peak,
gradient clipping at 1.0, batches taken by step index from a fixed tensor of rows, so the data
position of a run is just its step (which is what makes resuming exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, PreTrainedModel

from learnforget.arms.targets import dropout_overrides, resolve_targets, uses_conv1d
from learnforget.config.arms import Arm

GRAD_CLIP = 1.0
IGNORE_INDEX = -100  # label of tokens without loss (transformers' convention)
BETAS = (0.9, 0.95)
FINAL_LR_FRACTION = 0.1
FUSED_ADAMW_PARAMS = 10_000_000
"""Trainable parameters from which AdamW runs fused (one pass over each tensor per step, as HF Trainer's
default) rather than foreach (about ten passes): 1.7 vs 4.1 s a step over 134M parameters on one loaded
CPU thread. Below it the optimizer is a small part of a step, and foreach keeps the numbers earlier
studies recorded (fused rounds differently, by an ulp): the default study's arms are all below it."""


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up, then cosine from 1 down to FINAL_LR_FRACTION at the last step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (
            1 + math.cos(math.pi * min(1.0, progress))
        )

    return factor


def make_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    optimizer: str = "adamw",
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW or Lion (decoupled weight decay: LionW) over trainable parameters, with the warm-up/cosine
    schedule; weight decay only on matrices (not norms), as is usual."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    if optimizer == "lion":
        from lion_pytorch import Lion

        opt = Lion(groups, lr=learning_rate, betas=BETAS)
    else:
        # foreach: one kernel per operation over all tensors instead of one per tensor (the default on
        # CPUs); the same arithmetic, so the same numbers. Fused for large plain (unsharded) models.
        fused = sum(p.numel() for p in params) >= FUSED_ADAMW_PARAMS and all(
            type(p.data) is torch.Tensor and p.device.type in ("cpu", "cuda") for p in params
        )
        kind = {"fused": True} if fused else {"foreach": True}
        opt = torch.optim.AdamW(groups, lr=learning_rate, betas=BETAS, **kind)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup_steps, total_steps))
    return opt, scheduler


def train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    rows: torch.Tensor,
    batch_size: int,
    start_step: int,
    end_step: int,
    labels: torch.Tensor | None = None,
    on_step: Callable[[int, float], None] | None = None,
    accelerator=None,
    micro_batch_size: int | None = None,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    on_record: Callable[[dict], None] | None = None,
    fused_loss: bool = True,
    epoch_rows: int | None = None,
) -> float:
    """Run optimizer steps [start_step, end_step) on rows[step*bs:(step+1)*bs]; return the last loss.
    `epoch_rows`: exact epochs of that many rows, whose last step takes the rows left over
    (`examples.step_rows`); its loss is normalised over its own tokens, as every batch's.

    `labels` defaults to the inputs (loss on every token); -100 marks tokens without loss, and columns
    after the last one with a loss are not computed (`trim_padding`). With an
    Accelerate `accelerator` (several processes), each process takes rows rank::world of the batch and
    gradients are averaged across processes; the reported loss is the mean over processes.
    `micro_batch_size` splits each process's batch into forward/backward passes of that many rows
    (a short batch into fewer). Every process needs at least one row (`StudyConfig.check_last_batch`).
    `precision` sets the forward pass's autocast (see precision.py); `scaler` scales fp16 losses.
    `on_record` receives {step, loss, learning_rate, grad_norm} after each step (grad_norm before clipping).
    `fused_loss`: compute the loss without full-vocabulary logits where the model allows (fused_loss.py;
    fp32 in one process); same loss up to float rounding.
    """
    from learnforget.data.examples import step_rows
    from learnforget.runtime.device import model_device
    from learnforget.runtime.precision import autocast
    from learnforget.train.fused_loss import causal_lm_loss, fused_loss_parts

    model.train()
    device = model_device(model)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_value = float("nan")
    fused = fused_loss and accelerator is None and precision == "fp32" and fused_loss_parts(model)
    for step in range(start_step, end_step):
        first, stop = step_rows(step, batch_size, epoch_rows)
        batch = rows[first:stop][rank::world]
        target = batch if labels is None else labels[first:stop][rank::world]
        if len(batch) == 0:
            raise ValueError(f"step {step}: rows {first}..{stop} leave process {rank} of {world} none")
        micro = micro_batch_size or len(batch)
        chunks = range(0, len(batch), micro)
        # Rows split unevenly (a short batch): every process runs as many passes as the one with the
        # most rows, since FSDP's all-gathers and DDP's all-reduces must meet; the extra passes carry no
        # loss (weight 0).
        most = -(-(stop - first) // world)
        passes = max(len(chunks), -(-most // (micro_batch_size or most)))
        loss = torch.zeros((), device=device)
        for n in range(passes):  # gradient accumulation: the mean of the micro-batches' mean losses
            start = chunks[n] if n < len(chunks) else 0
            ids, part_labels = trim_padding(batch[start : start + micro], target[start : start + micro])
            if fused:
                part_loss = causal_lm_loss(fused, ids.to(device), part_labels.to(device))
            else:
                with autocast(precision, device):
                    # No KV cache: training never reads it, and transformers fills one unless told.
                    part_loss = model(
                        input_ids=ids.to(device), labels=part_labels.to(device), use_cache=False
                    ).loss
            scaled = part_loss.float() / len(chunks) * (n < len(chunks))
            backward = scaler.scale(scaled) if scaler is not None else scaled
            if accelerator is None:
                backward.backward()
            else:
                accelerator.backward(backward)
            loss += scaled.detach()
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        if accelerator is None:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
        else:
            grad_norm = accelerator.clip_grad_norm_(trainable, GRAD_CLIP)
        learning_rate = optimizer.param_groups[0]["lr"]  # the rate this step uses (before scheduler.step)
        if scaler is not None:
            scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = (accelerator.reduce(loss.detach(), "mean") if accelerator else loss).item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step}")
        if on_step is not None:
            on_step(step, loss_value)
        if on_record is not None:
            if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; its full value is the global norm
                grad_norm = grad_norm.full_tensor()
            norm = float(grad_norm) if grad_norm is not None else None
            on_record({"step": step, "loss": loss_value, "learning_rate": learning_rate, "grad_norm": norm})
    return loss_value


def trim_padding(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the columns after the last token with a loss: right padding of IFT rows. Under causal attention
    no earlier token sees them and they carry no loss, so the loss and gradients are those of the full
    rows, at the cost of the batch's longest row instead of seq_len."""
    has_loss = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    width = int(has_loss[-1]) + 1 if len(has_loss) else ids.shape[1]
    return ids[:, :width], labels[:, :width]


def load_arm_model(
    base_path: str,
    arm: Arm,
    precision: str = "fp32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
) -> PreTrainedModel:
    """The base model set up for one arm: full finetuning or a peft LoRA wrapper, embeddings as asked."""
    from learnforget.base.load import load_causal_lm

    overrides = dropout_overrides(AutoConfig.from_pretrained(base_path), arm.method, arm.dropout)
    if arm.quantization:
        overrides["quantization_config"] = quantization_config(arm.quantization)
    model = load_causal_lm(base_path, precision, attn_implementation, **overrides)
    if arm.quantization:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input gradients, so it works under a frozen base (LoRA).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return prepare_arm(model, arm)


def quantization_config(kind: str):
    """bitsandbytes loading for QLoRA: 4-bit NF4 with double quantization computing in bfloat16 (the
    QLoRA paper's setting), or 8-bit."""
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )  # fmt: skip
    return BitsAndBytesConfig(load_in_8bit=True)


def prepare_arm(model: PreTrainedModel, arm: Arm) -> PreTrainedModel:
    """Wrap a loaded base for a LoRA or peft arm (targets resolved from its structure) and set the embeddings."""
    if arm.peft is not None:
        from learnforget.config.peft import build_config

        targets = None if "target_modules" in arm.peft else resolve_targets(model, arm.target_modules)
        config = build_config(arm.peft, targets, fan_in_fan_out=bool(targets) and uses_conv1d(model, targets))
        model = get_peft_model(model, config)
    elif arm.method == "lora":
        targets = resolve_targets(model, arm.target_modules)
        config = LoraConfig(
            r=arm.rank,
            lora_alpha=arm.alpha,
            lora_dropout=arm.dropout,
            target_modules=targets,
            fan_in_fan_out=uses_conv1d(model, targets),
            bias="none",
        )
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


def merged_weights(
    model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Effective weights under base-model names (the method's update folded in): W_base + ΔW for spectra.

    Plain LoRA is folded from its factors (ΔW = scaling · B·A, as peft's `get_delta_weight`); any other
    method (DoRA, VeRA, IA³, LoHa, LoKr, OFT, ...) through peft's own `merge` on a copy of one adapted
    module at a time, so the update is read in weight space (IA³'s activation scaling becomes scaled
    weight rows or columns, OFT's rotation a rotated matrix) and never two full models are held.
    Methods that rewrite the base at initialisation (PiSSA, OLoRA) keep their residual base inside the
    model: the effective weights are right, and ΔW is taken against the original base by the caller.
    `state`: the model's full state dict when its own parameters are sharded (`sharding.full_state_dict`).
    """
    gathered = state is not None
    state = model.state_dict() if state is None else state
    if not hasattr(model, "get_base_model"):
        return {n: t.detach() for n, t in state.items()}
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper

    prefix = "base_model.model."  # peft's names for the wrapped model's tensors
    inner = {n.removeprefix(prefix): t.detach() for n, t in state.items() if n.startswith(prefix)}
    merged, adapted = {}, []
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, BaseTunerLayer):
            adapted.append(name + ".")
            merged.update(
                {f"{name}.{k}": v for k, v in _merged_module(module, name, inner, gathered).items()}
            )
    # modules_to_save: the trained copy stands for the module (under its base name), the original is dropped.
    saved = [
        name + "."
        for name, m in model.get_base_model().named_modules()
        if isinstance(m, ModulesToSaveWrapper)
    ]
    for name, tensor in inner.items():
        if name.startswith(tuple(adapted)):
            continue
        owner = next((s for s in saved if name.startswith(s)), None)
        if owner is None:
            merged[name] = tensor
        elif name.startswith(owner + "modules_to_save.default."):
            merged[owner + name.removeprefix(owner + "modules_to_save.default.")] = tensor
    return merged


def _merged_module(
    module: torch.nn.Module, name: str, inner: dict[str, torch.Tensor], gathered: bool
) -> dict[str, torch.Tensor]:
    """The adapted module's base-layer tensors with its update merged (names relative to the module).
    `gathered`: the tensors in `inner` replace the module's own (sharded) ones in the copy."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import transpose

    own = {k.removeprefix(name + "."): v for k, v in inner.items() if k.startswith(name + ".")}
    base = {k.removeprefix("base_layer."): v for k, v in own.items() if k.startswith("base_layer.")}
    if isinstance(module, LoraLayer) and _plain_lora(module):
        # As peft's LoRA Linear.get_delta_weight, from tensors rather than the module's own parameters.
        a, b = own["lora_A.default.weight"], own["lora_B.default.weight"]
        if not base["weight"].is_floating_point():  # QLoRA: bitsandbytes' packed weights, dequantized
            from peft.utils.integrations import dequantize_module_weight

            base = {"weight": dequantize_module_weight(module.get_base_layer()).float()}
        base["weight"] = base["weight"] + transpose(b @ a, module.fan_in_fan_out) * module.scaling["default"]
        return base
    import copy

    clone = copy.deepcopy(module)
    if gathered:  # copies: merge works in place, and the gathered tensors are checkpointed afterwards
        clone.load_state_dict({k: v.clone() for k, v in own.items()}, strict=False, assign=True)
    with torch.no_grad():
        clone.merge(safe_merge=False)
    return {k: v.detach() for k, v in clone.get_base_layer().state_dict().items()}


def _plain_lora(module) -> bool:
    """A LoRA linear layer whose update is exactly scaling · B·A (no DoRA magnitude, no extra bias)."""
    return (
        not module.use_dora.get("default", False)
        and not getattr(module, "lora_bias", {}).get("default", False)
        and "default" in module.lora_A
        and isinstance(module.lora_A["default"], torch.nn.Linear)
        and not module.merged
    )
