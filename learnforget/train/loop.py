"""Training: the optimizer loop shared by base pretraining and every arm, and arm model preparation.

One loop for everything: AdamW or Lion (β = 0.9, 0.95), linear warm-up then cosine decay to 10% of the peak,
gradient clipping at 1.0, batches taken by step index from a fixed tensor of rows, so the data
position of a run is just its step (which is what makes resuming exact).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from learnforget.data.examples import step_rows
from learnforget.runtime.device import model_device
from learnforget.runtime.precision import autocast
from learnforget.train.fused_loss import causal_lm_loss, fused_loss_parts

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
        from lion_pytorch import Lion  # heavy or optional: only this path needs it

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
        # Rows split unevenly (a short batch): every process runs as many passes as the one with the
        # most rows, since FSDP's all-gathers and DDP's all-reduces must meet.
        most = -(-(stop - first) // world)
        passes = StepPasses(
            batch, target, micro_batch_size or len(batch), -(-most // (micro_batch_size or most))
        )
        loss = accumulate_gradients(model, passes, device, precision, fused, scaler, accelerator)
        learning_rate, grad_norm = optimizer_step(optimizer, scheduler, trainable, scaler, accelerator)
        loss_value = (accelerator.reduce(loss.detach(), "mean") if accelerator else loss).item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at step {step}")
        report_step(step, loss_value, learning_rate, grad_norm, on_step, on_record)
    return loss_value


def report_step(step: int, loss: float, learning_rate: float, grad_norm, on_step, on_record) -> None:
    """Hand a finished step to the callers' callbacks (`on_record`: the step log's row)."""
    if on_step is not None:
        on_step(step, loss)
    if on_record is not None:
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; its full value is the global norm
            grad_norm = grad_norm.full_tensor()
        norm = float(grad_norm) if grad_norm is not None else None
        on_record({"step": step, "loss": loss, "learning_rate": learning_rate, "grad_norm": norm})


@dataclass
class StepPasses:
    """One step's forward/backward passes over a process's rows: micro-batches of `micro` rows, and at
    least `at_least` passes (the extra ones, where this process has fewer rows, carry no loss)."""

    batch: torch.Tensor
    target: torch.Tensor
    micro: int
    at_least: int

    def __iter__(self):
        chunks = range(0, len(self.batch), self.micro)
        for n in range(max(len(chunks), self.at_least)):
            start = chunks[n] if n < len(chunks) else 0
            ids, labels = trim_padding(
                self.batch[start : start + self.micro], self.target[start : start + self.micro]
            )
            yield ids, labels, len(chunks), n < len(chunks)


def accumulate_gradients(
    model, passes: StepPasses, device, precision: str, fused, scaler, accelerator
) -> torch.Tensor:
    """Forward and backward every pass of one step; returns the step's loss (the mean of the passes'
    mean losses), gradients accumulated in the parameters."""
    loss = torch.zeros((), device=device)
    for ids, labels, count, counted in passes:
        if fused:
            part_loss = causal_lm_loss(fused, ids.to(device), labels.to(device))
        else:
            with autocast(precision, device):
                # No KV cache: training never reads it, and transformers fills one unless told.
                part_loss = model(input_ids=ids.to(device), labels=labels.to(device), use_cache=False).loss
        scaled = part_loss.float() / count * counted
        backward = scaler.scale(scaled) if scaler is not None else scaled
        if accelerator is None:
            backward.backward()
        else:
            accelerator.backward(backward)
        loss += scaled.detach()
    return loss


def optimizer_step(optimizer, scheduler, trainable: list, scaler, accelerator) -> tuple[float, object]:
    """Clip, step the optimizer and the schedule, clear the gradients; returns (the rate this step used,
    the gradient norm before clipping)."""
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if accelerator is None:
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
    else:
        grad_norm = accelerator.clip_grad_norm_(trainable, GRAD_CLIP)
    learning_rate = optimizer.param_groups[0]["lr"]  # before scheduler.step
    if scaler is not None:
        scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return learning_rate, grad_norm


def trim_padding(ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the columns after the last token with a loss: right padding of IFT rows. Under causal attention
    no earlier token sees them and they carry no loss, so the loss and gradients are those of the full
    rows, at the cost of the batch's longest row instead of seq_len."""
    has_loss = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    width = int(has_loss[-1]) + 1 if len(has_loss) else ids.shape[1]
    return ids[:, :width], labels[:, :width]
