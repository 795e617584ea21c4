"""User data loaders: jsonl / parquet / text files / directories, field names, clear errors."""

import json
import os

# Hub look-ups must fail fast here (no network), not retry for half a minute.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest

from learnforget.data.loaders import load_pairs, load_text_records
from learnforget.errors import UserError


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def write_parquet(path, columns):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path)
    return str(path)


# ---------------------------------------------------------------- CPT text


def test_text_from_jsonl_with_custom_field_and_limit(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", [{"content": f"doc {i}", "id": i} for i in range(5)])
    assert load_text_records(source, text_field="content") == [f"doc {i}" for i in range(5)]
    assert load_text_records(source, text_field="content", limit=2) == ["doc 0", "doc 1"]


def test_jsonl_skips_blank_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n   \n{"text": "b"}\n\n', encoding="utf-8")
    assert load_text_records(str(path)) == ["a", "b"]


def test_text_from_parquet(tmp_path):
    source = write_parquet(tmp_path / "data.parquet", {"text": ["alpha", "beta", "gamma"], "n": [1, 2, 3]})
    assert load_text_records(source) == ["alpha", "beta", "gamma"]
    assert load_text_records(source, limit=1) == ["alpha"]


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("first paragraph\n\nsecond paragraph\n", encoding="utf-8")
    assert load_text_records(str(path)) == ["first paragraph\n\nsecond paragraph\n"]


def test_directory_gives_one_document_per_text_file_sorted(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("", encoding="utf-8")  # empty: skipped
    (tmp_path / "pkg" / "b.py").write_text("def b():\n    return 2\n", encoding="utf-8")
    (tmp_path / "a.md").write_text("# A\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("notes", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # not a text suffix: ignored
    assert load_text_records(str(tmp_path)) == ["# A\n", "notes", "def b():\n    return 2\n"]
    assert load_text_records(str(tmp_path), limit=2) == ["# A\n", "notes"]


# ---------------------------------------------------------------- IFT pairs


def test_pairs_from_jsonl_with_custom_fields(tmp_path):
    records = [{"query": "1+1?", "answer": "2"}, {"query": "2+2?", "answer": "4"}]
    source = write_jsonl(tmp_path / "math.jsonl", records)
    assert load_pairs(source, prompt_field="query", response_field="answer") == [("1+1?", "2"), ("2+2?", "4")]


def test_pairs_from_parquet(tmp_path):
    source = write_parquet(tmp_path / "pairs.parquet", {"prompt": ["p1", "p2"], "response": ["r1", "r2"]})
    assert load_pairs(source) == [("p1", "r1"), ("p2", "r2")]


def test_pairs_from_chat_messages_take_last_exchange(tmp_path):
    chat = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "square of 3?"},
        {"role": "assistant", "content": "9"},
    ]
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": chat}, {"messages": chat[1:3]}])
    assert load_pairs(source, messages_field="messages") == [("square of 3?", "9"), ("hi", "hello")]


def test_chat_without_user_assistant_exchange_is_an_error(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(UserError, match=r"chat\.jsonl:1: field 'messages' has no user turn followed"):
        load_pairs(source, messages_field="messages")


def test_chat_message_missing_content_names_line_and_index(tmp_path):
    source = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(UserError, match=r"chat\.jsonl:1: messages\[0\]: missing field 'content'"):
        load_pairs(source, messages_field="messages")


def test_pairs_from_text_files_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserError, match="need a .jsonl or .parquet"):
        load_pairs(str(tmp_path / "a.txt"))


# ---------------------------------------------------------------- errors


def test_invalid_json_names_file_and_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"data\.jsonl:3: invalid JSON: "):
        load_text_records(str(path))


def test_missing_field_names_line_and_present_fields(tmp_path):
    records = [{"prompt": "p", "response": "r"}] * 4 + [{"a": 1, "b": 2}]
    source = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(UserError, match=r"data\.jsonl:5: missing field 'prompt' \(fields: a, b\)"):
        load_pairs(source)
    records[4] = {"prompt": "p", "answer": "x"}
    source = write_jsonl(tmp_path / "data.jsonl", records)
    with pytest.raises(
        UserError, match=r"data\.jsonl:5: missing field 'response' \(fields: prompt, answer\)"
    ):
        load_pairs(source)


def test_wrong_type_names_line_and_field(tmp_path):
    source = write_jsonl(tmp_path / "data.jsonl", [{"text": "fine"}, {"text": 42}])
    with pytest.raises(UserError, match=r"data\.jsonl:2: field 'text' must be a string, got int"):
        load_text_records(source)
    source = write_jsonl(tmp_path / "data.jsonl", [["not", "an", "object"]])
    with pytest.raises(UserError, match=r"data\.jsonl:1: expected a JSON object, got list"):
        load_text_records(source)


def test_parquet_missing_field_and_null_value_name_the_row(tmp_path):
    source = write_parquet(tmp_path / "data.parquet", {"body": ["x"]})
    with pytest.raises(UserError, match=r"data\.parquet row 1: missing field 'text' \(fields: body\)"):
        load_text_records(source)
    source = write_parquet(tmp_path / "pairs.parquet", {"prompt": ["p", "q"], "response": ["r", None]})
    with pytest.raises(
        UserError, match=r"pairs\.parquet row 2: field 'response' must be a string, got NoneType"
    ):
        load_pairs(source)


def test_damaged_parquet_is_a_user_error(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(UserError, match="not a readable parquet file"):
        load_text_records(str(path))


def test_empty_sources_are_errors(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.jsonl: no records"):
        load_text_records(str(tmp_path / "empty.jsonl"))
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(UserError, match=r"empty\.txt: empty file"):
        load_text_records(str(tmp_path / "empty.txt"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no non-empty"):
        load_text_records(str(tmp_path / "nothing"))


def test_missing_file_and_unsupported_type_are_errors(tmp_path):
    with pytest.raises(UserError, match=r"missing\.jsonl: file not found"):
        load_pairs(str(tmp_path / "missing.jsonl"))
    (tmp_path / "data.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"unsupported file type '\.csv'"):
        load_text_records(str(tmp_path / "data.csv"))
    with pytest.raises(UserError, match="limit must be a positive"):
        load_text_records(str(tmp_path / "data.csv"), limit=0)


def test_unreachable_hub_dataset_is_a_user_error_naming_the_id(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    # The offline switches are read at import time; force them in case datasets was imported earlier.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="dataset 'no-such-org/no-such-data'.*could not load"):
        load_pairs("no-such-org/no-such-data", limit=3)


def test_a_fifo_or_device_is_refused_instead_of_hanging(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="data.jsonl: not a regular file or directory"):
        load_text_records(str(fifo))
    with pytest.raises(UserError, match="not a regular file"):
        load_pairs("/dev/null" if os.path.exists("/dev/null") else str(fifo))


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b'{"text": "a"}\n{"text": "\xff\xfe bad"}\n',
            "data.jsonl:2: not UTF-8 text (invalid start byte at byte 10)",
        ),
        (b'{"text": "a"}\n' + b"[" * 100_000 + b"\n", "data.jsonl:2: JSON nested too deeply"),
        (b'{"text": ' + b"9" * 5000 + b"}\n", "data.jsonl:1: invalid JSON: Exceeds the limit"),
    ],
)
def test_undecodable_deep_or_huge_json_is_one_line_naming_file_and_line(tmp_path, content, expected):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_text_records(str(path))
    assert expected in str(err.value) and "\n" not in str(err.value)
