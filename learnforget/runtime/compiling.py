"""`compile: true`: training through decoder layers compiled with `torch.compile` (regional compilation).

Each decoder layer is compiled, not the whole model: the layers share one code object, so one compilation
serves every layer, every milestone segment and every arm of the same shapes in a process. Torch caches
compiled kernels on disk (TORCHINDUCTOR_CACHE_DIR), so later processes compile in seconds. Attention
stays the library's kernel; compiling fuses the element-wise work around it (norms, rotary embeddings,
activations, residual adds).

Only training runs compiled. Evaluation runs the same modules eagerly
(`evaluate.arm_model.evaluate_model`), so every recorded metric is what a plain transformers model gives,
and a saved arm reloads to exactly those numbers. Compiled training is deterministic (the same kernels
every run) and agrees with eager training up to float rounding.
"""

from __future__ import annotations

import torch

from learnforget.errors import UserError
from learnforget.runtime.sharding import decoder_layers


def compile_layers(model: torch.nn.Module) -> None:
    """Compile every decoder layer of `model` (a peft wrapper too) for its later forward/backward passes."""
    try:
        layers = decoder_layers(model)
    except ValueError as e:
        raise UserError(f"compile: {e}") from None
    for layer in layers:
        # torch's default shape policy: static for CPT's one batch shape; a second width (IFT rows
        # trimmed to their longest labelled column) recompiles once with the sequence length dynamic.
        layer.compile()
