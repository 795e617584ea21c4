"""CPT token files: the same rows as packing in memory, cached by fingerprint, read a step at a time."""

import os

import numpy as np
import torch

from learnforget.config import StudyConfig
from learnforget.data import corpora
from learnforget.data.datasets import finetune_documents, training_rows
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
    packed = pack_documents(tokenizer, finetune_documents(study), 64, 40, 3)
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
