"""Numeric precision: how weights are stored, how forward/backward run, and how arms are saved.

- 'fp32':        float32 everywhere.
- 'bf16-mixed':  float32 master weights, gradients and optimizer states; forward and backward under
                 `torch.autocast(bfloat16)` (matmuls in bf16, norms and softmax kept in fp32 by autocast).
- 'fp16-mixed':  the same with float16, plus a gradient scaler (fp16's range needs loss scaling).
- 'bf16':        weights stored in bfloat16 (2 bytes per frozen parameter). Full finetuning then trains
                 pure bf16 weights, gradients and optimizer states; peft keeps LoRA's own weights in
                 float32 (its `autocast_adapter_dtype`), so a LoRA arm is a bf16 base plus fp32 adapters.

Evaluation runs under the same precision as training, so a milestone measures the model as it trains.
Trained arms are saved in the base model's own dtype (a bf16 hub model stays bf16 on disk).
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

LOW_PRECISION = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def storage_dtype(precision: str) -> torch.dtype:
    """The dtype model weights are loaded in."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device: torch.device | str):
    """The forward-pass context: autocast for the mixed precisions, nothing otherwise."""
    dtype = LOW_PRECISION.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def grad_scaler(precision: str, device: torch.device | str) -> torch.amp.GradScaler | None:
    """fp16-mixed needs loss scaling (its range underflows small gradients); bf16 and fp32 do not."""
    if precision != "fp16-mixed":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def base_dtype(model_path: str) -> torch.dtype:
    """The dtype a model was published in (its config's `dtype`), float32 when it does not say."""
    # heavy: only this function needs transformers, and the CLI imports this module on every start
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def absolute_model_path(model_path: str) -> str:
    """A local model directory as an absolute path (saved adapters must name a base that loads from
    anywhere); a hub id unchanged."""
    path = Path(model_path).expanduser()
    return str(path.resolve()) if path.is_dir() else model_path


def native_cpu_bf16() -> bool | None:
    """Whether this CPU computes in bfloat16 natively (AVX512_BF16 or AMX), None where torch cannot tell
    (not x86, or a torch without these checks)."""
    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if platform.machine().lower() not in ("x86_64", "amd64") or not all(checks):
        return None
    return any(check() for check in checks)


def cpu_bf16_warning(precision: str) -> str | None:
    """One line when a bf16 precision would run on a CPU that emulates bf16 (~15× slower than fp32 was
    measured), else None; a study on a GPU is never warned."""
    if precision not in ("bf16-mixed", "bf16") or torch.cuda.is_available() or native_cpu_bf16() is not False:
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    return (
        f"precision {precision} on a CPU without native bf16 ({capability}): expect ~15× slower than fp32; "
        "use precision: fp32 on this machine"
    )
