"""Evaluation runs where the model is: inputs on its device (checked on `meta`), log-probs in float32 (bf16)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from learnforget.analyse import spectrum
from learnforget.analyse.spectrum import spectrum_of_state_dicts
from learnforget.config.study import EvalConfig, StudyConfig
from learnforget.evaluate.choice import build_choice_items, choice_loglikelihoods
from learnforget.evaluate.generate import generate
from learnforget.evaluate.likelihood import completion_nll, mean_token_loss
from learnforget.evaluate.suites import evaluate_suites
from learnforget.runtime.device import model_device
from tests.device_guard import MetaDeviceGuard
from tests.test_choice_generate import SONNETS, make_tokenizer, tiny_llama, train_on_sonnets

torch.set_num_threads(1)
PROMPTS = ["Shall I compare", "My mistress' eyes"]


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # as the study's tokenizers have one
    return tokenizer


@pytest.fixture(scope="module")
def trained(tokenizer):
    return train_on_sonnets(tiny_llama(tokenizer), tokenizer, steps=40)


@pytest.fixture(scope="module")
def meta_model(tokenizer):
    return tiny_llama(tokenizer).to("meta")


@pytest.fixture(scope="module")
def eval_sets(tokenizer):
    ids = [tokenizer(text)["input_ids"] for text in SONNETS]
    rows = torch.tensor([row[start : start + 24] for row in ids for start in (0, 30)])
    return {
        "loss": {"english": rows, "math": rows[:3]},
        "choice": build_choice_items(SONNETS, tokenizer, n_items=6, context_tokens=12, continuation_tokens=6),
        "reference": [{"prompt": "Shall I compare thee", "reference": " to a summer's day?"}],
        "generation": [{"prompt": p, "answer": "4"} for p in PROMPTS],
        "diversity": [{"prompt": PROMPTS[0]}],
    }


def study(**eval_settings) -> StudyConfig:
    ev = EvalConfig(batch_size=4, max_new_tokens=6, diversity_samples=3, **eval_settings)
    return StudyConfig(base_model="local", domain="math", seq_len=64, eval=ev)


def test_model_device_reads_plain_and_peft_wrapped_models(tokenizer, meta_model):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    assert model_device(wrapped) == torch.device("cpu")
    assert model_device(meta_model) == torch.device("meta")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


# ---------------------------------------------------------------- every suite on the meta device


def test_the_guard_rejects_cpu_inputs_to_a_meta_model(meta_model):
    with pytest.raises(RuntimeError, match="not on the expected device meta"), MetaDeviceGuard():
        meta_model(input_ids=torch.tensor([[1, 2, 3]]))


SUITES = {
    "loss": lambda model, tok, sets: mean_token_loss(model, sets["loss"]["english"], batch_size=4),
    "completion_nll": lambda model, tok, sets: completion_nll(model, tok, [("Shall I", " compare thee")]),
    "choice": lambda model, tok, sets: choice_loglikelihoods(model, tok, sets["choice"][:2], batch_size=3),
    "greedy": lambda model, tok, sets: generate(model, tok, PROMPTS, max_new_tokens=3, stop=["\n"]),
    "sampled": lambda model, tok, sets: generate(
        model, tok, PROMPTS, max_new_tokens=3, temperature=0.8, top_p=0.9, num_samples=2
    ),
}


@pytest.mark.parametrize("suite", SUITES)
def test_suite_puts_its_inputs_on_the_models_device(suite, meta_model, tokenizer, eval_sets):
    with MetaDeviceGuard() as guard:
        SUITES[suite](meta_model, tokenizer, eval_sets)
    assert guard.meta_ops["embedding"] >= 1  # the model really ran, on meta
    if suite == "sampled":
        assert guard.meta_ops["multinomial"] >= 1  # and sampled there


def test_every_suite_runs_on_the_models_device(meta_model, tokenizer, eval_sets):
    with MetaDeviceGuard() as guard:
        metrics = evaluate_suites(meta_model, tokenizer, study(), eval_sets)
    expected = {"english/loss", "math/loss", "english/mc_acc", "math/ref_nll", "math/strict_match"}
    assert expected | {"math/distinct_fraction"} <= set(metrics)
    assert guard.meta_ops["embedding"] >= 6 and guard.meta_ops["multinomial"] >= 1


def test_spectrum_moves_base_and_tuned_weights_to_one_device(monkeypatch):
    """Base weights on the CPU, tuned ones on the model's device: every factorisation runs on the latter."""
    monkeypatch.setattr(spectrum, "_RANDOM_SPECTRA", {})  # meta's zeros must not reach the shared cache
    torch.manual_seed(0)
    base = {"layers.0.q_proj.weight": torch.randn(12, 10), "layers.0.v_proj.weight": torch.randn(10, 12)}
    tuned = {name: torch.empty_like(w, device="meta", dtype=torch.bfloat16) for name, w in base.items()}
    factorisations = {"linalg_svd", "_linalg_svd"}
    with MetaDeviceGuard() as guard:
        result = spectrum_of_state_dicts(base, tuned)
    assert [m["name"] for m in result["matrices"]] == sorted(base)
    assert sum(guard.meta_ops[op] for op in factorisations) >= 4  # W_base and W_tuned of both matrices


# ---------------------------------------------------------------- bfloat16


def test_bfloat16_model_gives_the_float32_metrics(trained, tokenizer, eval_sets):
    """Nothing assumes float32 weights: a bf16 copy's metrics are finite and close to the fp32 model's."""
    bf16 = copy.deepcopy(trained).to(torch.bfloat16)
    full, half = (evaluate_suites(m, tokenizer, study(), eval_sets) for m in (trained, bf16))
    assert set(full) == set(half)
    assert all(math.isfinite(v) for v in half.values())
    for name in ("english/loss", "math/loss", "math/ref_nll"):
        assert half[name] == pytest.approx(full[name], rel=2e-2), name
    assert full["english/loss"] < 0.8 * math.log(len(tokenizer))  # trained: the comparison means something
    scores = choice_loglikelihoods(bf16, tokenizer, eval_sets["choice"])
    reference = choice_loglikelihoods(trained, tokenizer, eval_sets["choice"])
    for got, want in zip(scores, reference, strict=True):
        assert got == pytest.approx(want, rel=3e-2, abs=0.1)
    # Greedy decoding of the memorised sonnets survives bf16 rounding.
    greedy = [generate(m, tokenizer, PROMPTS, max_new_tokens=8) for m in (trained, bf16)]
    assert greedy[0] == greedy[1] and all(texts[0] for texts in greedy[1])


def test_bfloat16_spectrum_equals_float32_of_the_same_values():
    torch.manual_seed(0)
    base = {"layers.0.q_proj.weight": torch.randn(12, 10).bfloat16()}
    update = torch.randn(12, 2) @ torch.randn(2, 10)
    tuned = {"layers.0.q_proj.weight": (base["layers.0.q_proj.weight"].float() + update).bfloat16()}
    as_float = [{n: w.float() for n, w in sd.items()} for sd in (base, tuned)]
    half, full = spectrum_of_state_dicts(base, tuned), spectrum_of_state_dicts(*as_float)
    assert half["matrices"] == full["matrices"]
    assert half["matrices"][0]["delta_fro"] > 0
