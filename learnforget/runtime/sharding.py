"""Sharded arms (`sharding: fsdp`): torch FSDP2 applied by hand, one unit per decoder layer plus the root.

Under a multi-process launcher every process holds a 1/world slice of every weight, gradient and
optimizer state. Everything that needs whole weights is a collective here: all processes call it
together, and the full tensors arrive on the main process only (on the CPU), which then measures
spectra, writes checkpoints and saves the model. Resuming loads the full state on every process and
shards it again.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
LOAD = StateDictOptions(full_state_dict=True, strict=False)  # checkpoints hold the trainable tensors only


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's stack of repeated blocks: the largest ModuleList whose children share one class.

    Found by structure, not by name, so it works for Llama, GPT-2, Mistral, ... and inside a peft wrapper.
    """
    best = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0:
            classes = Counter(type(child) for child in module)
            if len(classes) == 1 and (best is None or len(module) > len(best)):
                best = module
    if best is None:
        raise ValueError(f"{type(model).__name__}: no ModuleList of repeated decoder layers to shard")
    return best


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def mixed_precision(precision: str) -> MixedPrecisionPolicy:
    """bf16 compute with float32 gradient reduction for 'bf16-mixed'; otherwise the weights' own dtype."""
    if precision == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_model(model: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    """fully_shard every decoder layer, then the root (embeddings, final norm, head: tied ones stay
    together). Build the optimizer afterwards: sharding replaces the parameters with DTensors."""
    policy = mixed_precision(precision)
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if hasattr(module, "generate"):
            # transformers then generates with synced_gpus: every process keeps stepping until all are
            # done, so processes whose sequences end at different lengths never leave a collective waiting.
            module._is_fsdp_managed_module = True
    return model


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the whole model's weights on the main process's CPU; an empty dict elsewhere."""
    return get_model_state_dict(model, options=GATHER)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: the whole optimizer state (keyed by parameter name) on the main process's CPU."""
    return get_optimizer_state_dict(model, optimizer, options=GATHER)


def load_full_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, trainable: dict, state: dict
) -> None:
    """Every process loads the same full tensors; each keeps its own shard of them."""
    set_model_state_dict(model, trainable, options=LOAD)
    set_optimizer_state_dict(model, optimizer, state, options=LOAD)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


class Collective:
    """What `train.loop.train_steps` asks of a launcher (the Accelerator's interface), for FSDP-sharded
    models: FSDP2 reduce-scatters gradients itself; clipping works on the DTensor gradients."""

    def __init__(self):
        self.process_index = dist.get_rank()
        self.num_processes = dist.get_world_size()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.num_processes if reduction == "mean" else tensor


def gather(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Collective: full weights and optimizer state on the main process (for spectra and checkpoints)."""
    return {"model": full_state_dict(model), "optimizer": full_optimizer_state(model, optimizer)}


@contextmanager
def evaluating(model: torch.nn.Module):
    """Keep the root's weights (embeddings, head) gathered while evaluating a sharded model: generation
    through a peft wrapper calls the inner model directly, past the root's own gathering hook."""
    if not is_sharded(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


@contextmanager
def saved_as_unsharded(model: torch.nn.Module):
    """Save a sharded model under its own class name: transformers writes `type(model).__name__` into
    config.json's `architectures`, and FSDP2 renames the class to 'FSDP<name>'."""
    if not is_sharded(model):
        yield
        return
    sharded_class = type(model)
    model.__class__ = next(c for c in sharded_class.__mro__[1:] if not issubclass(c, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = sharded_class
