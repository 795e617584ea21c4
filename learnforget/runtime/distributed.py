"""Scale-out: one arm trained by several launched processes (torchrun or `accelerate launch`).

Without a launcher (WORLD_SIZE unset or 1) nothing here is used and training is the plain loop on one
device. Under a launcher, every process runs the same command: the main process does the study's
bookkeeping (base pretraining, store, checkpoints, report), each process takes its slice of every batch.
With `sharding: none` Accelerate runs DDP (all-reduced gradients); with `sharding: fsdp` the arm is
sharded by `sharding.py`. The Accelerator also sets up the process group (gloo on the CPU, NCCL on GPUs).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import cache

import torch


def world_size() -> int:
    """Processes launched per arm (accelerate launch / torchrun set WORLD_SIZE), else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    """Launched as several processes (accelerate launch / torchrun)."""
    return world_size() > 1


@cache
def accelerator():
    """The process's Accelerator (created once, only when distributed)."""
    from accelerate import Accelerator  # heavy: imported only under a multi-process launcher

    return Accelerator(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return not is_distributed() or accelerator().is_main_process


@contextmanager
def main_process_first():
    """The main process runs the block first (e.g. pretraining the cached base); the others then reuse it."""
    if not is_distributed():
        yield
        return
    with accelerator().main_process_first():
        yield


def wait_for_everyone() -> None:
    if is_distributed():
        accelerator().wait_for_everyone()


def device() -> torch.device:
    """Where a single-process run trains: the GPU when there is one."""
    if is_distributed():
        return accelerator().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
