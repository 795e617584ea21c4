"""CPT token files: the same rows as packing in memory, cached by fingerprint, read a step at a time."""

import os

import numpy as np
import torch

from learnforget.config.study import StudyConfig
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


def test_tokenizing_with_processes_gives_the_default_study_identical_rows(tmp_path, monkeypatch):
    from learnforget.data import parallel

    docs = corpora.documents("code", "finetune")
    tokenizer = train_tokenizer([d.text for d in docs[:50]], 400)
    study = StudyConfig(seed=3)  # the built-in code CPT study
    n_rows = study.steps * study.batch_size
    packed = pack_documents(tokenizer, docs, study.seq_len, n_rows, 3)
    expected = packed[torch.randperm(n_rows, generator=torch.Generator().manual_seed(3))]
    monkeypatch.setattr(parallel, "PARALLEL_BATCH_BYTES", 20_000)  # many batches in flight
    files = []
    for workers in (1, 2):
        monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path / str(workers)))
        monkeypatch.setattr(parallel, "tokenize_workers", lambda need, workers=workers: workers)
        rows = training_rows(study, tokenizer)["input_ids"]
        assert torch.equal(rows[0:n_rows], expected)
        files.append(open(rows.path, "rb").read())
    assert files[0] == files[1] and len(files[0]) == n_rows * study.seq_len * 2


def test_processes_pack_the_same_stream_over_several_passes(monkeypatch):
    import random

    from learnforget.data import parallel
    from learnforget.data.tokens import pack_texts, shuffled

    texts = [f"text {i} " * (1 + i % 7) for i in range(40)]
    tokenizer = train_tokenizer(texts, 300)
    monkeypatch.setattr(parallel, "PARALLEL_BATCH_BYTES", 50)
    streams = []
    for workers in (1, 2, 3):
        rng = random.Random(0)  # a seeded order each pass, as user documents are streamed
        pieces = pack_texts(tokenizer, lambda rng=rng: shuffled(texts, 8, rng), 2_000, workers)
        streams.append([int(t) for piece in pieces for t in piece])
    assert len(streams[0]) == 2_000 and streams[0].count(tokenizer.eos_token_id) > 80  # several passes
    assert streams[1] == streams[0] and streams[2] == streams[0]
    with __import__("pytest").raises(ValueError, match="no documents"):
        list(pack_texts(tokenizer, lambda: iter([]), 10, 2))


def test_token_file_progress_is_a_line_every_tenth_off_a_terminal(tmp_path, capsys):
    from learnforget.data.shards import write_token_file

    write_token_file(([i] for i in range(1000)), 1000, "uint16", tmp_path / "t.bin")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 10 and lines[0].startswith("tokenizing: 100/1,000 tokens (10%), ")
    assert lines[-1].startswith("tokenizing: 1,000/1,000 tokens (100%)") and lines[-1].endswith(" tokens/s")
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == list(range(1000))


def test_dry_run_data_plan_gives_token_file_size_and_memory(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from learnforget.config.load import load_studies
    from learnforget.study.dryrun import data_plan

    monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path))
    ((_, cpt),) = load_studies("paper/code-cpt", [])
    plan = data_plan(cpt, 32_000)
    assert "19,999,752,192 tokens × 2 bytes (uint16: vocabulary 32,000) = 37.3 GB on disk in " in plan
    assert f"{tmp_path}/tokens/" in plan and "not loaded: a step reads its 192 rows (6.0 MB" in plan
    assert "× 4 bytes (uint32: vocabulary 128,256) = 74.5 GB" in data_plan(cpt, 128_256)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**30, 90 * 2**30, 10 * 2**30))
    assert "(10.0 GB free there (NOT ENOUGH: needs 37.3 GB))" in data_plan(cpt, 32_000)
    ((_, ift),) = load_studies("paper/math-ift", [])
    plan = data_plan(ift, 32_000)
    assert "at most 395,000 examples × 1024 = 404,480,000 tokens" in plan
    assert (
        "(2 bytes (uint16: vocabulary 32,000) + a 1-byte loss mask) + 8-byte offsets = at most 1.1 GB" in plan
    )
    assert f"{tmp_path}/examples/ (10.0 GB free there)" in plan and "(and seed" in plan
    assert "395,001 offsets and 6,320,000 row indices (8 bytes each: 51.2 MB)" in plan
    assert "a step reads its 192 rows (at most 3.0 MB" in plan


POOL_RACE = """
import time
from learnforget.data.parallel import _worker_pool

def work(batch):
    time.sleep(0.5)
    return len(batch)

class SlowToPickle:  # a batch that takes a second to pickle and overfills the workers' pipe
    def __reduce__(self):
        time.sleep(1.0)
        return (bytes, (b"x" * 2_000_000,))

def start():
    pass

with _worker_pool(1, start, ()) as submit:
    first = submit(work, b"small")  # the worker is busy with it ...
    time.sleep(0.1)
    submit(work, SlowToPickle())  # ... while the pool's task thread pickles this one
    time.sleep(0.2)
print("shut down", first.get())
"""


def test_worker_pool_shuts_down_while_a_batch_is_still_being_sent(tmp_path):
    """Leaving a plain `with Pool()` at this moment hangs for good (its terminate locks the worker out of
    the pipe the task thread is about to fill); the tokenizing pool waits for its batches first."""
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(POOL_RACE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["shut", "down", "5"]
