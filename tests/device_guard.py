"""Run code on a model on PyTorch's `meta` device and fail, as a GPU would, on any op that mixes devices.

A meta model fed CPU inputs does not always fail by itself (meta's embedding kernel accepts CPU indices),
and it cannot read values (`.item()`, `.tolist()`, `bool()`), so evaluation would stop at its first read.
Inside `MetaDeviceGuard` every op is checked first: tensors (of one or more dims: PyTorch lets 0-dim CPU
tensors join GPU ops) on meta and on another device raise "... is not on the expected device meta!";
then value reads from meta return zeros (True for booleans, which ends generation loops after one step
and passes transformers' all-ones attention-mask check; False for `torch.equal`), so evaluation runs to
its end on meta.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

aten = torch.ops.aten
_MOVES = {aten.copy_.default, aten._to_copy.default}  # moving tensors between devices is the point
_READS = {aten._local_scalar_dense.default, aten.item.default, aten.is_nonzero.default}


class MetaDeviceGuard(TorchDispatchMode):
    """Counts the ops run on meta tensors (`meta_ops`, by op name) and rejects ops mixing meta with a device."""

    def __init__(self) -> None:
        super().__init__()
        self.meta_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if t.dim() > 0}
        if "meta" in devices and len(devices) > 1 and func not in _MOVES:
            others = ", ".join(sorted(devices - {"meta"}))
            raise RuntimeError(f"{func}: Tensor on device {others} is not on the expected device meta!")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is None or not source.is_meta:
            return func(*args, **kwargs)
        self.meta_ops[func.__name__.split(".")[0]] += 1
        if func is aten.equal.default:
            return False  # unknown values differ: the spectrum then takes its ΔW path
        if func in _READS:
            return True if source.dtype == torch.bool or func is aten.is_nonzero.default else 0
        target = kwargs.get("device")
        if func is aten._to_copy.default and target is not None and torch.device(target).type != "meta":
            return torch.zeros(source.shape, dtype=kwargs.get("dtype") or source.dtype, device=target)
        return func(*args, **kwargs)
