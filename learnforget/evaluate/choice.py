"""HellaSwag-style multiple choice built from held-out source-domain text, scored as lm-eval scores it.

The paper measures forgetting with HellaSwag, ARC-Challenge and WinoGrande. For a miniature base that
was pretrained on our own source corpus (e.g. Shakespeare), those benchmarks are out of reach, so this
module builds the same kind of task from held-out documents of that corpus:

- build_choice_items: a context span of text, its true continuation, and distractors that are
  continuations of the same token length from *other* passages (another document or a far-away
  position). Spans are cut at whitespace, so every string is readable text.
- choice_loglikelihoods: for each choice, the summed log-probability of its tokens given the context,
  tokenised exactly as lm-eval's `_encode_pair` does for causal models (encode context + continuation
  as one string, split at the context's token length), contexts left-truncated to the model's window.
  Every choice shares its item's context tokens, so each context runs once and its KV cache is repeated
  for the choices' continuations (items that need truncation, and models without a KV cache, run one
  request per choice instead).
- score_choices: `acc` (argmax of summed log-likelihood) and `acc_norm` (argmax of log-likelihood
  divided by the choice's length in characters), as lm-eval's multiple_choice `process_results`.

As in lm-eval's HellaSwag, each choice is scored as the continuation TARGET_DELIMITER + choice.
"""

from __future__ import annotations

import copy
import inspect
import random
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace

import numpy as np
import torch

from learnforget.errors import UserError
from learnforget.runtime.device import model_device

TARGET_DELIMITER = " "  # lm-eval's default target_delimiter between context and choice
DEFAULT_MAX_LENGTH = 2048  # lm-eval's fallback when neither model config nor tokenizer gives a window
_MAX_DRAWS_PER_DISTRACTOR = 200  # give up (UserError) when the documents are too few to find distractors


@dataclass(frozen=True)
class _DocumentIndex:
    """Word start offsets of one document and, per word, how many of its tokens lie before that word."""

    text: str
    word_starts: list[int]
    tokens_before: list[int]  # one per word, plus the document's total token count at the end
    next_joinable: list[int]  # per word (and the end), the first word at or after it preceded by one space
    n_starts: int  # how many words can start a full context + continuation


@dataclass(frozen=True)
class _Passage:
    """Character offsets in one document: context is [start, split), continuation is [split, end)."""

    doc: int
    start: int
    split: int
    end: int


def _index_document(text: str, tokenizer, context_tokens: int, continuation_tokens: int) -> _DocumentIndex:
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    # A token belongs to the word its last character falls in, so tokens_before[w] counts whole tokens
    # that end at or before word w starts.
    token_ends = sorted(end for start, end in encoding["offset_mapping"] if end > start)
    word_starts = [match.start() for match in re.finditer(r"\S+", text)]
    tokens_before = [bisect_right(token_ends, start) for start in word_starts] + [len(token_ends)]
    # Continuations start only after a single space, so context + " " + true choice is the document's
    # own text (not a line break turned into a space) and no choice gives itself away by starting a line.
    next_joinable = [len(word_starts)] * (len(word_starts) + 1)
    for word in reversed(range(len(word_starts))):
        start = word_starts[word]
        joinable = start >= 2 and text[start - 1] == " " and not text[start - 2].isspace()
        next_joinable[word] = word if joinable else next_joinable[word + 1]
    index = _DocumentIndex(text, word_starts, tokens_before, next_joinable, 0)
    # Validity is monotone in the start word (a later start never ends earlier): binary-search the count.
    low, high = 0, len(word_starts)
    while low < high:
        middle = (low + high) // 2
        if _cut(index, middle, context_tokens, continuation_tokens) is None:
            high = middle
        else:
            low = middle + 1
    return replace(index, n_starts=low)


def _cut(index: _DocumentIndex, first_word: int, context_tokens: int, continuation_tokens: int):
    """Word indices (context end, continuation end) for a passage starting at first_word, or None."""
    n_words = len(index.word_starts)
    counts = index.tokens_before
    split_word = bisect_left(counts, counts[first_word] + context_tokens, lo=first_word + 1)
    split_word = index.next_joinable[min(split_word, n_words)]
    if split_word >= n_words:
        return None
    end_word = bisect_left(counts, counts[split_word] + continuation_tokens, lo=split_word + 1)
    if end_word > n_words:
        return None
    return split_word, end_word


def _passage(
    indexes: list[_DocumentIndex],
    first_starts: list[int],
    position: int,
    context_tokens: int,
    continuation_tokens: int,
) -> _Passage:
    """The passage at a global start position; first_starts[d] is the global position of document d's first."""
    doc = bisect_right(first_starts, position) - 1
    index, first_word = indexes[doc], position - first_starts[doc]
    split_word, end_word = _cut(index, first_word, context_tokens, continuation_tokens)
    end = index.word_starts[end_word] if end_word < len(index.word_starts) else len(index.text)
    return _Passage(doc, index.word_starts[first_word], index.word_starts[split_word], end)


def _is_far(a: _Passage, b: _Passage) -> bool:
    """True when b's continuation is in another document or at least a passage length away from a."""
    if a.doc != b.doc:
        return True
    margin = a.end - a.start
    return b.end <= a.start - margin or b.split >= a.end + margin


def _text(indexes: list[_DocumentIndex], passage: _Passage, start: int, end: int) -> str:
    return indexes[passage.doc].text[start:end].strip()


def build_choice_items(
    documents: list[str],
    tokenizer,
    n_items: int,
    context_tokens: int = 48,
    continuation_tokens: int = 16,
    n_choices: int = 4,
    seed: int = 0,
) -> list[dict]:
    """Build HellaSwag-style items from plain-text documents (held-out source-domain text).

    Each passage starts at a word; its context runs until it holds at least `context_tokens` tokens (to
    the next word that follows a single space, so that context + " " + continuation is the document's
    own text) and its continuation until it holds at least `continuation_tokens` more (token counts
    from the tokenizer, cut at the next word boundary). Distractors are continuations of other passages drawn
    the same way, from another document or at least one passage length away, and differ from every
    other choice after whitespace normalisation. Text keeps its own line breaks; ends are stripped.

    Returns [{"context": str, "choices": [str, ...], "label": int}, ...], n_items long, identical for
    the same documents, tokenizer and seed; the label position is drawn uniformly.
    """
    if n_items < 1 or context_tokens < 1 or continuation_tokens < 1 or n_choices < 2:
        raise UserError(
            f"build_choice_items: need n_items, context_tokens, continuation_tokens >= 1 and n_choices >= 2 "
            f"(got {n_items}, {context_tokens}, {continuation_tokens}, {n_choices})"
        )
    indexes = [_index_document(text, tokenizer, context_tokens, continuation_tokens) for text in documents]
    draw = _PassageDraw(indexes, context_tokens, continuation_tokens)
    if draw.total < n_items:
        raise UserError(
            f"build_choice_items: the {len(documents)} documents hold only {draw.total} passages of "
            f"{context_tokens}+{continuation_tokens} tokens, fewer than n_items={n_items}; "
            "pass more or longer held-out documents, or lower n_items"
        )
    rng = random.Random(seed)
    items = []
    for position in rng.sample(range(draw.total), n_items):
        passage = draw.passage(position)
        true_choice = draw.text(passage, passage.split, passage.end)
        distractors = _distractors(draw, passage, true_choice, n_choices - 1, rng)
        label = rng.randrange(n_choices)
        choices = distractors[:label] + [true_choice] + distractors[label:]
        items.append(
            {
                "context": draw.text(passage, passage.start, passage.split),
                "choices": choices,
                "label": label,
            }
        )
    return items


class _PassageDraw:
    """Every valid passage of the documents, numbered by a global start position (document by document)."""

    def __init__(self, indexes: list[_DocumentIndex], context_tokens: int, continuation_tokens: int):
        self.indexes, self.context_tokens, self.continuation_tokens = (
            indexes,
            context_tokens,
            continuation_tokens,
        )
        self.first_starts = [0]  # global position of each document's first valid start word
        for index in indexes:
            self.first_starts.append(self.first_starts[-1] + index.n_starts)
        self.total = self.first_starts.pop()

    def passage(self, position: int) -> _Passage:
        return _passage(
            self.indexes, self.first_starts, position, self.context_tokens, self.continuation_tokens
        )

    def text(self, passage: _Passage, start: int, end: int) -> str:
        return _text(self.indexes, passage, start, end)


def _distractors(
    draw: _PassageDraw, passage: _Passage, true_choice: str, n: int, rng: random.Random
) -> list[str]:
    """`n` continuations of random other passages far from `passage`, distinct from each other and from
    the true choice after whitespace normalisation (a UserError when the draws run out)."""
    seen = {" ".join(true_choice.split())}
    distractors: list[str] = []
    for _ in range(_MAX_DRAWS_PER_DISTRACTOR * n):
        other = draw.passage(rng.randrange(draw.total))
        text = draw.text(other, other.split, other.end)
        if _is_far(passage, other) and " ".join(text.split()) not in seen:
            seen.add(" ".join(text.split()))
            distractors.append(text)
            if len(distractors) == n:
                return distractors
    raise UserError(
        f"build_choice_items: could not find {n} distinct distractors far from a passage; "
        "pass more (or more varied) held-out documents, or lower n_choices"
    )


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's `_encode_pair` makes them for causal models.

    Trailing whitespace of the context moves to the continuation; the whole string is encoded once
    and split at the length of the encoded context. An empty context becomes the BOS (else EOS) token.
    """
    context_ids, [continuation_ids] = encode_pairs(tokenizer, context, [continuation])
    return context_ids, continuation_ids


def encode_pairs(tokenizer, context: str, continuations: list[str]) -> tuple[list[int], list[list[int]]]:
    """`encode_pair` for several continuations of one context, in one tokenizer call: the context's ids
    (the same for every continuation) and each continuation's ids."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuations = [context[-n_spaces:] + continuation for continuation in continuations]
        context = context[:-n_spaces]
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuations, add_special_tokens=False)["input_ids"]
    context_ids, *wholes = tokenizer([context] + [context + continuation for continuation in continuations])[
        "input_ids"
    ]
    return context_ids, [whole[len(context_ids) :] for whole in wholes]


def model_max_length(model, tokenizer) -> int:
    """The model's context window, looked up as lm-eval does (config, then tokenizer, then 2048)."""
    for attribute in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model.config, attribute, None)
        if value:
            return int(value)
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        return int(tokenizer.model_max_length)
    return DEFAULT_MAX_LENGTH


def _check_items(items: list[dict]) -> None:
    if not items:
        raise UserError("score_choices got no items: build some with build_choice_items")
    for number, item in enumerate(items):
        choices = item.get("choices")
        if not isinstance(item.get("context"), str) or not isinstance(choices, list) or len(choices) < 2:
            raise UserError(
                f"choice item {number}: needs a 'context' string and a 'choices' list of >= 2 strings"
            )
        if not all(isinstance(choice, str) and choice for choice in choices):
            raise UserError(f"choice item {number}: every choice must be a non-empty string")
        if not isinstance(item.get("label"), int) or not 0 <= item["label"] < len(choices):
            raise UserError(f"choice item {number}: 'label' must be an index into its {len(choices)} choices")


Encoded = tuple[list[int], list[list[int]]]  # an item's context token ids and each choice's continuation ids


def _encode_items(tokenizer, items: list[dict], max_length: int) -> list[Encoded]:
    encoded = []
    for number, item in enumerate(items):
        continuations = [TARGET_DELIMITER + choice for choice in item["choices"]]
        context_ids, continuation_ids = encode_pairs(tokenizer, item["context"], continuations)
        for choice_number, ids in enumerate(continuation_ids):
            if not ids or len(ids) > max_length:
                raise UserError(
                    f"choice item {number}, choice {choice_number}: encodes to {len(ids)} tokens; "
                    f"it must be between 1 and the model's window of {max_length}"
                )
        encoded.append((context_ids, continuation_ids))
    return encoded


@torch.inference_mode()
def choice_loglikelihoods(
    model, tokenizer, items: list[dict], batch_size: int = 16, share_contexts: bool = True
) -> list[list[float]]:
    """Summed log-probability of each choice's tokens given its item's context, one list per item.

    Each context runs once: items with as many context tokens and as many choices are batched, the KV
    cache of each context is repeated once per choice, and the choices' continuations run on it (right-
    padded). batch_size bounds the rows of every forward (contexts, or continuations).
    An item whose context plus some continuation exceeds the model's window, and every item when the
    model returns no KV cache, is scored per (item, choice) request instead: context + continuation with
    the context truncated from the left (as lm-eval does), in right-padded batches sorted by length.
    share_contexts=False scores every item that way (the reference the shared contexts must match).
    The forwards run depend only on the items and the model, so sharded processes stay in lockstep.
    """
    _check_items(items)
    if batch_size < 1:
        raise UserError(f"choice_loglikelihoods: batch_size must be >= 1 (got {batch_size})")
    max_length = model_max_length(model, tokenizer)
    encoded = _encode_items(tokenizer, items, max_length)
    fits = [
        number
        for number, (context, continuations) in enumerate(encoded)
        if share_contexts and len(context) + max(map(len, continuations)) <= max_length + 1  # last: no input
    ]
    device = model_device(model)
    was_training = model.training
    model.eval()
    loglikelihoods = [[0.0] * len(item["choices"]) for item in items]
    try:
        shared = _score_shared_contexts(model, encoded, fits, batch_size, device, loglikelihoods)
        rest = [number for number in range(len(items)) if number not in shared]
        _score_requests(model, encoded, rest, max_length, batch_size, device, loglikelihoods)
    finally:
        model.train(was_training)
    return loglikelihoods


def _score_requests(model, encoded, numbers, max_length, batch_size, device, loglikelihoods) -> None:
    """Score the items `numbers` one request per choice: context (left-truncated) + continuation."""
    requests = []  # (item index, choice index, token ids of context + continuation, continuation length)
    for number in numbers:
        context_ids, continuations = encoded[number]
        for choice_number, continuation_ids in enumerate(continuations):
            tokens = (context_ids + continuation_ids)[-(max_length + 1) :]
            requests.append((number, choice_number, tokens, len(continuation_ids)))
    requests.sort(key=lambda request: -len(request[2]))
    for first in range(0, len(requests), batch_size):
        batch = requests[first : first + batch_size]
        width = max(len(tokens) - 1 for _, _, tokens, _ in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, tokens, _) in enumerate(batch):
            input_ids[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            attention_mask[row, : len(tokens) - 1] = 1
        logits = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False
        ).logits
        for row, (number, choice_number, tokens, n_continuation) in enumerate(batch):
            n_inputs = len(tokens) - 1
            # Logits at position t predict token t + 1: the last n_continuation inputs predict the continuation.
            logprobs = logits[row, n_inputs - n_continuation : n_inputs].float().log_softmax(-1)
            targets = torch.tensor(tokens[-n_continuation:], device=logprobs.device)
            loglikelihoods[number][choice_number] = logprobs.gather(-1, targets[:, None]).sum().item()


def _repeatable(cache) -> bool:
    """True for a KV cache whose every layer can repeat its rows (attention layers; not recurrent ones)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(callable(getattr(layer, "batch_repeat_interleave", None)) for layer in layers)


def _last_logits_only(model) -> dict:
    """`logits_to_keep=1` where the model takes it: a context forward needs its last position's logits only."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}


def _cache_name(model) -> str:
    """The forward's KV-cache argument and output: `cache` from transformers 5.24, `past_key_values` before."""
    inner = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    return "cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values"


def _score_shared_contexts(model, encoded, numbers, batch_size, device, loglikelihoods) -> set[int]:
    """Score the items `numbers` from one context forward each; return them, or nothing without a KV cache."""
    groups: dict[tuple[int, int], list[int]] = {}  # (context tokens, choices): contexts batch without padding
    for number in numbers:
        context, continuations = encoded[number]
        groups.setdefault((len(context), len(continuations)), []).append(number)
    keep_last = _last_logits_only(model)
    cache_name = _cache_name(model)
    for (length, n_choices), members in sorted(groups.items(), reverse=True):
        items_per_forward = max(1, batch_size // n_choices)
        choices_per_forward = min(n_choices, batch_size)  # below n_choices only for a lone item
        for first in range(0, len(members), items_per_forward):
            chunk = members[first : first + items_per_forward]
            contexts = torch.tensor([encoded[number][0] for number in chunk])
            outputs = model(input_ids=contexts.to(device), use_cache=True, **keep_last)
            cache = getattr(outputs, cache_name, None)
            if not _repeatable(cache):
                return set()  # decided by the model at its first forward, so on every process alike
            # The last context position predicts each continuation's first token.
            first_logprobs = outputs.logits[:, -1].float().log_softmax(-1)
            for start in range(0, n_choices, choices_per_forward):
                stop = min(start + choices_per_forward, n_choices)
                part_cache = cache if stop == n_choices else copy.deepcopy(cache)
                part_cache.batch_repeat_interleave(stop - start)
                rows = [(number, choice) for number in chunk for choice in range(start, stop)]
                totals = _continuation_loglikelihoods(
                    model,
                    encoded,
                    rows,
                    length,
                    part_cache,
                    first_logprobs.repeat_interleave(stop - start, 0),
                    device,
                    cache_name,
                )
                for (number, choice), total in zip(rows, totals, strict=True):
                    loglikelihoods[number][choice] = total
    return set(numbers)


def _continuation_loglikelihoods(
    model, encoded, rows, context_length, cache, first_logprobs, device, cache_name
) -> list[float]:
    """Summed log-probs of the continuations `rows` (item, choice), run right-padded on their contexts' cache."""
    continuations = [encoded[number][1][choice] for number, choice in rows]
    width = max(len(tokens) for tokens in continuations) - 1
    firsts = torch.tensor([tokens[0] for tokens in continuations], device=first_logprobs.device)
    totals = first_logprobs.gather(-1, firsts[:, None])[:, 0]
    if width > 0:  # some continuation has more than one token
        input_ids = torch.zeros((len(rows), width), dtype=torch.long)
        targets = torch.zeros((len(rows), width), dtype=torch.long)
        attention_mask = torch.ones((len(rows), context_length + width), dtype=torch.long)
        for row, tokens in enumerate(continuations):
            input_ids[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
            targets[row, : len(tokens) - 1] = torch.tensor(tokens[1:])
            attention_mask[row, context_length + len(tokens) - 1 :] = 0
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            use_cache=True,
            **{cache_name: cache},
        ).logits
        logprobs = logits.float().log_softmax(-1).gather(-1, targets.to(logits.device)[..., None])[..., 0]
        real = attention_mask[:, context_length:].bool().to(logits.device)
        totals = totals + torch.where(real, logprobs, 0.0).sum(-1).to(totals.device)
    return [total.item() for total in totals]


def score_choices(model, tokenizer, items: list[dict], batch_size: int = 16) -> dict:
    """Accuracy on multiple-choice items, as lm-eval's multiple_choice metrics define it.

    Returns {"acc": fraction whose highest summed log-likelihood is the label,
             "acc_norm": the same with each log-likelihood divided by len(choice) in characters,
             "n": number of items}.
    """
    loglikelihoods = choice_loglikelihoods(model, tokenizer, items, batch_size=batch_size)
    correct = correct_norm = 0
    for item, scores in zip(items, loglikelihoods, strict=True):
        scores = np.array(scores)
        lengths = np.array([float(len(choice)) for choice in item["choices"]])
        correct += int(np.argmax(scores) == item["label"])
        correct_norm += int(np.argmax(scores / lengths) == item["label"])
    return {"acc": correct / len(items), "acc_norm": correct_norm / len(items), "n": len(items)}
