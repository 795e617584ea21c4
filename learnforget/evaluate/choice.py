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
- score_choices: `acc` (argmax of summed log-likelihood) and `acc_norm` (argmax of log-likelihood
  divided by the choice's length in characters), as lm-eval's multiple_choice `process_results`.

As in lm-eval's HellaSwag, each choice is scored as the continuation TARGET_DELIMITER + choice.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace

import numpy as np
import torch

from learnforget.errors import UserError
from learnforget.evaluate.device import model_device

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
    first_starts = [0]  # global position of each document's first valid start word
    for index in indexes:
        first_starts.append(first_starts[-1] + index.n_starts)
    total = first_starts.pop()
    if total < n_items:
        raise UserError(
            f"build_choice_items: the {len(documents)} documents hold only {total} passages of "
            f"{context_tokens}+{continuation_tokens} tokens, fewer than n_items={n_items}; "
            "pass more or longer held-out documents, or lower n_items"
        )
    rng = random.Random(seed)
    items = []
    for position in rng.sample(range(total), n_items):
        passage = _passage(indexes, first_starts, position, context_tokens, continuation_tokens)
        true_choice = _text(indexes, passage, passage.split, passage.end)
        seen = {" ".join(true_choice.split())}
        distractors: list[str] = []
        for _ in range(_MAX_DRAWS_PER_DISTRACTOR * (n_choices - 1)):
            other = _passage(indexes, first_starts, rng.randrange(total), context_tokens, continuation_tokens)
            text = _text(indexes, other, other.split, other.end)
            if _is_far(passage, other) and " ".join(text.split()) not in seen:
                seen.add(" ".join(text.split()))
                distractors.append(text)
                if len(distractors) == n_choices - 1:
                    break
        else:
            raise UserError(
                f"build_choice_items: could not find {n_choices - 1} distinct distractors far from a passage; "
                "pass more (or more varied) held-out documents, or lower n_choices"
            )
        label = rng.randrange(n_choices)
        choices = distractors[:label] + [true_choice] + distractors[label:]
        items.append(
            {
                "context": _text(indexes, passage, passage.start, passage.split),
                "choices": choices,
                "label": label,
            }
        )
    return items


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-eval's `_encode_pair` makes them for causal models.

    Trailing whitespace of the context moves to the continuation; the whole string is encoded once
    and split at the length of the encoded context. An empty context becomes the BOS (else EOS) token.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation)["input_ids"]
    context_ids = tokenizer(context)["input_ids"]
    return context_ids, whole[len(context_ids) :]


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


@torch.inference_mode()
def choice_loglikelihoods(model, tokenizer, items: list[dict], batch_size: int = 16) -> list[list[float]]:
    """Summed log-probability of each choice's tokens given its item's context, one list per item.

    Requests are sorted by length and run in right-padded batches of `batch_size`; when context plus
    continuation exceed the model's window, the context is truncated from the left (as lm-eval does).
    """
    _check_items(items)
    max_length = model_max_length(model, tokenizer)
    requests = []  # (item index, choice index, token ids of context + continuation, continuation length)
    for number, item in enumerate(items):
        for choice_number, choice in enumerate(item["choices"]):
            context_ids, continuation_ids = encode_pair(tokenizer, item["context"], TARGET_DELIMITER + choice)
            if not continuation_ids or len(continuation_ids) > max_length:
                raise UserError(
                    f"choice item {number}, choice {choice_number}: encodes to {len(continuation_ids)} tokens; "
                    f"it must be between 1 and the model's window of {max_length}"
                )
            tokens = (context_ids + continuation_ids)[-(max_length + 1) :]
            requests.append((number, choice_number, tokens, len(continuation_ids)))
    requests.sort(key=lambda request: -len(request[2]))

    device = model_device(model)
    was_training = model.training
    model.eval()
    loglikelihoods = [[0.0] * len(item["choices"]) for item in items]
    try:
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            width = max(len(tokens) - 1 for _, _, tokens, _ in batch)
            input_ids = torch.zeros((len(batch), width), dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, _, tokens, _) in enumerate(batch):
                input_ids[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
                attention_mask[row, : len(tokens) - 1] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            for row, (number, choice_number, tokens, n_continuation) in enumerate(batch):
                n_inputs = len(tokens) - 1
                # Logits at position t predict token t + 1: the last n_continuation inputs predict the continuation.
                logprobs = logits[row, n_inputs - n_continuation : n_inputs].float().log_softmax(-1)
                targets = torch.tensor(tokens[-n_continuation:], device=logprobs.device)
                loglikelihoods[number][choice_number] = logprobs.gather(-1, targets[:, None]).sum().item()
    finally:
        model.train(was_training)
    return loglikelihoods


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
