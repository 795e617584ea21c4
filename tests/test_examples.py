"""IFT example files: the rows of the in-memory path bit for bit, cached by fingerprint across studies and
processes, read a step at a time (resume exact), encoded streaming on one core or a pool, with one-line
errors that name the record."""

from __future__ import annotations

import json
import os
import random
from multiprocessing import get_context

import numpy as np
import pytest
import torch

from learnforget.config.study import StudyConfig
from learnforget.data.datasets import builtin_pairs, encode_pair, training_rows
from learnforget.data.examples import ExampleRows, step_rows
from learnforget.data.templates import IGNORE_INDEX
from learnforget.data.tokens import train_tokenizer
from learnforget.errors import UserError

TEXT = ["Question: What is 2 plus 3?\nAnswer: 2+3 = 5\n#### 5", "def add(a, b):\n    return a + b\n"] * 40


def reference_order(lengths, n_rows, batch_size, seed, group_by_length, group_batches=50):
    """Row order as the in-memory path computed it (plain Python lists)."""
    rng, group_rng = random.Random(seed), random.Random(f"{seed}-length-groups")
    rows: list[int] = []
    while len(rows) < n_rows:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        if group_by_length:
            size, grouped = batch_size * group_batches, []
            for start in range(0, len(order), size):
                group = sorted(order[start : start + size], key=lambda i: -lengths[i])
                batches = [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
                group_rng.shuffle(batches)
                grouped += [i for batch in batches for i in batch]
            order = grouped
        rows += order
    return rows[:n_rows]


def reference_rows(tokenizer, examples, seq_len, n_rows, seed, batch_size=1, group_by_length=False):
    """The in-memory path: every row right-padded to seq_len in one tensor, with the rows' lengths."""
    order = reference_order([len(x) for x, _ in examples], n_rows, batch_size, seed, group_by_length)
    ids = torch.full((n_rows, seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n_rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, index in enumerate(order):
        x, y = examples[index]
        ids[row, : len(x)], labels[row, : len(y)] = torch.tensor(x), torch.tensor(y)
    return {"input_ids": ids, "labels": labels, "lengths": torch.tensor([len(examples[i][0]) for i in order])}


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, 300)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def math_study(**update) -> StudyConfig:
    data = {"examples": 60, **update.pop("data", {})}
    settings = {"regime": "ift", "domain": "math", "epochs": 3, "batch_size": 8, "seq_len": 64, "seed": 2}
    return StudyConfig(**{**settings, **update}, data=data)


@pytest.mark.parametrize("domain", ["math", "code"])
def test_example_file_rows_equal_the_in_memory_rows_and_data_pt_is_a_descriptor(
    tokenizer, cache, tmp_path, domain
):
    # 64 examples, a multiple of the batch: exact epochs read the rows the in-memory path read.
    study = math_study(domain=domain, data={"examples": 64})
    train = training_rows(study, tokenizer)
    pairs = builtin_pairs(domain, "train", 64, 2)
    examples = [encode_pair(tokenizer, p, r, 64) for p, r in pairs]
    expected = reference_rows(tokenizer, examples, 64, study.steps * 8, 2, 8, group_by_length=True)
    assert any(len(x) == 64 for x, _ in examples)  # some are cut
    rows = train["rows"]
    assert isinstance(rows, ExampleRows) and len(rows) == study.steps * 8 == 192
    for step in range(study.steps):
        a, b = 8 * step, 8 * (step + 1)
        ids, labels = train["input_ids"][a:b], train["labels"][a:b]
        width = int(expected["lengths"][a:b].max())
        assert ids.shape == (8, width) and ids.dtype == labels.dtype == torch.long  # padded to its longest
        assert torch.equal(ids, expected["input_ids"][a:b, :width])
        assert torch.equal(labels, expected["labels"][a:b, :width])
    assert (rows.lengths() == expected["lengths"].numpy()).all()
    assert [step_rows(step, 8, rows.epoch_rows) for step in range(study.steps)] == [
        (8 * step, 8 * step + 8) for step in range(study.steps)
    ]
    assert rows.real_tokens(40) == int(expected["lengths"][:40].sum())
    total = sum(len(x) for x, _ in examples)
    sizes = {
        name: os.path.getsize(os.path.join(rows.path, name))
        for name in ("tokens.bin", "loss.bin", "offsets.bin")
    }
    assert sizes == {
        "tokens.bin": 2 * total,
        "loss.bin": total,
        "offsets.bin": 8 * 65,
    }  # uint16, 1 byte, int64
    assert train["stats"]["examples"] == 64 and train["stats"]["real_tokens"] == int(
        expected["lengths"].sum()
    )
    # data.pt pickles a descriptor: no tokens, no row order.
    torch.save(train, tmp_path / "data.pt")
    loaded = torch.load(tmp_path / "data.pt", weights_only=False)
    assert os.path.getsize(tmp_path / "data.pt") < 5_000
    assert torch.equal(
        loaded["labels"][100:108], expected["labels"][100:108, : loaded["labels"][100:108].shape[1]]
    )


def test_example_file_is_shared_by_studies_arms_and_processes(tokenizer, cache, tmp_path):
    import json as json_module

    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json_module.dumps({"prompt": f"Q{i}: " * (1 + i % 5), "response": f" {i}"}) + "\n"
                              for i in range(40)), encoding="utf-8")  # fmt: skip
    study = math_study(data={"train": str(source), "examples": 40})
    path = training_rows(study, tokenizer)["rows"].path
    before = os.stat(os.path.join(path, "tokens.bin")).st_mtime_ns
    # Another study name, seed or batch size reads the same examples: same file, another row order.
    other = training_rows(study.model_copy(update={"name": "x", "seed": 5, "batch_size": 4}), tokenizer)
    assert other["rows"].path == path and os.stat(os.path.join(path, "tokens.bin")).st_mtime_ns == before
    assert not torch.equal(other["input_ids"][0:4], training_rows(study, tokenizer)["input_ids"][0:4])
    # Another process, with the tokenizer loaded from disk, finds it too.
    tokenizer.save_pretrained(tmp_path / "tok")
    with get_context("fork").Pool(1) as pool:
        assert pool.apply(_rows_path_in_child, (study.model_dump_json(), str(tmp_path / "tok"))) == path
    assert os.stat(os.path.join(path, "tokens.bin")).st_mtime_ns == before
    # What the examples are made of is in the fingerprint.
    assert training_rows(study.model_copy(update={"seq_len": 32}), tokenizer)["rows"].path != path
    source.write_text(source.read_text() + json_module.dumps({"prompt": "new", "response": " x"}) + "\n")
    assert training_rows(study, tokenizer)["rows"].path != path  # an edited file is new data


def _rows_path_in_child(study_json: str, tokenizer_dir: str) -> str:
    from transformers import AutoTokenizer

    study = StudyConfig.model_validate_json(study_json)
    return training_rows(study, AutoTokenizer.from_pretrained(tokenizer_dir))["rows"].path


def test_resuming_from_a_step_reads_the_same_rows_and_gives_the_same_weights(tokenizer, cache, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.train.loop import make_optimizer, train_steps

    study = math_study()
    train = training_rows(study, tokenizer)

    def fresh():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))  # fmt: skip
        return model, *make_optimizer(model, 1e-3, 0.0, 1, 12, "adamw")

    def steps(model, optimizer, scheduler, data, start, end):
        train_steps(model, optimizer, scheduler, data["input_ids"], 8, start, end, labels=data["labels"],
                    epoch_rows=data["rows"].epoch_rows)  # fmt: skip

    # 60 examples: step 7 is epoch 1's short batch of 4 rows; resuming mid-epoch 1 runs through it.
    straight = fresh()
    steps(*straight, train, 0, 12)
    first = fresh()
    steps(*first, train, 0, 5)
    torch.save({"model": first[0].state_dict(), "optimizer": first[1].state_dict(), "scheduler": first[2].state_dict(),
                "data": train}, tmp_path / "state.pt")  # fmt: skip
    state = torch.load(tmp_path / "state.pt", weights_only=False)  # as a new process would: order recomputed
    resumed = fresh()
    resumed[0].load_state_dict(state["model"])
    resumed[1].load_state_dict(state["optimizer"])
    resumed[2].load_state_dict(state["scheduler"])
    steps(*resumed, state["data"], 5, 12)
    for a, b in zip(straight[0].parameters(), resumed[0].parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_pool_of_processes_writes_the_same_file_with_progress(tokenizer, tmp_path, monkeypatch, capsys):
    from learnforget.data import datasets, parallel

    monkeypatch.setattr(datasets, "ENCODE_BATCH", 7)  # many batches in flight
    files = []
    for workers in (1, 2):
        monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path / str(workers)))
        monkeypatch.setattr(parallel, "tokenize_workers", lambda need, minimum=0, workers=workers: workers)
        rows = training_rows(math_study(), tokenizer)["rows"]
        files.append(
            [open(os.path.join(rows.path, f), "rb").read() for f in ("tokens.bin", "loss.bin", "offsets.bin")]
        )
    assert files[0] == files[1]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tokenizing")]
    assert lines[0].startswith("tokenizing: 6/60 examples (10%), ") and lines[-1].endswith(" tokens/s")
    assert sum("60/60 examples (100%)" in line for line in lines) == 2


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_records_name_file_and_line_and_records_past_the_examples_are_not_read(
    tokenizer, tmp_path, monkeypatch, workers
):
    from learnforget.data import datasets, parallel

    monkeypatch.setenv("LEARNFORGET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "ENCODE_BATCH", 3)
    monkeypatch.setattr(parallel, "tokenize_workers", lambda need, minimum=0: workers)
    good = [json.dumps({"prompt": f"Q{i}", "response": f" {i}"}) for i in range(5)]
    source = tmp_path / "data.jsonl"

    def rows(lines, tokenizer=tokenizer, **data):
        source.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return training_rows(math_study(data={"train": str(source), **data}), tokenizer)

    with pytest.raises(UserError, match=r"data\.jsonl:4: invalid JSON"):
        rows([*good[:3], "{oops", *good[3:]], examples=5)
    with pytest.raises(UserError, match=r"data\.jsonl:2: missing field 'response' \(fields: prompt\)"):
        rows([good[0], '{"prompt": "x"}', *good[1:]], examples=5)
    chat = train_tokenizer(TEXT, 300)
    chat.chat_template = (
        "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # an empty reply renders nothing
    )
    with pytest.raises(UserError, match=r"data\.jsonl:5: its assistant turns are empty: nothing to learn"):
        rows([*good[:4], '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'],
             chat, examples=5)  # fmt: skip
    assert not list((tmp_path / "cache" / "examples").iterdir())  # no half-written file left behind
    # Dropping reads on only as far as needed: a broken record after the examples is never read.
    long = json.dumps({"prompt": "Question: " * 80, "response": " 5"})
    kept = rows([good[0], long, *good[1:4], "{oops"], examples=4, overlong="drop")
    assert (
        kept["stats"]["overlong"] == 1
        and len(np.fromfile(os.path.join(kept["rows"].path, "offsets.bin"), dtype=np.int64)) == 5
    )


def test_data_pt_names_the_example_file_and_a_cleared_cache_is_rebuilt(tokenizer, cache, tmp_path):
    import shutil

    from learnforget.study.data import DATA_FILE, prepare_data

    tokenizer.save_pretrained(tmp_path / "base")
    study = math_study(eval={"loss_tokens": 128, "choice_items": 0, "generation_problems": 0,
                             "reference_problems": 0, "diversity_prompts": 0})  # fmt: skip
    data = prepare_data(study, tmp_path / "study", str(tmp_path / "base"))
    first = data["train"]["labels"][0:8]
    assert os.path.getsize(tmp_path / "study" / DATA_FILE) < 50_000  # evaluation sets and a descriptor
    shutil.rmtree(data["train"]["rows"].path)  # the cache was cleared: the file is encoded again
    again = prepare_data(study, tmp_path / "study", str(tmp_path / "base"))
    assert torch.equal(again["train"]["labels"][0:8], first)


@pytest.mark.parametrize("group_by_length", [True, False])
def test_exact_epochs_take_every_example_once_ending_with_a_short_batch(tokenizer, cache, group_by_length):
    from learnforget.data.datasets import trained_tokens
    from learnforget.data.examples import rows_before

    study = math_study(data={"group_by_length": group_by_length})  # 60 examples, batch 8: 7 full + 4 rows
    train = training_rows(study, tokenizer)
    rows, order = train["rows"], train["rows"].order
    assert study.steps == 24 and study.milestone_steps() == [8, 16, 24] and len(rows) == 180
    lengths = np.diff(rows.offsets)
    for epoch in range(3):
        bounds = [step_rows(step, 8, rows.epoch_rows) for step in range(8 * epoch, 8 * (epoch + 1))]
        assert [b - a for a, b in bounds] == [8] * 7 + [4]
        assert bounds[0][0] == 60 * epoch and bounds[-1][1] == 60 * (epoch + 1)  # milestone = whole passes
        taken = np.concatenate([order[a:b] for a, b in bounds])
        assert sorted(taken.tolist()) == list(range(60))  # every example exactly once
        a, b = bounds[-1]
        ids = train["input_ids"][a:b]
        assert ids.shape == (4, int(lengths[order[a:b]].max()))  # the short batch, padded to its longest
    # Tokens count the real rows: a milestone after e epochs has trained on e × every example's tokens.
    assert [trained_tokens(train, m, 8, 64) for m in study.milestone_steps()] == [
        int(lengths.sum()) * e for e in (1, 2, 3)
    ]
    assert train["stats"]["real_tokens"] == 3 * int(lengths.sum())
    assert rows_before(9, 8, 60) == 68 and rows_before(9, 8) == 72


def test_a_short_batch_averages_its_own_tokens_and_accumulates(tokenizer, cache):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.train.loop import make_optimizer, train_steps, trim_padding

    train = training_rows(math_study(), tokenizer)
    ids, labels = train["input_ids"][56:60], train["labels"][56:60]  # step 7: epoch 1's last 4 rows
    for micro, parts in ((None, [(0, 4)]), (3, [(0, 3), (3, 4)])):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))  # fmt: skip

        def part_loss(a, b, model=model):
            part_ids, part_labels = trim_padding(ids[a:b], labels[a:b])
            with torch.no_grad():
                return float(model(input_ids=part_ids, labels=part_labels).loss)

        # Per token within each micro-batch, then the mean of the micro-batches: as for full batches.
        expected = sum(part_loss(a, b) for a, b in parts) / len(parts)
        loss = train_steps(model, *make_optimizer(model, 1e-3, 0.0, 0, 1), train["input_ids"], 8, 7, 8,
                           labels=train["labels"], micro_batch_size=micro, epoch_rows=60)  # fmt: skip
        assert loss == pytest.approx(expected, rel=1e-5)


def test_a_short_batch_with_fewer_rows_than_processes_is_refused_at_load():
    from learnforget.study.dryrun import data_plan

    study = math_study()  # each epoch ends with 60 % 8 = 4 rows
    study.check_last_batch(4)  # 4 processes take one row each; 8 rows split unevenly over 3
    study.check_last_batch(3)
    with pytest.raises(
        UserError,
        match=r"data.examples=60: each epoch ends with a batch of 4 rows, fewer than the 5 processes",
    ):
        study.check_last_batch(5)
    math_study(data={"examples": 64}).check_last_batch(16)  # no short batch
    math_study(epochs=None, budget_tokens=4096).check_last_batch(16)  # a token budget: whole batches
    assert "the last of an epoch's 8 steps takes the 4 rows left over: epochs are exact" in data_plan(study)
