"""The one ΔW of an arm, read from peft's own modules (never re-derived from an adapter's config).

- `adapter_updates`: a plain LoRA (or rsLoRA) model's updates, factored: ΔW = scaling · B·A per adapted
  matrix with peft's own scaling and orientation (fan_in_fan_out, embeddings), and modules_to_save as
  their trained copy; None where ΔW is not exactly that (DoRA, PiSSA/OLoRA, other methods).
- `merged_weights`: the effective weights W_base + ΔW under the base's names, for any method (plain LoRA
  folded from its factors, anything else through peft's `merge`, one module at a time).
- `adapter_model`: a saved adapter on its base, as peft loads it.

The study's milestone spectra, evaluation through merged weights (evaluate/arm_model.py) and the
`spectrum` command on an adapter directory all take ΔW from here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import transpose
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import ModulesToSaveWrapper

from learnforget.base.load import load_causal_lm
from learnforget.config.peft import rewrites_base
from learnforget.errors import UserError


@dataclass
class LowRankDelta:
    """ΔW = scale · left @ right with left m×r and right r×n (for LoRA, left = B and right = A)."""

    left: torch.Tensor
    right: torch.Tensor
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    def dense(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """The m×n matrix; only for tests and for one-matrix-at-a-time uses."""
        return self.scale * (self.left.to(device, dtype) @ self.right.to(device, dtype))


def factored_exactly(config: dict) -> bool:
    """Whether an adapter config's ΔW is exactly scale·B·A on its base (the fast factored path): plain LoRA
    and rsLoRA. DoRA rescales columns by its magnitude vector, PiSSA/OLoRA rewrite the base at
    initialisation (unless saved converted), and other methods are not B·A: those go through peft's merge."""
    peft_type = config.get("peft_type", "LORA")
    peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # LoraConfig.to_dict() keeps the enum
    return peft_type == "LORA" and not config.get("use_dora") and not rewrites_base(config)


def lora_delta(module: LoraLayer, adapter: str = "default") -> LowRankDelta | None:
    """A LoRA layer's ΔW as peft's own `get_delta_weight` forms it (scaling, fan_in_fan_out, embeddings'
    transposed factors), kept factored; None for a layer that is not plain B·A."""
    scale = module.scaling[adapter]
    if adapter in module.lora_A and isinstance(module.lora_A[adapter], torch.nn.Linear):
        if module.use_dora.get(adapter, False) or getattr(module, "lora_bias", {}).get(adapter, False):
            return None
        a, b = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()
        # peft stores Conv1D (fan_in_fan_out) updates transposed: ΔW = scale·(B·A)ᵀ = scale·Aᵀ·Bᵀ.
        return LowRankDelta(a.T, b.T, scale) if module.fan_in_fan_out else LowRankDelta(b, a, scale)
    if adapter in getattr(module, "lora_embedding_A", {}):
        a, b = module.lora_embedding_A[adapter].detach(), module.lora_embedding_B[adapter].detach()
        return LowRankDelta(a.T, b.T, scale)  # an embedding's ΔW is (B·A)ᵀ
    return None


def adapter_updates(model: torch.nn.Module | None) -> dict[str, LowRankDelta | torch.Tensor] | None:
    """ΔW of every matrix a plain-LoRA peft model changes, by base parameter name: factored, or the trained
    copy of a modules_to_save module; None unless ΔW is exactly scale·B·A (`factored_exactly`), or for no
    model (a sharded arm's parameters) or full finetuning."""
    configs = getattr(model, "peft_config", None)
    if not configs or len(configs) != 1:
        return None
    ((adapter, config),) = configs.items()
    if not factored_exactly(config.to_dict()):
        return None
    updates: dict[str, LowRankDelta | torch.Tensor] = {}
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            delta = lora_delta(module, adapter)
            if delta is None:
                return None
            updates[f"{name}.weight"] = delta
        elif isinstance(module, ModulesToSaveWrapper):
            updates[f"{name}.weight"] = module.modules_to_save[adapter].weight.detach()
    return updates


def adapter_model(base_dir: Path, adapter_dir: Path) -> PeftModel:
    """A saved peft adapter on its base model, as peft loads it; an adapter that does not fit the base is
    one line naming both."""
    try:
        return PeftModel.from_pretrained(load_causal_lm(str(base_dir)), str(adapter_dir))
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatches, missing target modules
        reason = str(e).strip().splitlines()
        reason = next(
            (line.strip() for line in reason if "shape" in line or "size mismatch" in line),
            reason[0] if reason else "",
        )
        raise UserError(
            f"{adapter_dir}: the adapter does not fit {base_dir} ({reason[:300]}; weight shapes differ); is BASE "
            "the model it was trained on?"
        ) from None


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

    own = {k.removeprefix(name + "."): v for k, v in inner.items() if k.startswith(name + ".")}
    base = {k.removeprefix("base_layer."): v for k, v in own.items() if k.startswith("base_layer.")}
    if isinstance(module, LoraLayer) and _plain_lora(module):
        # As peft's LoRA Linear.get_delta_weight, from tensors rather than the module's own parameters.
        a, b = own["lora_A.default.weight"], own["lora_B.default.weight"]
        if not base["weight"].is_floating_point():  # QLoRA: bitsandbytes' packed weights, dequantized
            base = {"weight": dequantize_module_weight(module.get_base_layer()).float()}
        base["weight"] = base["weight"] + transpose(b @ a, module.fan_in_fan_out) * module.scaling["default"]
        return base
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
