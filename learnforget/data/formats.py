"""IFT record formats: one record becomes a conversation, a list of (role, text) turns.

Roles are 'system', 'user' and 'assistant'; the loss is on every assistant turn. A single-turn
prompt/response pair is the common case: ``[("user", prompt), ("assistant", response)]``.

Formats (``data.format``; 'auto' picks one per record from its fields, in this order):

- 'messages': OpenAI-style ``[{"role": ..., "content": ...}, ...]`` in ``messages_field``
  (default ``messages``); the system prompt and every turn are kept.
- 'sharegpt': ``conversations: [{"from": "system"|"human"|"gpt", "value": ...}, ...]``.
- 'alpaca': ``instruction``, optional ``input``, ``output``. As in Alpaca, a non-empty input follows
  the instruction after a blank line (Alpaca's template puts it in its own section below the
  instruction); the template then adds the separators.
- 'pairs': ``prompt_field`` / ``response_field`` (default ``prompt`` / ``response``).

Presets name the paper's datasets with their fields (``data.preset``).
"""

from __future__ import annotations

from typing import Any

from learnforget.errors import UserError

Conversation = list[tuple[str, str]]
FORMATS = ("auto", "pairs", "alpaca", "sharegpt", "messages")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
CHAT_ROLES = ("system", "user", "assistant")


def pair(prompt: str, response: str) -> Conversation:
    """The single-turn conversation of a prompt/response pair."""
    return [("user", prompt), ("assistant", response)]


def detect_format(record: dict[str, Any], prompt_field: str, messages_field: str | None) -> str:
    """The format a record is in, from its fields (explicitly named fields win)."""
    if messages_field is not None or isinstance(record.get("messages"), list):
        return "messages"
    if prompt_field in record:
        return "pairs"
    if isinstance(record.get("conversations"), list):
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return "pairs"  # its missing-field error names what was expected


def to_conversation(
    record: dict[str, Any],
    fmt: str,
    prompt_field: str,
    response_field: str,
    messages_field: str | None,
    location: str,
) -> Conversation:
    """One record as a conversation; a malformed record is a UserError naming ``location``."""
    if fmt == "auto":
        fmt = detect_format(record, prompt_field, messages_field)
    if fmt == "pairs":
        return pair(
            string_field(record, prompt_field, location), string_field(record, response_field, location)
        )
    if fmt == "alpaca":
        instruction = string_field(record, "instruction", location)
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise UserError(f"{location}: field 'input' must be a string, got {type(extra).__name__}")
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        return pair(prompt, string_field(record, "output", location))
    if fmt == "sharegpt":
        turns = _turns(record, "conversations", "from", "value", SHAREGPT_ROLES, location)
    elif fmt == "messages":
        turns = _turns(record, messages_field or "messages", "role", "content", dict(zip(CHAT_ROLES, CHAT_ROLES, strict=True)), location)  # fmt: skip
    else:
        raise UserError(f"data.format: unknown format '{fmt}' (use one of: {', '.join(FORMATS)})")
    if not any(role == "assistant" for role, _ in turns):
        roles = ", ".join(role for role, _ in turns) or "none"
        raise UserError(f"{location}: conversation has no assistant turn to learn from (roles: {roles})")
    return turns


def _turns(
    record: dict[str, Any], field: str, role_key: str, text_key: str, roles: dict[str, str], location: str
) -> Conversation:
    """(role, text) turns of a list-of-objects field, roles mapped to system/user/assistant."""
    messages = field_value(record, field, location)
    if not isinstance(messages, list):
        raise UserError(
            f"{location}: field '{field}' must be a list of messages, got {type(messages).__name__}"
        )
    turns = []
    for index, message in enumerate(messages):
        where = f"{location}: {field}[{index}]"
        if not isinstance(message, dict):
            raise UserError(
                f"{where} must be an object with '{role_key}' and '{text_key}', got {type(message).__name__}"
            )
        role = string_field(message, role_key, where)
        if role not in roles:
            raise UserError(f"{where}: unknown {role_key} '{role}' (expected one of: {', '.join(roles)})")
        turns.append((roles[role], string_field(message, text_key, where)))
    return turns


def field_value(record: dict[str, Any], field: str, location: str) -> Any:
    """The value of ``field``, or a UserError listing the fields the record does have."""
    if field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise UserError(f"{location}: missing field '{field}' (fields: {fields})")
    return record[field]


def string_field(record: dict[str, Any], field: str, location: str) -> str:
    """The value of ``field``, which must be a string."""
    value = field_value(record, field, location)
    if not isinstance(value, str):
        raise UserError(f"{location}: field '{field}' must be a string, got {type(value).__name__}")
    return value
