"""Where a model's inputs go: evaluation builds its tensors on the CPU and moves them to the model."""

from __future__ import annotations

import contextlib

import torch


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (its input embeddings), for a plain or peft-wrapped model.

    Inputs belong there even when a device map spreads the layers over several devices. A model without
    parameters runs on the CPU.
    """
    parameter = next(model.parameters(), None)  # a peft wrapper yields its base model's parameters
    return parameter.device if parameter is not None else torch.device("cpu")


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Fork the CPU RNG and, on an accelerator, that device's RNG too (sampling draws from the latter)."""
    if device.type in ("cpu", "meta"):
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)
