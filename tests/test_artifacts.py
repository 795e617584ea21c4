"""Saved arms are the models that were measured: reloaded with plain transformers / peft, they give the
study's recorded final metrics exactly; adapters name an absolute base; every arm has a model card."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from learnforget.config.study import StudyConfig
from learnforget.evaluate.arm_model import evaluate_model
from learnforget.study.store import Store
from tests.conftest import MICRO_STUDY, cli_exit_code

ARMS = {
    "full-lr1e-3-s0": "model",
    "lora-r2-all-lr1e-2-s0": "adapter",
    "lora-r2-all-lr1e-2-emb-s0": "adapter",
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    config = copy.deepcopy(MICRO_STUDY)
    config["milestones"] = 2
    config["arms"] = [
        {"method": "full", "learning_rate": 1e-3},
        {"method": "lora", "rank": 2, "learning_rate": 1e-2},
        {"method": "lora", "rank": 2, "learning_rate": 1e-2, "train_embeddings": True},
    ]
    path = tmp_path_factory.mktemp("cfg") / "artifacts.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path_factory.mktemp("study") / "artifacts"
    code = cli_exit_code(["run", str(path), "--out", str(out)])
    assert not code, f"learnforget run exited {code}"
    return out


def reload(directory, kind):
    """The arm as a user loads it, outside learnforget."""
    if kind == "model":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    from peft import AutoPeftModelForCausalLM

    # fp32 adapter arms are measured on their merged weights, as the model card says to load them.
    return AutoPeftModelForCausalLM.from_pretrained(directory, dtype=torch.float32).merge_and_unload()


@pytest.mark.parametrize("arm", sorted(ARMS))
def test_reloaded_arm_reproduces_recorded_final_metrics_exactly(study_dir, arm):
    from transformers import AutoTokenizer

    store = Store(study_dir)
    study = StudyConfig.model_validate(store.info("config"))
    rows = store.metrics(arm)
    final_tokens = max(r["tokens"] for r in rows)
    recorded = {r["metric"]: r["value"] for r in rows if r["tokens"] == final_tokens}
    directory = study_dir / "arms" / arm / ARMS[arm]
    model = reload(directory, ARMS[arm])
    tokenizer = AutoTokenizer.from_pretrained(directory)
    data = torch.load(study_dir / "data.pt", weights_only=False)
    measured = evaluate_model(model, tokenizer, study, data)
    assert measured, "no metrics measured"
    for name, value in measured.items():
        assert value == recorded[name], f"{arm} {name}: reloaded {value!r}, recorded {recorded[name]!r}"


def test_unmerged_adapters_measure_the_same_model(study_dir):
    """The peft model itself, not merged, gives the recorded metrics up to float rounding."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    store = Store(study_dir)
    study = StudyConfig.model_validate(store.info("config"))
    data = torch.load(study_dir / "data.pt", weights_only=False)
    for arm in ("lora-r2-all-lr1e-2-s0", "lora-r2-all-lr1e-2-emb-s0"):
        rows = store.metrics(arm)
        final = max(r["tokens"] for r in rows)
        recorded = {r["metric"]: r["value"] for r in rows if r["tokens"] == final}
        directory = study_dir / "arms" / arm / "adapter"
        assert ".merge_and_unload()" in (study_dir / "arms" / arm / "README.md").read_text()
        model = AutoPeftModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        measured = evaluate_model(model, AutoTokenizer.from_pretrained(directory), study, data)
        for name, value in measured.items():
            assert value == pytest.approx(recorded[name], abs=1e-5), f"{arm} {name}"


def test_embeddings_arm_saves_embeddings_and_plain_lora_does_not(study_dir):
    from safetensors import safe_open

    def keys(arm):
        with safe_open(study_dir / "arms" / arm / "adapter" / "adapter_model.safetensors", "pt") as f:
            return list(f.keys())

    assert any("embed_tokens" in k for k in keys("lora-r2-all-lr1e-2-emb-s0"))
    assert not any("embed_tokens" in k for k in keys("lora-r2-all-lr1e-2-s0"))


def test_adapter_names_an_absolute_base_and_arms_have_model_cards(study_dir):
    from pathlib import Path

    config = json.loads(
        (study_dir / "arms" / "lora-r2-all-lr1e-2-s0" / "adapter" / "adapter_config.json").read_text()
    )
    base = Path(config["base_model_name_or_path"])
    assert base.is_absolute() and (base / "config.json").exists()
    store = Store(study_dir)
    for arm in ARMS:
        card = (study_dir / "arms" / arm / "README.md").read_text()
        final = max(r["tokens"] for r in store.metrics(arm))
        code_loss = next(
            r["value"] for r in store.metrics(arm) if r["tokens"] == final and r["metric"] == "code/loss"
        )
        assert arm in card and str(base) in card and f"{code_loss:.6g}" in card
        assert "learning_rate" in card and f"{final:,} tokens" in card
