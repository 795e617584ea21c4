"""Prompt templates: a conversation as token ids, with loss on the assistant turns only.

A template is either ``CHAT`` (the tokenizer's own chat template) or a text template with a
``{prompt}`` placeholder, applied to each user turn. With a text template:

- a system turn is its text and a blank line: ``"{system}\\n\\n"``;
- a user turn is the template with ``{prompt}`` filled in;
- an assistant turn is its text followed by the tokenizer's EOS token (so the model learns to stop).

``DEFAULT_TEMPLATE`` separates prompt and response clearly for a base without a chat template (e.g.
Llama-2-7B); ``PLAIN`` is the identity, for prompts that the response simply continues (the built-in
tasks: HumanEval-style code, "Question: …\\nAnswer:" math). A chat template renders its own turn
markers and end-of-turn tokens; the loss covers what it renders for each assistant turn. A response that
continues a prompt ending in e.g. "Answer:" starts with the separating space (" 42"); a chat template
puts the response on its own line, so there it loses that space (``chat_response``).

The BOS token is added when the tokenizer's configuration adds one to every encoding (Llama, Gemma);
``special_prefix`` finds it by encoding a probe with and without special tokens.
"""

from __future__ import annotations

from learnforget.data.formats import Conversation
from learnforget.errors import UserError

CHAT = "chat"
DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
PLAIN = "{prompt}"
NAMED = {"default": DEFAULT_TEMPLATE, "none": PLAIN}
IGNORE_INDEX = -100


def resolve_template(setting: str | None, tokenizer, builtin_data: bool) -> str:
    """The template of a study: ``data.prompt_template`` if set, else the tokenizer's chat template when
    it has one, else the identity (built-in tasks) or ``DEFAULT_TEMPLATE`` (user data)."""
    has_chat = bool(getattr(tokenizer, "chat_template", None))
    if setting == CHAT and not has_chat:
        raise UserError(
            "data.prompt_template: 'chat' needs a tokenizer with a chat template; this one has none"
        )
    if setting is not None:
        return NAMED.get(setting, setting)
    if has_chat:
        return CHAT
    return PLAIN if builtin_data else DEFAULT_TEMPLATE


def describe_template(setting: str | None, builtin_data: bool, tokenizer=None, base: str = "the base") -> str:
    """A line for dry runs: the template ``resolve_template`` picks and what a single-turn example looks
    like. ``tokenizer``: the base's (None when it could not be loaded; both possibilities are named)."""
    if tokenizer is not None:
        template = resolve_template(setting, tokenizer, builtin_data)
        return describe_chat(tokenizer, base) if template == CHAT else _describe_text(template)
    if setting == CHAT:
        return f"the chat template of {base}"
    text = NAMED.get(setting, setting) if setting else (PLAIN if builtin_data else DEFAULT_TEMPLATE)
    shown = _describe_text(text)
    return shown if setting else f"the chat template of {base} if its tokenizer has one, else {shown}"


def _describe_text(template: str) -> str:
    shown = repr(template.replace("{prompt}", "<prompt>") + "<response><eos>")
    return f"none, the prompt as is: {shown}" if template == PLAIN else shown


def describe_chat(tokenizer, base: str) -> str:
    """'chat template of <base> (ChatML, default system prompt '…'): <an example>'."""
    notes = ["ChatML"] if "<|im_start|>" in tokenizer.chat_template else []
    system = default_system_prompt(tokenizer)
    if system:
        notes.append(f"default system prompt {system[:40] + '…' * (len(system) > 40)!r}")
    example = _apply_chat(tokenizer, [("user", "<prompt>"), ("assistant", "<response>")], False)
    about = f" ({', '.join(notes)})" if notes else ""
    return f"chat template of {base}{about}: {example!r}"


def default_system_prompt(tokenizer) -> str:
    """The system prompt a chat template inserts into a conversation that has none ('' if none): what it
    renders in place of a system turn's text."""
    probe = "<system prompt>"
    alone = _apply_chat(tokenizer, [("user", "u")], generation_prompt=True)
    try:
        with_system = _apply_chat(tokenizer, [("system", probe), ("user", "u")], generation_prompt=True)
    except UserError:  # a template without system turns
        return ""
    before, _, after = with_system.partition(probe)
    if alone.startswith(before) and alone.endswith(after) and len(alone) > len(before) + len(after):
        return alone[len(before) : len(alone) - len(after)]
    return ""


def render_prompt(tokenizer, prompt: str, template: str = PLAIN) -> str:
    """A single prompt as the model sees it before its response (evaluation prompts)."""
    if template == CHAT:
        return _apply_chat(tokenizer, [("user", prompt)], generation_prompt=True)
    return template.replace("{prompt}", prompt)


def render_response(response: str, template: str = PLAIN) -> str:
    """A response as it follows ``render_prompt`` (reference solutions): ``chat_response`` under a chat
    template, else as is."""
    return chat_response(response) if template == CHAT else response


def chat_response(text: str) -> str:
    """An assistant turn for a chat template: without the one space that separates a response from a prompt
    ending in e.g. "Answer:" (" 42" becomes "42"; the chat template starts it on its own line).
    Indentation (two spaces or more: a code body) is kept."""
    return text[1:] if text.startswith(" ") and not text[1:2].isspace() else text


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer's configuration puts before every text (e.g. [BOS] for Llama), else []."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


def encode_conversation(
    tokenizer, turns: Conversation, template: str, seq_len: int, prefix: list[int] | None = None
) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, was cut) of one conversation; labels are -100 except on assistant turns.

    ``prefix`` is ``special_prefix(tokenizer)`` (computed here when not given). A conversation longer than
    ``seq_len`` is cut: a single exchange keeps its BOS and its response (up to ``seq_len - 1`` tokens)
    and cuts its prompt from the left; a longer conversation keeps its first ``seq_len`` tokens (the
    first exchange that way if nothing learnable would remain). A conversation with nothing to learn is a
    ValueError.
    """
    (result,) = encode_conversations(tokenizer, [turns], template, seq_len, prefix)
    if isinstance(result, str):
        raise ValueError(result)
    return result


def encode_conversations(
    tokenizer, conversations: list[Conversation], template: str, seq_len: int, prefix: list[int] | None = None
) -> list[tuple[list[int], list[int], bool] | str]:
    """``encode_conversation`` of each conversation, or the reason it has nothing to learn (a string).
    Every text of the batch goes through one tokenizer call: a fast tokenizer spreads it over its
    threads, with the ids of each text as if encoded alone."""
    prefix = special_prefix(tokenizer) if prefix is None else prefix
    texts = [_segment_texts(tokenizer, turns, template) for turns in conversations]
    flat = [text for pieces in texts for text, _, _ in pieces]
    ids = iter(tokenizer(flat, add_special_tokens=False)["input_ids"] if flat else [])
    results: list[tuple[list[int], list[int], bool] | str] = []
    for pieces in texts:
        segments = [(next(ids) + [tokenizer.eos_token_id] * eos, learn) for _, learn, eos in pieces]
        try:
            results.append(_fit([(part, learn) for part, learn in segments if part], seq_len, prefix))
        except ValueError as error:
            results.append(str(error))
    return results


def _fit(
    segments: list[tuple[list[int], bool]], seq_len: int, prefix: list[int]
) -> tuple[list[int], list[int], bool]:
    """(input ids, labels, was cut) of a conversation's (token ids, carries loss) pieces: BOS added as the
    tokenizer's configuration says, cut to ``seq_len`` (see ``encode_conversation``)."""
    first = segments[0][0] if segments else []
    kept = []  # the BOS, kept when the prompt is cut
    if prefix and first[: len(prefix)] != prefix:  # a chat template may already render the BOS
        segments.insert(0, (prefix, False))
        kept = prefix
    ids = [i for part, _ in segments for i in part]
    labels = [i if learn else IGNORE_INDEX for part, learn in segments for i in part]
    # Nothing after the last assistant turn can be learned: it would only be padding with attention.
    learned = [n for n, y in enumerate(labels) if y != IGNORE_INDEX]
    if not learned:
        raise ValueError("its assistant turns are empty: nothing to learn")
    last = learned[-1] + 1
    ids, labels = ids[:last], labels[:last]
    if len(ids) <= seq_len:
        return ids, labels, False
    if sum(learn for _, learn in segments) > 1:
        cut_ids, cut_labels = ids[:seq_len], labels[:seq_len]
        if any(y != IGNORE_INDEX for y in cut_labels):
            return cut_ids, cut_labels, True
    # One exchange: everything before the first response is the prompt.
    start = next(n for n, y in enumerate(labels) if y != IGNORE_INDEX)
    end = next((n for n in range(start, len(labels)) if labels[n] == IGNORE_INDEX), len(labels))
    response = ids[start:end][: seq_len - 1 - len(kept)]
    prompt = kept + ids[len(kept) : start][-(seq_len - len(response) - len(kept)) :]
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response, True


def _segment_texts(tokenizer, turns: Conversation, template: str) -> list[tuple[str, bool, bool]]:
    """(text, carries loss, EOS follows) pieces of a conversation, in order; empty pieces are dropped
    once tokenized."""
    if template == CHAT:
        texts, rendered = [], ""
        for n, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            before = _apply_chat(tokenizer, turns[:n], generation_prompt=True)
            through = _apply_chat(tokenizer, turns[: n + 1], generation_prompt=False)
            if not (before.startswith(rendered) and through.startswith(before)):
                raise UserError(
                    "the tokenizer's chat template does not render a conversation turn by turn (it rewrites "
                    "earlier turns), so assistant turns cannot be located; set data.prompt_template"
                )
            texts += [(before[len(rendered) :], False, False), (through[len(before) :], True, False)]
            rendered = through
        return texts
    pieces = []
    for role, text in turns:
        if role == "system":
            pieces.append((f"{text}\n\n", False, False))
        elif role == "user":
            pieces.append((template.replace("{prompt}", text), False, False))
        else:
            pieces.append((text, True, True))
    return pieces


def _apply_chat(tokenizer, turns: Conversation, generation_prompt: bool) -> str:
    messages = [
        {"role": role, "content": chat_response(text) if role == "assistant" else text}
        for role, text in turns
    ]
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as error:  # jinja raises TemplateError for e.g. a system turn it does not allow
        raise UserError(f"the tokenizer's chat template rejected a conversation: {error}") from None
