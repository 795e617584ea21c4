"""Likelihood metrics: mean per-token loss (NLL) of packed held-out text, and of reference completions.

Inputs are built on the CPU and moved to the model's device; log-probabilities are computed in float32
whatever the logits' dtype, so a bfloat16 model's loss is not rounded to bfloat16. A forward pass takes
at most LOGITS_BYTES of float32 logits: with a large vocabulary a batch runs as several passes of fewer
rows (SmolLM2's 49k: 32 rows × 256 tokens would hold 1.6 GB of logits, and as much again twice over in
their copies and log-softmax, more than training itself needs).
"""

from __future__ import annotations

import torch

from learnforget.data.templates import special_prefix
from learnforget.runtime.device import model_device

LOGITS_BYTES = 256 * 2**20
"""Float32 logits one evaluation forward pass may hold (rows × width × vocab × 4 bytes)."""


def rows_per_pass(model: torch.nn.Module, width: int, batch_size: int) -> int:
    """Rows of `width` tokens one forward pass takes: `batch_size`, fewer where their logits exceed
    LOGITS_BYTES (at least one)."""
    vocab = getattr(model.config, "vocab_size", None) or model.get_output_embeddings().weight.shape[0]
    return max(1, min(batch_size, LOGITS_BYTES // (4 * width * vocab)))


@torch.no_grad()
def mean_token_loss(model: torch.nn.Module, rows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of `rows` [n, seq_len]."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    total, count = 0.0, 0
    batch_size = rows_per_pass(model, rows.shape[1], batch_size)
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size].to(device)
        # No KV cache: nothing reads it, and filling it costs about a tenth of the pass.
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        targets = batch[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        )
        total += loss.item()
        count += targets.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def completion_nll(
    model: torch.nn.Module, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16
) -> float:
    """Mean per-token NLL of each completion given its prompt (reference solutions' likelihood).

    A learning signal that moves long before a tiny model's pass@k leaves zero. Prompt and completion are
    encoded separately and concatenated, so the completion's tokens are exactly its own; long prompts are
    cut from the left to fit the model's context.
    """
    was_training = model.training
    model.eval()
    limit = getattr(model.config, "max_position_embeddings", 2048)
    device = model_device(model)
    total, count = 0.0, 0
    bos = special_prefix(tokenizer)  # as in training: BOS when the tokenizer adds one (Llama, Gemma)
    for start in range(0, len(pairs), batch_size):
        seqs, spans = [], []
        for prompt, completion in pairs[start : start + batch_size]:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            p = p if not bos or p[: len(bos)] == bos else bos + p
            c = tokenizer(completion, add_special_tokens=False)["input_ids"][: limit - 1]
            p = p[-(limit - len(c)) :] if p else [tokenizer.eos_token_id]
            seqs.append(p + c)
            spans.append((len(p), len(p) + len(c)))
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        ids, mask = ids.to(device), mask.to(device)
        rows = rows_per_pass(model, width, len(seqs))
        for first in range(0, len(seqs), rows):
            part = slice(first, first + rows)
            # No cache: none is read.
            logits = model(input_ids=ids[part], attention_mask=mask[part], use_cache=False).logits
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            for i, (lo, hi) in enumerate(spans[part]):
                if hi <= lo:
                    continue
                targets = ids[first + i, lo:hi]
                total -= logprobs[i, lo - 1 : hi - 1].gather(-1, targets[:, None]).sum().item()
                count += hi - lo
    model.train(was_training)
    return total / max(count, 1)
