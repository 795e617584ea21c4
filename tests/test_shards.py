"""CPT token files: the same rows as packing in memory, cached by fingerprint, read a step at a time."""

import os

import numpy as np
import torch

from learnforget.config import StudyConfig
from learnforget.data import corpora
from learnforget.data.datasets import training_rows
from learnforget.data.shards import TokenRows
from learnforget.data.tokens import pack_documents, train_tokenizer


def test_token_file_rows_equal_packed_rows_and_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path))
    docs = corpora.documents("code", "finetune")
    tokenizer = train_tokenizer([d.text for d in docs[:50]], 400)
    study = StudyConfig(seq_len=64, batch_size=4, budget_tokens=64 * 4 * 10, seed=3)
    rows = training_rows(study, tokenizer)["input_ids"]
    assert isinstance(rows, TokenRows) and len(rows) == 40 and rows.dtype == "uint16"
    # What training used to hold in data.pt: packed rows in a seeded permutation.
    packed = pack_documents(tokenizer, docs, 64, 40, 3)
    expected = packed[torch.randperm(40, generator=torch.Generator().manual_seed(3))]
    assert torch.equal(rows[0:40], expected) and torch.equal(rows[8:12], expected[8:12])
    assert rows[8:12].dtype == torch.long and rows[8:12][1::2].shape == (2, 64)  # a process's share
    assert os.path.getsize(rows.path) == 40 * 64 * 2  # two bytes a token
    # Cached: another study (or arm, or process) with the same data reuses the file, unchanged.
    before = os.stat(rows.path).st_mtime_ns
    again = training_rows(study.model_copy(update={"name": "other"}), tokenizer)["input_ids"]
    assert again.path == rows.path and os.stat(rows.path).st_mtime_ns == before
    other_seed = training_rows(study.model_copy(update={"seed": 4}), tokenizer)["input_ids"]
    assert other_seed.path != rows.path
    # data.pt pickles the rows without their memory map.
    torch.save({"rows": rows}, tmp_path / "data.pt")
    loaded = torch.load(tmp_path / "data.pt", weights_only=False)["rows"]
    assert torch.equal(loaded[0:40], expected) and os.path.getsize(tmp_path / "data.pt") < 10_000
    assert np.fromfile(rows.path, dtype=np.uint16).max() < len(tokenizer)


def test_user_documents_are_streamed_in_a_seeded_buffered_order(tmp_path, monkeypatch):
    import json

    from learnforget.data import datasets
    from learnforget.data.tokens import shuffled

    monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path / "cache"))
    import random

    assert sorted(shuffled(range(50), 8, random.Random(0))) == list(range(50))
    assert list(shuffled(range(50), 8, random.Random(0))) != list(range(50))
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "".join(json.dumps({"text": f"doc {i} " * 5}) + "\n" for i in range(30)), encoding="utf-8"
    )
    tokenizer = train_tokenizer([f"doc {i} " * 5 for i in range(30)], 300)
    monkeypatch.setattr(datasets, "STREAM_SHUFFLE_BUFFER", 4)
    study = StudyConfig(seq_len=16, batch_size=2, budget_tokens=16 * 2 * 30, data={"train": str(source)})
    rows = training_rows(study, tokenizer)["input_ids"]  # 960 tokens: more than one pass over 30 documents
    stream = np.fromfile(rows.path, dtype=np.uint16).tolist()
    eos = tokenizer.eos_token_id
    texts = tokenizer.decode(stream).split(tokenizer.eos_token)
    first_pass = [t for t in texts[:30]]
    assert sorted(first_pass) == sorted(f"doc {i} " * 5 for i in range(30))  # each document once a pass
    assert first_pass != [f"doc {i} " * 5 for i in range(30)] and stream.count(eos) >= 30
    assert torch.equal(training_rows(study, tokenizer)["input_ids"][0:60], rows[0:60])  # seeded, cached
