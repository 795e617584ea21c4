"""Held-out loss rows are drawn from the whole held-out split, not from the first documents a seeded order
reaches: a split of a few long files (held-out code) is measured across all of them. A study keeps the
evaluation sets its milestones were measured on."""

from __future__ import annotations

import random

import pytest
import torch

from learnforget.data import corpora
from learnforget.data.tokens import pack_documents, sample_packed_rows, train_tokenizer
from learnforget.errors import UserError
from learnforget.study.data import EVAL_DIGEST, check_same_evaluation, content_digest
from learnforget.study.store import Store

SEQ_LEN, ROWS, SEED = 64, 48, 1234


def document_of_each_token(tokenizer, docs) -> list[int]:
    """For the one-pass packed stream in the seeded order: the index of the document of every token."""
    order = list(range(len(docs)))
    random.Random(SEED).shuffle(order)
    owners: list[int] = []
    for i in order:
        owners += [i] * (len(tokenizer(docs[i].text, add_special_tokens=False)["input_ids"]) + 1)  # + EOS
    return owners


def test_held_out_rows_are_drawn_from_every_file_of_the_split():
    docs = corpora.documents("code", "heldout")
    tokenizer = train_tokenizer([d.text for d in corpora.documents("code", "finetune")[:40]], 400)
    owners = document_of_each_token(tokenizer, docs)
    available = len(owners) // SEQ_LEN
    every_row = pack_documents(tokenizer, docs, SEQ_LEN, available, SEED)  # one pass, same order

    rows = sample_packed_rows(tokenizer, docs, SEQ_LEN, ROWS, SEED)
    assert rows.shape == (ROWS, SEQ_LEN) and rows.dtype == torch.long
    index = {tuple(row.tolist()): i for i, row in enumerate(every_row)}
    picked = [index[tuple(row.tolist())] for row in rows]  # KeyError: not a row of the packed split
    assert picked == sorted(set(picked))  # distinct, in stream order
    files = {owners[i * SEQ_LEN] for i in picked}
    # The old rows (the seeded stream's first ROWS rows) reach only the first files of the order.
    first_files = {owners[i * SEQ_LEN] for i in range(ROWS)}
    assert len(files) >= 10 > len(first_files), (len(files), len(first_files))
    assert torch.equal(pack_documents(tokenizer, docs, SEQ_LEN, ROWS, SEED), every_row[:ROWS])

    assert torch.equal(sample_packed_rows(tokenizer, docs, SEQ_LEN, ROWS, SEED), rows)  # deterministic
    assert not torch.equal(sample_packed_rows(tokenizer, docs, SEQ_LEN, ROWS, SEED + 1), rows)
    # Asked for more rows than the split packs into: every document, then a new order (as before).
    few = docs[:2]
    many = len(document_of_each_token(tokenizer, few)) // SEQ_LEN + 5
    assert torch.equal(
        sample_packed_rows(tokenizer, few, SEQ_LEN, many, SEED),
        pack_documents(tokenizer, few, SEQ_LEN, many, SEED),
    )


def test_a_study_with_milestones_refuses_evaluation_sets_built_otherwise(tmp_path):
    """`check_same_evaluation`: the first build records the sets' digest; a rebuild with the same sets
    passes, other sets pass only while no milestone is stored (then they are the study's sets)."""
    sets = {"loss": {"code": torch.arange(12).view(3, 4)}, "template": "{prompt}", "choice": [{"label": 0}]}
    other = {**sets, "loss": {"code": torch.arange(12).view(3, 4).flip(0)}}
    store = Store(tmp_path)
    check_same_evaluation(store, sets)
    assert store.info(EVAL_DIGEST) == content_digest(sets) != content_digest(other)
    assert content_digest(
        {"template": "{prompt}", "choice": [{"label": 0}], "loss": sets["loss"]}
    ) == content_digest(sets)
    check_same_evaluation(store, other)  # nothing measured yet: the new sets are the study's
    assert store.info(EVAL_DIGEST) == content_digest(other)
    store.add_metrics("base", 0, 0, {"code/loss": 3.0})
    check_same_evaluation(store, other)  # the same sets again: fine
    with pytest.raises(UserError, match="rebuilt with other evaluation sets"):
        check_same_evaluation(store, sets)
    assert store.info(EVAL_DIGEST) == content_digest(other)


def test_forgetting_can_be_measured_on_other_source_corpora():
    """`eval.source_corpora`: each corpus gets its own held-out loss rows and metric; the first is the
    forgetting axis and the text of the multiple-choice items; the default study keeps only english."""
    from transformers import AutoTokenizer

    from learnforget.base.load import SHIPPED_BASE
    from learnforget.config.metrics import forgetting_metric, produced_metrics
    from learnforget.config.study import StudyConfig
    from learnforget.evaluate.sets import evaluation_sets

    prose = corpora.documents("prose", "heldout")
    assert len(prose) > 50 and all(d.name.startswith("pydoc/") and d.text.strip() for d in prose)
    assert corpora.documents("prose", "pretrain") == [] == corpora.documents("bible", "finetune")
    assert [d.name for d in corpora.documents("bible", "heldout")] == [
        d.name for d in corpora.bible_documents("heldout")
    ]

    default = StudyConfig(domain="math")
    assert forgetting_metric(default) == ("english/loss", False)
    assert {"english/loss", "english/mc_acc"} <= produced_metrics(default)

    study = StudyConfig.model_validate(
        {"domain": "math", "seq_len": 64, "eval": {"source_corpora": ["prose", "english"], "loss_tokens": 256,
                                                   "choice_items": 4, "generation_problems": 0}}
    )  # fmt: skip
    assert forgetting_metric(study) == ("prose/loss", False)
    names = produced_metrics(study)
    assert {
        "prose/loss",
        "english/loss",
        "math/loss",
        "prose/mc_acc",
    } <= names and "english/mc_acc" not in names
    sets = evaluation_sets(study, AutoTokenizer.from_pretrained(SHIPPED_BASE))
    assert list(sets["loss"]) == ["prose", "english", "math"]
    assert all(rows.shape == (4, 64) for rows in sets["loss"].values())
    assert not torch.equal(sets["loss"]["prose"], sets["loss"]["english"])
    with pytest.raises(ValueError, match="source_corpora"):
        StudyConfig.model_validate({"eval": {"source_corpora": ["klingon"]}})
    with pytest.raises(ValueError, match="source_corpora"):
        StudyConfig.model_validate({"eval": {"source_corpora": []}})
