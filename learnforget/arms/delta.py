"""The one ΔW: an arm's effective weights, W_base + ΔW under the base's names, whatever its method.

Used by the study's milestone spectra, by evaluation through merged weights (evaluate/arm_model.py) and
by the `spectrum` command on an adapter directory. Plain LoRA is folded from peft's own factors and
scaling; any other method through peft's own `merge`, one module at a time.
"""

from __future__ import annotations

import copy

import torch
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import transpose
from peft.utils.integrations import dequantize_module_weight
from peft.utils.other import ModulesToSaveWrapper


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
