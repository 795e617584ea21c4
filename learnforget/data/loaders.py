"""Load user training data: CPT text documents and IFT prompt/response pairs.

A study can train on user data instead of the built-in corpora. A *source* is one of:

- a ``.jsonl`` file: one JSON object per line (blank lines are skipped);
- a ``.parquet`` file (read with pyarrow);
- a ``.txt`` / ``.py`` / ``.md`` file: the whole file is one document (CPT text only);
- a directory: every ``.txt`` / ``.py`` / ``.md`` file below it, sorted by path, is one document
  (CPT text only; empty files are skipped, e.g. ``__init__.py``);
- anything that is not a local path: a Hugging Face dataset id, loaded with
  ``datasets.load_dataset(id, name, split=..., data_dir=...)`` (streamed when ``limit`` is set, so only
  the first ``limit`` records are downloaded).

Field names are configurable. A malformed record raises ``UserError`` naming the file and line (or row),
e.g. ``data.jsonl:3: invalid JSON: ...`` or ``data.jsonl:5: missing field 'response' (fields: a, b)``.
"""

import itertools
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from learnforget.errors import UserError

TEXT_SUFFIXES = (".txt", ".py", ".md")
RECORD_SUFFIXES = (".jsonl", ".parquet")

Record = tuple[str, dict[str, Any]]  # (location such as "data.jsonl:3", the record)


def load_text_records(
    source: str,
    text_field: str = "text",
    split: str = "train",
    limit: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
) -> list[str]:
    """Return CPT documents (one string each) from a file, a directory or a Hugging Face dataset.

    ``text_field`` names the field holding the text in ``.jsonl`` / ``.parquet`` / hub records;
    ``split``, ``name`` (dataset config) and ``data_dir`` apply to hub datasets only (e.g.
    ``bigcode/starcoderdata`` with ``data_dir="python"``). ``limit`` keeps the first ``limit`` documents.
    """
    _check_limit(limit)
    path = _local_path(source)
    if path is not None and (path.is_dir() or path.suffix in TEXT_SUFFIXES):
        return _read_text_files(path, limit)
    documents = []
    for location, record in _records(source, split, limit, name, data_dir):
        documents.append(_string_field(record, text_field, location))
    return documents


def load_pairs(
    source: str,
    prompt_field: str = "prompt",
    response_field: str = "response",
    split: str = "train",
    limit: int | None = None,
    messages_field: str | None = None,
    name: str | None = None,
    data_dir: str | None = None,
) -> list[tuple[str, str]]:
    """Return IFT ``(prompt, response)`` pairs from a ``.jsonl`` / ``.parquet`` file or a hub dataset.

    By default each record's ``prompt_field`` and ``response_field`` are read. With ``messages_field``
    set (e.g. ``"messages"``), each record instead holds a chat as a list of
    ``{"role": ..., "content": ...}`` turns, and the pair is the chat's *last* exchange: the last
    assistant turn that directly follows a user turn, with that user turn as the prompt. Earlier turns
    and system messages are dropped, so every record gives exactly one single-turn example, the same
    shape as prompt/response data. ``split``, ``name`` and ``data_dir``
    apply to hub datasets only; ``limit`` keeps the first ``limit`` pairs.
    """
    _check_limit(limit)
    path = _local_path(source)
    if path is not None and (path.is_dir() or path.suffix in TEXT_SUFFIXES):
        raise UserError(
            f"{source}: prompt/response pairs need a .jsonl or .parquet file or a dataset id, "
            "not plain text files"
        )
    pairs = []
    for location, record in _records(source, split, limit, name, data_dir):
        if messages_field is not None:
            pairs.append(_last_exchange(record, messages_field, location))
        else:
            pairs.append(
                (
                    _string_field(record, prompt_field, location),
                    _string_field(record, response_field, location),
                )
            )
    return pairs


# ---------------------------------------------------------------- sources


def _check_limit(limit: int | None) -> None:
    """Reject a limit that would silently load nothing."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of records, got {limit}")


def _local_path(source: str) -> Path | None:
    """The local path ``source`` names, or None when it reads as a hub dataset id."""
    path = Path(source).expanduser()
    if path.exists():
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO or device would block or never end
            raise UserError(f"{source}: not a regular file or directory")
        return path
    looks_local = path.suffix in TEXT_SUFFIXES + RECORD_SUFFIXES + (".json", ".csv") or source.startswith(
        ("/", ".", "~")
    )
    if looks_local:
        raise UserError(f"{source}: file not found (give an existing file, directory or a dataset id)")
    return None


def _records(
    source: str, split: str, limit: int | None, name: str | None, data_dir: str | None
) -> Iterator[Record]:
    """Yield (location, record) pairs from a record file or a hub dataset, at most ``limit`` of them."""
    path = _local_path(source)
    if path is None:
        records = _hub_records(source, split, limit, name, data_dir)
    elif path.suffix == ".jsonl":
        records = _jsonl_records(path)
    elif path.suffix == ".parquet":
        records = _parquet_records(path)
    else:
        raise UserError(f"{source}: unsupported file type '{path.suffix}' (use .jsonl, .parquet or .txt)")
    empty = True
    for location, record in itertools.islice(records, limit):
        empty = False
        yield location, record
    if empty:
        raise UserError(f"{source}: no records (the file or split is empty)")


def _jsonl_records(path: Path) -> Iterator[Record]:
    """Yield one JSON object per non-blank line, located as ``file:line``."""
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            location = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UserError(
                    f"{location}: not UTF-8 text ({error.reason} at byte {error.start})"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserError(f"{location}: invalid JSON: {error}") from None
            except RecursionError:
                raise UserError(f"{location}: JSON nested too deeply") from None
            except ValueError as error:  # e.g. an integer with more digits than Python converts
                raise UserError(f"{location}: invalid JSON: {error}") from None
            if not isinstance(record, dict):
                raise UserError(f"{location}: expected a JSON object, got {type(record).__name__}")
            yield location, record


def _parquet_records(path: Path) -> Iterator[Record]:
    """Yield parquet rows in order, located as ``file row N`` (1-based)."""
    try:
        import pyarrow.parquet as pq  # lazy: only parquet sources need it
    except ImportError:
        raise UserError(f"{path}: reading parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid and friends for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({error})") from None
    rows = (row for batch in parquet.iter_batches(batch_size=1024) for row in batch.to_pylist())
    for number, row in enumerate(rows, start=1):
        yield f"{path} row {number}", row


def _hub_records(
    dataset_id: str, split: str, limit: int | None, name: str | None, data_dir: str | None
) -> Iterator[Record]:
    """Yield records of a Hugging Face dataset split, located as ``id[split] row N``."""
    import datasets  # lazy: slow import, only hub sources need it

    where = f"dataset '{dataset_id}'" + (f" (config '{name}')" if name else "")
    try:
        # Stream when only the first records are wanted, so a 20B-token corpus is not downloaded.
        dataset = datasets.load_dataset(
            dataset_id, name, split=split, data_dir=data_dir, streaming=limit is not None
        )
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as error:
        raise UserError(
            f"{where}: could not load it from the Hugging Face hub ({error}); check the id and your "
            "network, or download the data and point the source at a local .jsonl/.parquet file"
        ) from None
    except ValueError as error:  # e.g. unknown split or config name
        raise UserError(f"{where}: {error}") from None
    for number, row in enumerate(dataset, start=1):
        yield f"{dataset_id}[{split}] row {number}", row


def _read_text_files(path: Path, limit: int | None) -> list[str]:
    """One document per text file: ``path`` itself, or every text file below a directory."""
    if path.is_file():
        text = _read_text(path)
        if not text.strip():
            raise UserError(f"{path}: empty file")
        return [text]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    documents = [text for text in map(_read_text, files) if text.strip()]
    if not documents:
        raise UserError(f"{path}: no non-empty {'/'.join(TEXT_SUFFIXES)} files in this directory")
    return documents[:limit]


def _read_text(path: Path) -> str:
    """A text file's contents, with a clear error for binary or non-UTF-8 files."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error})") from None


# ---------------------------------------------------------------- fields


def _field(record: dict[str, Any], field: str, location: str) -> Any:
    """The value of ``field``, or a UserError listing the fields the record does have."""
    if field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise UserError(f"{location}: missing field '{field}' (fields: {fields})")
    return record[field]


def _string_field(record: dict[str, Any], field: str, location: str) -> str:
    """The value of ``field``, which must be a string."""
    value = _field(record, field, location)
    if not isinstance(value, str):
        raise UserError(f"{location}: field '{field}' must be a string, got {type(value).__name__}")
    return value


def _last_exchange(record: dict[str, Any], messages_field: str, location: str) -> tuple[str, str]:
    """The chat's last (user turn, assistant turn) exchange, as (prompt, response)."""
    messages = _field(record, messages_field, location)
    if not isinstance(messages, list):
        raise UserError(
            f"{location}: field '{messages_field}' must be a list of messages, got {type(messages).__name__}"
        )
    turns = []
    for index, message in enumerate(messages):
        where = f"{location}: {messages_field}[{index}]"
        if not isinstance(message, dict):
            raise UserError(
                f"{where} must be an object with 'role' and 'content', got {type(message).__name__}"
            )
        turns.append((_string_field(message, "role", where), _string_field(message, "content", where)))
    for index in range(len(turns) - 1, 0, -1):
        if turns[index][0] == "assistant" and turns[index - 1][0] == "user":
            return turns[index - 1][1], turns[index][1]
    roles = ", ".join(role for role, _ in turns) or "none"
    raise UserError(
        f"{location}: field '{messages_field}' has no user turn followed by an assistant turn (roles: {roles})"
    )
