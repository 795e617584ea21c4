"""Batched generation with any HF causal LM: greedy or sampled completions, cut at stop strings.

Used for generation benchmarks (exact match, pass@k) and for the diversity analysis. Prompts are
left-padded (the tokenizer's pad token, else its EOS) so that every row's new tokens start at the same
column; `model.generate` runs with the KV cache and transformers' `stop_strings`, so a batch stops as
soon as every row has produced a stop string. Sampling is seeded per batch, so the same seed and
batch_size give the same samples; the global torch RNG is left as it was.

Greedy and sampled prompts can share batches (`greedy`): a small model's decoding step costs about the
same for 8 rows as for 28, so the greedy benchmark rides along with the diversity samples. The batch is
sampled, and a logits processor turns a greedy row's distribution into a point mass on its argmax
before the temperature and nucleus warpers, so that row decodes exactly as greedy decoding would.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from learnforget.data.templates import special_prefix
from learnforget.errors import UserError
from learnforget.evaluate.choice import model_max_length
from learnforget.runtime.device import forked_rng, model_device


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for number, row in enumerate(rows):
        input_ids[number, width - len(row) :] = torch.tensor(row)
        attention_mask[number, width - len(row) :] = 1
    return input_ids, attention_mask


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text up to (not including) the earliest occurrence of any stop string."""
    cut = min((position for s in stop if s and (position := text.find(s)) >= 0), default=len(text))
    return text[:cut]


def _completion(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    # Decode prompt + completion together and strip the decoded prompt: decoding the new tokens alone
    # drops a leading space with SentencePiece tokenizers (Llama-2), which breaks Python indentation.
    prompt_text = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    full_text = tokenizer.decode(prompt_ids + new_ids, skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return full_text[len(prompt_text) :]
    return tokenizer.decode(new_ids, skip_special_tokens=True)


class _GreedyRows(LogitsProcessor):
    """The rows marked greedy keep only their highest-scoring token."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows  # bool, one per row of the batch

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        point = torch.full_like(scores, float("-inf")).scatter_(-1, scores.argmax(-1, keepdim=True), 0.0)
        return torch.where(self.rows.to(scores.device)[:, None], point, scores)


def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int,
    stop: Sequence[str] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_samples: int = 1,
    batch_size: int = 16,
    seed: int = 0,
    greedy: Sequence[bool] | None = None,
) -> list[list[str]]:
    """Complete each prompt num_samples times; return the completions only, one list per prompt.

    temperature == 0 decodes greedily (computed once per prompt and repeated num_samples times);
    otherwise samples with that temperature and nucleus top_p (no top-k cut). `greedy`, one flag per
    prompt: those prompts are decoded greedily whatever the temperature (see the module's docstring).
    batch_size counts sequences (prompt copies) generated together. Prompts are left-truncated so that
    prompt plus max_new_tokens fit the model's window. Each completion ends before its first stop string.
    """
    _check_settings(max_new_tokens, num_samples, batch_size, temperature, top_p)
    pad_id = _pad_id(tokenizer)
    encoded = _encode_prompts(tokenizer, prompts, _prompt_window(model, tokenizer, max_new_tokens))
    greedy = _greedy_flags(greedy, len(prompts), temperature)
    sampling = not all(greedy)
    options = _generate_options(model, tokenizer, max_new_tokens, pad_id, stop, sampling, temperature, top_p)
    jobs = [number for number in range(len(prompts)) for _ in range(1 if greedy[number] else num_samples)]
    completions: list[list[str]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for batch_number, first in enumerate(range(0, len(jobs), batch_size)):
            rows = jobs[first : first + batch_size]
            outputs = _generate_batch(model, [encoded[n] for n in rows], [greedy[n] for n in rows],
                                      pad_id, options, sampling, seed + batch_number)  # fmt: skip
            for number, new_ids in zip(rows, outputs, strict=True):
                text = _completion(tokenizer, encoded[number], new_ids)
                completions[number].append(truncate_at_stop(text, stop))
    finally:
        model.train(was_training)
    return [texts * num_samples if greedy[number] else texts for number, texts in enumerate(completions)]


def _check_settings(max_new_tokens: int, num_samples: int, batch_size: int, temperature: float, top_p: float):
    """A one-line UserError for a count below 1, a negative temperature or a top_p outside (0, 1]."""
    if max_new_tokens < 1 or num_samples < 1 or batch_size < 1:
        raise UserError(
            f"generate: max_new_tokens, num_samples and batch_size must be >= 1 "
            f"(got {max_new_tokens}, {num_samples}, {batch_size})"
        )
    if temperature < 0 or not 0 < top_p <= 1:
        raise UserError(f"generate: need temperature >= 0 and 0 < top_p <= 1 (got {temperature}, {top_p})")


def _pad_id(tokenizer) -> int:
    """The token that left-pads prompts: the tokenizer's pad token, else its EOS."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise UserError("generate: the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad_id


def _prompt_window(model, tokenizer, max_new_tokens: int) -> int:
    """The most prompt tokens that leave room for max_new_tokens in the model's window."""
    max_prompt_tokens = model_max_length(model, tokenizer) - max_new_tokens
    if max_prompt_tokens < 1:
        raise UserError(
            f"generate: max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's window"
        )
    return max_prompt_tokens


def _encode_prompts(tokenizer, prompts: list[str], max_prompt_tokens: int) -> list[list[int]]:
    """Each prompt's token ids, left-truncated to max_prompt_tokens. As in training: BOS when the
    tokenizer adds one, once (a rendered chat template may hold it), and never an EOS that a tokenizer's
    configuration would append."""
    bos = special_prefix(tokenizer)
    encoded = []
    for number, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = (ids if not bos or ids[: len(bos)] == bos else bos + ids)[-max_prompt_tokens:]
        if not ids:
            raise UserError(f"generate: prompt {number} encodes to no tokens; give every prompt some text")
        encoded.append(ids)
    return encoded


def _greedy_flags(greedy: Sequence[bool] | None, n_prompts: int, temperature: float) -> list[bool]:
    """Whether each prompt decodes greedily: all of them at temperature 0, else those flagged."""
    flags = [temperature == 0 or bool(flag) for flag in (greedy or [False] * n_prompts)]
    if len(flags) != n_prompts:
        raise UserError(f"generate: {len(flags)} greedy flags for {n_prompts} prompts")
    return flags


def _generate_options(
    model, tokenizer, max_new_tokens: int, pad_id: int, stop: Sequence[str], sampling: bool,
    temperature: float, top_p: float,
) -> dict:  # fmt: skip
    """Keyword arguments of `model.generate` shared by every batch."""
    options = {"max_new_tokens": max_new_tokens, "use_cache": True, "pad_token_id": pad_id}
    if sampling:
        options |= {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}
    else:
        options |= {"do_sample": False}
    if model.generation_config.eos_token_id is None and tokenizer.eos_token_id is not None:
        options["eos_token_id"] = tokenizer.eos_token_id
    if any(stop):
        options |= {"stop_strings": [s for s in stop if s], "tokenizer": tokenizer}
    return options


def _generate_batch(
    model, rows: list[list[int]], greedy: list[bool], pad_id: int, options: dict, sampling: bool, seed: int
) -> list[list[int]]:
    """The new token ids of each row of one batch, sampled under `seed` (the global RNG is left as it was)."""
    device = model_device(model)
    input_ids, attention_mask = _left_pad(rows, pad_id)
    marked = torch.tensor(greedy)
    extra = (
        {"logits_processor": LogitsProcessorList([_GreedyRows(marked)])} if sampling and marked.any() else {}
    )
    with forked_rng(device):  # sampling draws from the model's device's generator
        torch.manual_seed(seed)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            **options,
            **extra,
        )
    return output[:, input_ids.shape[1] :].tolist()
