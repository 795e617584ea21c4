"""The causal-LM training loss without full-vocabulary logits: LM head and cross-entropy fused, in chunks.

Hugging Face's `model(input_ids, labels=...)` materialises logits for every token (batch × seq × vocab
floats), then log-softmax and its gradient over all of them: on a CPU those passes run from main memory.
Here the head's matmul, the cross-entropy and both gradients are computed a chunk of tokens at a time
during the forward pass (a chunk's logits stay in cache), and the backward pass only scales the saved
gradients. Same loss (mean over tokens with a label, labels shifted as transformers does) and gradients
as the unfused path up to float rounding; deterministic.

Used only where the model's logits are exactly `lm_head(last hidden state)` (FUSED_MODEL_TYPES, no bias,
fp32, one process); anything else takes transformers' own loss.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
CHUNK_TOKENS = 256  # a chunk's logits (256 × vocab floats) fit a core's cache for vocabularies ~4k-32k
# Architectures whose causal-LM head is a plain linear map of the decoder's last hidden state (no logit
# scaling or soft-capping).
FUSED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class _LinearCrossEntropy(torch.autograd.Function):
    """mean over labelled rows of CE(hidden @ weightᵀ, labels); gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        labelled = labels != IGNORE_INDEX
        count = labelled.sum().clamp(min=1)
        targets = labels.clamp(min=0)
        total = hidden.new_zeros((), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            h, y = hidden[start : start + CHUNK_TOKENS], targets[start : start + CHUNK_TOKENS]
            keep = labelled[start : start + CHUNK_TOKENS]
            logits = h @ weight.T
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, y[:, None]).squeeze(1)) * keep).sum()
            grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place: d(CE)/d(logits) = softmax - onehot
            grad[torch.arange(len(y)), y] -= 1.0
            grad.mul_((keep / count)[:, None])
            grad_hidden[start : start + CHUNK_TOKENS] = grad @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.T, h)
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / labelled.sum()  # no labelled token: nan, as transformers' mean gives

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        grad_weight = grad_weight * grad_output if grad_weight is not None else None
        return grad_hidden * grad_output, grad_weight, None


def fused_loss_parts(model: torch.nn.Module):
    """(decoder, LM head) of a model the fused loss applies to (a peft wrapper: its base), else None."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    if getattr(config, "model_type", None) not in FUSED_MODEL_TYPES:
        return None
    head = inner.get_output_embeddings()
    decoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if decoder is None or type(head) is not torch.nn.Linear or head.bias is not None:
        return None
    if head.weight.dtype != torch.float32:
        return None
    return decoder, head


def causal_lm_loss(parts, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean next-token loss of `ids` against `labels` (-100: no loss), as transformers computes it."""
    decoder, head = parts
    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
    shifted = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:]  # token t predicts t + 1
    return _LinearCrossEntropy.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, shifted.reshape(-1))
