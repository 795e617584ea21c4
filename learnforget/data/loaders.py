"""Load user training data: CPT text documents and IFT conversations.

A study can train on user data instead of the built-in corpora. A *source* is one of:

- a record file: ``.jsonl``, ``.json`` (an array of objects, or JSON lines), ``.csv`` (a header row), or
  ``.parquet``; ``.jsonl.gz`` / ``.json.gz`` / ``.csv.gz`` are read compressed;
- a directory written by ``datasets``' ``save_to_disk`` (a ``DatasetDict`` gives its ``split``);
- a directory of record shards (e.g. a hub snapshot: ``data/train-00000-of-00002.parquet``): every
  record file below it, sorted by path; when some shards name the ``split`` (``train-*``, ``train/``)
  only those are read;
- a ``.txt`` / ``.py`` / ``.md`` file: the whole file is one document (CPT text only);
- a directory of text files: every ``.txt`` / ``.py`` / ``.md`` file below it, sorted by path, is one
  document (CPT text only; empty files are skipped, e.g. ``__init__.py``);
- anything that is not a local path: a Hugging Face dataset id, loaded with
  ``datasets.load_dataset(id, name, split=..., data_dir=...)`` (streamed when ``limit`` is set, so only
  the first ``limit`` records are downloaded).

Records become IFT conversations through ``formats.py``. A malformed record raises ``UserError`` naming
the file and line (or row), e.g. ``data.jsonl:3: invalid JSON: ...`` or
``data.jsonl:5: missing field 'response' (fields: a, b)``.
"""

import csv
import gzip
import io
import itertools
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from learnforget.data.formats import Conversation, string_field, to_conversation
from learnforget.errors import UserError

TEXT_SUFFIXES = (".txt", ".py", ".md")
RECORD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSED_SUFFIXES = (".jsonl.gz", ".json.gz", ".csv.gz")

Record = tuple[str, dict[str, Any]]  # (location such as "data.jsonl:3", the record)


def load_text_records(source: str, **options: Any) -> list[str]:
    """Every CPT document of ``source`` (see ``iter_text_records`` for the options)."""
    return list(iter_text_records(source, **options))


def iter_text_records(
    source: str,
    text_field: str = "text",
    split: str = "train",
    limit: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
) -> Iterator[str]:
    """CPT documents (one string each) from a file, a directory or a Hugging Face dataset, one at a time
    (hub datasets streamed), so memory stays flat.

    ``text_field`` names the field holding the text in records; ``split``, ``name`` (dataset config) and
    ``data_dir`` apply to hub datasets (e.g. ``bigcode/starcoderdata`` with ``data_dir="python"``;
    ``split`` also to saved datasets and shard folders). ``limit`` keeps the first ``limit`` documents.
    """
    _check_limit(limit)
    path = _local_path(source)
    if path is not None and (path.suffix in TEXT_SUFFIXES or (path.is_dir() and not _is_record_dir(path))):
        yield from _read_text_files(path, limit)
        return
    for location, record in _records(source, split, limit, name, data_dir, streaming=True):
        yield string_field(record, text_field, location)


def iter_conversations(
    source: str,
    fmt: str = "auto",
    prompt_field: str = "prompt",
    response_field: str = "response",
    messages_field: str | None = None,
    split: str = "train",
    limit: int | None = None,
    name: str | None = None,
    data_dir: str | None = None,
) -> Iterator[tuple[str, Conversation]]:
    """Yield IFT ``(location, conversation)`` from a record file, a record directory or a hub dataset.

    ``fmt`` is a record format of ``formats.py`` ('auto' picks it from each record's fields); a
    conversation is a list of (role, text) turns with at least one assistant turn. ``split``, ``name``
    and ``data_dir`` apply to hub datasets (``split`` also to ``save_to_disk`` and shard directories);
    ``limit`` stops after ``limit`` records.
    """
    _check_limit(limit)
    path = _local_path(source)
    if path is not None and (path.suffix in TEXT_SUFFIXES or (path.is_dir() and not _is_record_dir(path))):
        raise UserError(
            f"{source}: IFT conversations need a record file (.jsonl/.json/.csv/.parquet), a dataset "
            "directory or a dataset id, not plain text files"
        )
    # Streamed: records are encoded one batch at a time into an example file (examples.py), read once.
    for location, record in _records(source, split, limit, name, data_dir, streaming=True):
        yield location, to_conversation(record, fmt, prompt_field, response_field, messages_field, location)


def load_conversations(source: str, **options: Any) -> list[Conversation]:
    """Every conversation of ``source`` (see ``iter_conversations`` for the options)."""
    return [conversation for _, conversation in iter_conversations(source, **options)]


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
    looks_local = path.suffix in TEXT_SUFFIXES + RECORD_SUFFIXES + (".gz",) or source.startswith(
        ("/", ".", "~")
    )
    if looks_local:
        raise UserError(f"{source}: file not found (give an existing file, directory or a dataset id)")
    return None


def _records(
    source: str,
    split: str,
    limit: int | None,
    name: str | None,
    data_dir: str | None,
    streaming: bool = False,
) -> Iterator[Record]:
    """Yield (location, record) pairs from a record file or a hub dataset, at most ``limit`` of them."""
    path = _local_path(source)
    if path is None:
        records = _hub_records(source, split, limit, name, data_dir, streaming or limit is not None)
    elif path.is_dir() and _is_saved_dataset(path):
        records = _saved_dataset_records(path, split)
    elif path.is_dir():
        records = itertools.chain.from_iterable(map(_file_records, _record_shards(path, split)))
    else:
        records = _file_records(path)
    empty = True
    for location, record in itertools.islice(records, limit):
        empty = False
        yield location, record
    if empty:
        raise UserError(f"{source}: no records (the file or split is empty)")


def _record_kind(path: Path) -> str | None:
    """'jsonl', 'json', 'csv' or 'parquet' for a record file (compressed or not), else None."""
    name = path.name.lower()
    for suffix in RECORD_SUFFIXES + COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            return suffix.split(".")[1]
    return None


def _file_records(path: Path) -> Iterator[Record]:
    """Records of one record file, by its suffix."""
    kind = _record_kind(path)
    if kind is None:
        raise UserError(
            f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .csv, .parquet "
            "(optionally .gz), .txt, or a dataset directory)"
        )
    return {"jsonl": _jsonl_records, "json": _json_records, "csv": _csv_records}.get(kind, _parquet_records)(
        path
    )


def _open_text(path: Path) -> io.TextIOBase:
    """A text stream over a plain or gzip-compressed file (UTF-8 errors surface when read)."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return path.open(encoding="utf-8", newline="")


def _read_all(path: Path) -> str:
    """The whole text of a plain or compressed file, with one-line errors for bad bytes."""
    try:
        with _open_text(path) as stream:
            return stream.read()
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable file ({error})") from None


def _json_records(path: Path) -> Iterator[Record]:
    """A ``.json`` file: an array of objects (located ``file[N]``, 1-based; parsed whole), or JSON lines
    (streamed)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            first = b""
            while not first.strip() and (chunk := stream.read(1 << 16)):
                first += chunk
            if not first.lstrip().startswith(b"["):
                stream.seek(0)
                yield from _json_lines(path, stream)
                return
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable file ({error})") from None
    for number, item in enumerate(_parse_json(_read_all(path), str(path)), start=1):
        location = f"{path}[{number}]"
        if not isinstance(item, dict):
            raise UserError(f"{location}: expected a JSON object, got {type(item).__name__}")
        yield location, item


def _parse_json(text: str, location: str) -> Any:
    """``json.loads`` with one-line errors: syntax (with its line), nesting too deep, numbers too long."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        where = f"{location}:{error.lineno}" if "\n" in text.strip() else location
        raise UserError(f"{where}: invalid JSON: {error}") from None
    except RecursionError:
        raise UserError(f"{location}: JSON nested too deeply") from None
    except ValueError as error:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{location}: invalid JSON: {error}") from None


def _csv_records(path: Path) -> Iterator[Record]:
    """CSV rows under their header row, located as ``file:line``; cells are strings. Streamed."""
    reader = None
    try:
        with _open_text(path) as stream:
            reader = csv.DictReader(stream)
            if not reader.fieldnames:
                return
            for row in reader:
                location = f"{path}:{reader.line_num}"
                if None in row:  # more cells than header fields
                    raise UserError(
                        f"{location}: {len(row) - 1 + len(row[None])} cells, header has {len(reader.fieldnames)}"
                    )
                yield location, row
    except UnicodeDecodeError as error:
        after = f" after line {reader.line_num}" if reader is not None and reader.line_num else ""
        raise UserError(f"{path}: not UTF-8 text{after} ({error.reason})") from None
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable file ({error})") from None


def _jsonl_records(path: Path) -> Iterator[Record]:
    """Yield one JSON object per non-blank line, located as ``file:line``."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as lines:
            yield from _json_lines(path, lines)
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise UserError(f"{path}: not a readable file ({error})") from None


def _json_lines(path: Path, lines: Iterator[bytes]) -> Iterator[Record]:
    """One JSON object per non-blank line, decoded line by line so that errors name the line."""
    for number, raw in enumerate(lines, start=1):
        location = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"{location}: not UTF-8 text ({error.reason} at byte {error.start})") from None
        if not line.strip():
            continue
        record = _parse_json(line, location)
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
    dataset_id: str, split: str, limit: int | None, name: str | None, data_dir: str | None, streaming: bool
) -> Iterator[Record]:
    """Yield records of a Hugging Face dataset split, located as ``id[split] row N``."""
    import datasets  # lazy: slow import, only hub sources need it

    where = f"dataset '{dataset_id}'" + (f" (config '{name}')" if name else "")
    try:
        # Streamed when only the first records are wanted (a 20B-token corpus is not downloaded) or when
        # they are read once in order (CPT packing, IFT example files).
        dataset = datasets.load_dataset(dataset_id, name, split=split, data_dir=data_dir, streaming=streaming)
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError, FileNotFoundError) as error:
        raise UserError(
            f"{where}: could not load it from the Hugging Face hub ({error}); check the id and your "
            "network, or download the data and point the source at a local .jsonl/.parquet file"
        ) from None
    except ValueError as error:  # e.g. unknown split or config name
        raise UserError(f"{where}: {error}") from None
    for number, row in enumerate(dataset, start=1):
        yield f"{dataset_id}[{split}] row {number}", row


def _is_saved_dataset(path: Path) -> bool:
    """A directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _is_record_dir(path: Path) -> bool:
    """A directory holding records (a saved dataset or record shards), not text documents."""
    return _is_saved_dataset(path) or any(_record_kind(f) for f in path.rglob("*") if f.is_file())


def _record_shards(path: Path, split: str) -> list[Path]:
    """Record files below ``path``, sorted; only the ``split``'s shards when some are named after it."""
    shards = sorted(f for f in path.rglob("*") if f.is_file() and _record_kind(f) and not _hidden(f, path))
    parts = [f.relative_to(path).parts for f in shards]

    def names_split(part: str) -> bool:
        return part == split or part.startswith((f"{split}-", f"{split}_", f"{split}."))

    mine = [f for f, p in zip(shards, parts, strict=True) if any(map(names_split, p))]
    return mine or shards


def _hidden(file: Path, root: Path) -> bool:
    """Files under dot-directories (``.cache`` of a hub snapshot, ``.git``) are not data."""
    return any(part.startswith(".") for part in file.relative_to(root).parts)


def _saved_dataset_records(path: Path, split: str) -> Iterator[Record]:
    """Rows of a ``save_to_disk`` directory (its ``split`` when it holds a DatasetDict)."""
    import datasets  # lazy: slow import

    try:
        dataset = datasets.load_from_disk(str(path))
    except Exception as error:  # damaged arrow files or metadata
        raise UserError(f"{path}: not a readable saved dataset ({error})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise UserError(f"{path}: no split '{split}' (splits: {', '.join(dataset)}); set data.split")
        dataset = dataset[split]
    for number, row in enumerate(dataset, start=1):
        yield f"{path}[{split}] row {number}", row


def _read_text_files(path: Path, limit: int | None) -> Iterator[str]:
    """One document per text file: ``path`` itself, or every text file below a directory, read lazily."""
    if path.is_file():
        text = _read_text(path)
        if not text.strip():
            raise UserError(f"{path}: empty file")
        yield text
        return
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES)
    documents = (text for text in map(_read_text, files) if text.strip())
    empty = True
    for text in itertools.islice(documents, limit):
        empty = False
        yield text
    if empty:
        raise UserError(f"{path}: no non-empty {'/'.join(TEXT_SUFFIXES)} files in this directory")


def _read_text(path: Path) -> str:
    """A text file's contents, with a clear error for binary or non-UTF-8 files."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error})") from None
