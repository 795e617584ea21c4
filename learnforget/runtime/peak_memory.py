"""Peak memory of this process, per arm: GPU memory allocated on CUDA, else the resident set's high-water mark."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak_memory() -> None:
    """Start this process's peak-memory count afresh: a worker runs arm after arm, and each arm records
    its own peak. Linux resets the resident high-water mark (VmHWM) on a write of 5 to clear_refs;
    ru_maxrss, which never resets, is the fallback elsewhere."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak memory of this process since `reset_peak_memory`: GPU memory allocated when on CUDA, else the
    peak resident set size (VmHWM where /proc has it, else ru_maxrss)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
