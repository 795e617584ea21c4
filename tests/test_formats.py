"""IFT record formats and file formats: each from a small file written here, the way users have them."""

import csv
import gzip
import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest

from learnforget.config.study import DataConfig
from learnforget.data.loaders import iter_conversations, load_conversations, load_text_records
from learnforget.errors import UserError

PAIRS = [{"prompt": "Add one to the number.", "response": "6"}, {"prompt": "Double it.", "response": "10"}]
EXPECTED = [
    [("user", "Add one to the number."), ("assistant", "6")],
    [("user", "Double it."), ("assistant", "10")],
]


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_alpaca_joins_instruction_and_input(tmp_path):
    records = [
        {"instruction": "Add one to the number.", "input": "5", "output": "6"},
        {"instruction": "Say hi.", "input": "", "output": "hi"},
    ]
    (tmp_path / "alpaca.json").write_text(json.dumps(records), encoding="utf-8")
    assert load_conversations(str(tmp_path / "alpaca.json")) == [
        [("user", "Add one to the number.\n\n5"), ("assistant", "6")],
        [("user", "Say hi."), ("assistant", "hi")],
    ]


def test_sharegpt_maps_from_value_and_keeps_every_turn(tmp_path):
    chat = [
        {"from": "system", "value": "You count."},
        {"from": "human", "value": "1?"},
        {"from": "gpt", "value": "2"},
        {"from": "human", "value": "3?"},
        {"from": "gpt", "value": "4"},
    ]
    (tmp_path / "sharegpt.jsonl").write_text(jsonl([{"conversations": chat}]), encoding="utf-8")
    assert load_conversations(str(tmp_path / "sharegpt.jsonl")) == [
        [("system", "You count."), ("user", "1?"), ("assistant", "2"), ("user", "3?"), ("assistant", "4")]
    ]
    chat[1]["from"] = "robot"
    (tmp_path / "sharegpt.jsonl").write_text(jsonl([PAIRS[0], {"conversations": chat}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"sharegpt\.jsonl:2: conversations\[1\]: unknown from 'robot'"):
        load_conversations(str(tmp_path / "sharegpt.jsonl"))  # auto: a format per record


def test_compressed_json_csv_and_arrays(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(jsonl(PAIRS))
    with gzip.open(tmp_path / "b.json.gz", "wt", encoding="utf-8") as f:
        json.dump(PAIRS, f)
    (tmp_path / "c.json").write_text(jsonl(PAIRS), encoding="utf-8")  # JSON lines named .json
    with (tmp_path / "d.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["prompt", "response"])
        writer.writeheader()
        writer.writerows(PAIRS)
    with gzip.open(tmp_path / "d.csv.gz", "wt", encoding="utf-8") as f:
        f.write((tmp_path / "d.csv").read_text(encoding="utf-8"))
    for name in ("a.jsonl.gz", "b.json.gz", "c.json", "d.csv", "d.csv.gz"):
        assert load_conversations(str(tmp_path / name)) == EXPECTED, name
    (tmp_path / "e.csv").write_text('prompt,response\nok,fine\n"multi\nline",x,extra\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"e\.csv:4: 3 cells, header has 2"):  # the record ends on line 4
        load_conversations(str(tmp_path / "e.csv"))
    (tmp_path / "f.json").write_text('[{"prompt": "a", "response": "b"}, 3]', encoding="utf-8")
    with pytest.raises(UserError, match=r"f\.json\[2\]: expected a JSON object, got int"):
        load_conversations(str(tmp_path / "f.json"))
    (tmp_path / "h.csv").write_bytes(b"prompt,response\nok,fine\n" * 5000 + b"bad,\xff\n")  # read as a stream
    with pytest.raises(UserError, match=r"h\.csv: not UTF-8 text after line \d+ \(invalid start byte\)$"):
        load_conversations(str(tmp_path / "h.csv"))
    # JSON lines named .json, streamed
    (tmp_path / "i.json").write_bytes(b"\n" + jsonl(PAIRS).encode() + b'{"prompt": 1}\n')
    with pytest.raises(UserError, match=r"i\.json:4: field 'prompt' must be a string, got int"):
        load_conversations(str(tmp_path / "i.json"))
    (tmp_path / "g.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match=r"g\.jsonl\.gz: not a readable file"):
        load_conversations(str(tmp_path / "g.jsonl.gz"))


def test_save_to_disk_directory_and_its_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(PAIRS), "test": datasets.Dataset.from_list(PAIRS[:1])}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    datasets.Dataset.from_list([{"text": "doc a"}, {"text": "doc b"}]).save_to_disk(str(tmp_path / "single"))
    assert load_conversations(str(tmp_path / "dict")) == EXPECTED
    assert load_conversations(str(tmp_path / "dict"), split="test") == EXPECTED[:1]
    assert load_text_records(str(tmp_path / "single")) == ["doc a", "doc b"]
    with pytest.raises(UserError, match=r"dict: no split 'valid' \(splits: train, test\)"):
        load_conversations(str(tmp_path / "dict"), split="valid")


def test_folder_of_shards_reads_the_split_in_path_order(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    data = tmp_path / "snapshot" / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(PAIRS[1:]), data / "train-00001-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(PAIRS[:1]), data / "train-00000-of-00002.parquet")
    pq.write_table(
        pa.Table.from_pylist([{"prompt": "held", "response": "out"}]), data / "test-00000-of-00001.parquet"
    )
    (tmp_path / "snapshot" / "README.md").write_text("# card", encoding="utf-8")  # not a record file
    assert load_conversations(str(tmp_path / "snapshot")) == EXPECTED
    assert load_conversations(str(tmp_path / "snapshot"), split="test") == [
        [("user", "held"), ("assistant", "out")]
    ]
    shards = tmp_path / "texts"
    shards.mkdir()
    (shards / "part-0.jsonl").write_text(jsonl([{"text": "one"}]), encoding="utf-8")
    (shards / "part-1.jsonl").write_text(jsonl([{"text": "two"}]), encoding="utf-8")
    assert load_text_records(str(shards)) == ["one", "two"]  # record shards, not text documents


def test_bad_records_name_file_and_line_in_every_format(tmp_path):
    (tmp_path / "a.jsonl").write_text(jsonl([PAIRS[0], {"instruction": "x", "output": 3}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"a\.jsonl:2: field 'output' must be a string, got int"):
        load_conversations(str(tmp_path / "a.jsonl"))
    (tmp_path / "b.jsonl").write_text(jsonl([PAIRS[0], {"question": "x"}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"b\.jsonl:2: missing field 'prompt' \(fields: question\)"):
        load_conversations(str(tmp_path / "b.jsonl"))
    locations = [where for where, _ in iter_conversations(str(tmp_path / "a.jsonl"), limit=1)]
    assert locations == [f"{tmp_path / 'a.jsonl'}:1"]


def test_presets_fill_fields_that_the_config_does_not_give():
    magicoder = DataConfig(preset="magicoder-evol-instruct")
    assert (magicoder.train, magicoder.prompt_field, magicoder.response_field) == (
        "ise-uiuc/Magicoder-Evol-Instruct-110K", "instruction", "response",
    )  # fmt: skip
    assert DataConfig(preset="metamathqa").prompt_field == "query"
    starcoder = DataConfig(preset="starcoder-python", data_dir="python/sub")
    assert (starcoder.train, starcoder.text_field, starcoder.data_dir) == (
        "bigcode/starcoderdata",
        "content",
        "python/sub",
    )
    assert DataConfig(preset="openwebmath").train == "open-web-math/open-web-math"
    with pytest.raises(ValueError, match="no {prompt} placeholder"):
        DataConfig(prompt_template="Q: A:")


def test_dry_run_data_plan_shows_source_budget_and_template():
    from learnforget.config.load import load_studies
    from learnforget.study.dryrun import data_plan

    ((_, code_ift),) = load_studies("paper/code-ift", [])
    plan = data_plan(code_ift)
    assert (
        "ise-uiuc/Magicoder-Evol-Instruct-110K (preset magicoder-evol-instruct), 'instruction' → 'response'"
        in plan
    )
    assert "110,000 examples × 16 epochs = 9,168 steps" in plan and "truncated" in plan
    assert "the last of an epoch's 573 steps takes the 176 rows left over: epochs are exact" in plan
    assert r"'### Instruction:\n<prompt>\n\n### Response:\n<response><eos>'" in plan
    ((_, custom),) = load_studies(
        "paper/math-ift", ['data.prompt_template="Q: {prompt}\\nA:"', "data.overlong=drop"]
    )
    assert r"Template: 'Q: <prompt>\nA:<response><eos>'" in data_plan(custom) and "dropped" in data_plan(
        custom
    )
    ((_, cpt),) = load_studies("paper/code-cpt", [])
    assert (
        "bigcode/starcoderdata (preset starcoder-python), data_dir python, text field 'content'"
        in data_plan(cpt)
    )


def test_undecodable_and_pathological_json_give_one_line_errors(tmp_path):
    with gzip.open(tmp_path / "a.jsonl.gz", "wb") as f:
        f.write(jsonl(PAIRS).encode() + b'{"prompt": "\xff"}\n')
    with pytest.raises(UserError, match=r"a\.jsonl\.gz:3: not UTF-8 text"):
        load_conversations(str(tmp_path / "a.jsonl.gz"))
    (tmp_path / "deep.json").write_text("[" + "[" * 100_000 + "]" * 100_000 + "]", encoding="utf-8")
    with pytest.raises(UserError, match=r"deep\.json: JSON nested too deeply"):
        load_conversations(str(tmp_path / "deep.json"))
    (tmp_path / "broken.json").write_text('[\n{"prompt": "a",\n "response": }\n]', encoding="utf-8")
    with pytest.raises(UserError, match=r"broken\.json:3: invalid JSON"):
        load_conversations(str(tmp_path / "broken.json"))
