"""lm-eval integration: a local multiple-choice task on a tiny Llama, checked against our own log-likelihoods."""

import contextlib
import copy
import functools
import json
import os
import random

# No network here: hub look-ups must fail at once instead of retrying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import pytest
import torch

pytest.importorskip("lm_eval")

from learnforget.config.metrics import higher_is_better
from learnforget.config.study import EvalConfig, StudyConfig
from learnforget.errors import UserError
from learnforget.evaluate import suites
from learnforget.evaluate.harness import (
    PAPER_FORGETTING_TASKS,
    flatten_directions,
    flatten_results,
    paper_forgetting_score,
    run_harness,
)

DOCS = [
    {"question": "the cat sat on the", "choices": ["mat", "big red dog", "sky"], "label": 0},
    {"question": "two plus two is", "choices": ["four", "a tree"], "label": 0},
    {"question": "water is", "choices": ["dry sand", "wet"], "label": 1},
    {"question": "the sun is", "choices": ["cold and dark", "hot", "a fish"], "label": 1},
    {"question": "birds can", "choices": ["fly", "read books"], "label": 0},
    {"question": "ice is", "choices": ["hot soup", "very cold", "a cat"], "label": 1},
]

TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Force offline mode even if datasets was imported before the env vars were set."""
    import datasets
    import huggingface_hub.constants

    torch.set_num_threads(1)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
    """A random 2-layer Llama and a word-level tokenizer over the task's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [d["question"] for d in DOCS] + [c for d in DOCS for c in d["choices"]]
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config), tokenizer


@pytest.fixture
def task_dir(tmp_path):
    """A directory holding the tiny_mc task YAML over a local JSON-lines file."""
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_mc.yaml").write_text(
        TASK_YAML.format(data=data, cache=tmp_path / "cache"), encoding="utf-8"
    )
    return tasks


def our_accuracies(model, tokenizer, docs):
    """acc and acc_norm computed directly: sum of log p(choice tokens | question tokens) per choice."""
    hits, hits_norm = [], []
    with torch.no_grad():
        for doc in docs:
            context = tokenizer(doc["question"], add_special_tokens=False)["input_ids"]
            scores = []
            for choice in doc["choices"]:
                continuation = tokenizer(choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([context + continuation])
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
                positions = range(len(context) - 1, len(context) + len(continuation) - 1)
                scores.append(
                    sum(logprobs[p, t].item() for p, t in zip(positions, continuation, strict=True))
                )
            normalized = [s / len(c) for s, c in zip(scores, doc["choices"], strict=True)]
            hits.append(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
            hits_norm.append(max(range(len(normalized)), key=normalized.__getitem__) == doc["label"])
    return sum(hits) / len(hits), sum(hits_norm) / len(hits_norm)


def test_local_task_matches_our_own_loglikelihoods(tiny_model_and_tokenizer, task_dir):
    model, tokenizer = tiny_model_and_tokenizer
    model.train()  # run_harness must hand the model and the random generators back as it found them
    torch.manual_seed(7)
    random.seed(7)
    metrics = run_harness(
        model, tokenizer, ["tiny_mc"], batch_size=4, include_path=str(task_dir), include_builtin_tasks=False
    )
    assert model.training
    after, python_after = torch.rand(3), random.random()
    torch.manual_seed(7)
    random.seed(7)
    assert torch.equal(after, torch.rand(3)) and python_after == random.random()
    assert set(metrics) == {"tiny_mc/acc", "tiny_mc/acc_norm"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    model.eval()
    acc, acc_norm = our_accuracies(model, tokenizer, DOCS)
    assert metrics["tiny_mc/acc"] == pytest.approx(acc)
    assert metrics["tiny_mc/acc_norm"] == pytest.approx(acc_norm)

    limited = run_harness(
        model,
        tokenizer,
        ["tiny_mc"],
        limit=3,
        include_path=str(task_dir),
        include_builtin_tasks=False,
        device="cpu",
    )
    assert limited["tiny_mc/acc"] == pytest.approx(our_accuracies(model, tokenizer, DOCS[:3])[0])


def test_runs_on_the_models_device(tiny_model_and_tokenizer, task_dir, monkeypatch):
    from tests.device_guard import MetaDeviceGuard

    model, tokenizer = tiny_model_and_tokenizer
    # lm-eval wraps each forward in torch.autocast(device_type=<model's device>, enabled=False), which
    # meta does not support even when disabled; a GPU does.
    autocast = torch.autocast
    monkeypatch.setattr(
        torch,
        "autocast",
        lambda device_type, **kw: (
            contextlib.nullcontext() if device_type == "meta" else autocast(device_type, **kw)
        ),
    )
    meta_model = copy.deepcopy(model).to("meta")
    with MetaDeviceGuard() as guard:  # fails on any op mixing meta with CPU tensors
        metrics = run_harness(
            meta_model, tokenizer, ["tiny_mc"], batch_size=4, include_path=str(task_dir),
            include_builtin_tasks=False,
        )  # fmt: skip
    assert set(metrics) == {"tiny_mc/acc", "tiny_mc/acc_norm"}
    assert guard.meta_ops["embedding"] >= 1


def test_bfloat16_model_is_scored_in_float32(tiny_model_and_tokenizer, task_dir, monkeypatch):
    model, tokenizer = tiny_model_and_tokenizer
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    log_softmax, seen = torch.nn.functional.log_softmax, []

    def spy(logits, *args, **kwargs):
        out = log_softmax(logits, *args, **kwargs)
        seen.append((logits.dtype, out.dtype))
        return out

    monkeypatch.setattr(torch.nn.functional, "log_softmax", spy)
    metrics = run_harness(
        bf16, tokenizer, ["tiny_mc"], batch_size=4, include_path=str(task_dir), include_builtin_tasks=False
    )
    assert seen and all(pair == (torch.bfloat16, torch.float32) for pair in seen)
    acc, acc_norm = our_accuracies(bf16, tokenizer, DOCS)
    assert metrics == pytest.approx({"tiny_mc/acc": acc, "tiny_mc/acc_norm": acc_norm})


def test_unknown_task_is_a_user_error(tiny_model_and_tokenizer, task_dir):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(UserError, match="unknown lm-eval task.*no_such_task"):
        run_harness(
            model, tokenizer, ["no_such_task"], include_path=str(task_dir), include_builtin_tasks=False
        )
    with pytest.raises(UserError, match="include_path must be a directory"):
        run_harness(model, tokenizer, ["tiny_mc"], include_path=str(task_dir / "nope"))


def test_unreachable_hub_dataset_is_a_user_error(tiny_model_and_tokenizer, tmp_path):
    model, tokenizer = tiny_model_and_tokenizer
    yaml = TASK_YAML.replace("dataset_path: json", "dataset_path: no-such-org/no-such-data")
    (tmp_path / "hub_mc.yaml").write_text(
        yaml.format(data="unused.jsonl", cache=tmp_path / "cache").replace("tiny_mc", "hub_mc"),
        encoding="utf-8",
    )
    with pytest.raises(UserError, match="could not be fetched.*HF_DATASETS_OFFLINE.*include_path"):
        run_harness(model, tokenizer, ["hub_mc"], include_path=str(tmp_path), include_builtin_tasks=False)


@pytest.mark.slow  # indexing lm-eval's ~15k built-in tasks takes 10-20 s
def test_builtin_paper_task_without_network_is_a_user_error(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    with pytest.raises(UserError, match="could not be fetched.*ai2_arc"):
        run_harness(model, tokenizer, ["arc_challenge"], limit=2)


# lm-eval's results entry of a filtered task: the metric named with its filter, a stderr that is text.
GSM8K_RESULT = {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}


def test_flatten_results_names_filtered_metrics():
    results = {
        "results": {
            "gsm8k": {**GSM8K_RESULT, "exact_match,flexible-extract": 0.5},
            "winogrande": {
                "alias": "winogrande",
                "sample_len": 1267,
                "acc,none": 0.75,
                "acc_stderr,none": 0.01,
            },
        }
    }
    assert flatten_results(results) == {
        "gsm8k/exact_match,strict-match": 0.25,
        "gsm8k/exact_match,flexible-extract": 0.5,
        "winogrande/acc": 0.75,
    }


def low_task_dir(tmp_path):
    """A task directory holding tiny_low: tiny_mc whose task declares acc lower-is-better, against its name."""
    data = tmp_path / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    tasks = tmp_path / "low_tasks"
    tasks.mkdir()
    yaml = TASK_YAML.replace("task: tiny_mc", "task: tiny_low").replace(
        "higher_is_better: true", "higher_is_better: false", 1
    )
    (tasks / "tiny_low.yaml").write_text(yaml.format(data=data, cache=tmp_path / "cache"), encoding="utf-8")
    return tasks


def test_the_recorded_direction_of_a_harness_metric_is_lm_evals_own(
    tiny_model_and_tokenizer, tmp_path, monkeypatch
):
    """A task that declares `acc` lower-is-better is recorded so, where a guess from the name says higher."""
    model, tokenizer = tiny_model_and_tokenizer
    tasks = low_task_dir(tmp_path)
    directions: dict[str, bool] = {}
    metrics = run_harness(
        model, tokenizer, ["tiny_low"], batch_size=4, include_path=str(tasks), include_builtin_tasks=False,
        directions=directions,
    )  # fmt: skip
    assert directions == {"tiny_low/acc": False, "tiny_low/acc_norm": True} and set(directions) == set(
        metrics
    )

    # Through the suites, keyed like the metrics they record; the registry then takes lm-eval's word.
    local_only = functools.partial(run_harness, include_builtin_tasks=False)  # skip indexing ~15k tasks
    monkeypatch.setattr(suites, "run_harness", local_only)
    ev = EvalConfig(batch_size=4, harness_tasks=["tiny_low"], harness_include_path=str(tasks))
    study = StudyConfig(base_model="local", domain="math", seq_len=64, eval=ev)
    recorded: dict[str, bool] = {}
    values = suites.evaluate_suites(model, tokenizer, study, {"loss": {}}, directions=recorded)
    assert values == {f"harness/{name}": value for name, value in metrics.items()}
    assert recorded == {"harness/tiny_low/acc": False, "harness/tiny_low/acc_norm": True}
    assert higher_is_better("harness/tiny_low/acc")  # the name-based guess, without lm-eval's word
    assert not higher_is_better("harness/tiny_low/acc", recorded)


def test_flatten_directions_names_them_as_flatten_results_does():
    results = {
        "results": {
            "gsm8k": GSM8K_RESULT,
            "wikitext": {"word_perplexity,none": 30.5, "bits_per_byte,none": 1.1},
            "mixed": {"acc,none": 0.5},
        },
        "higher_is_better": {
            "gsm8k": {"exact_match": True},
            "wikitext": {"word_perplexity": False, "bits_per_byte": False},
            "mixed": {"acc": None},  # a group whose tasks disagree: no direction
        },
    }
    assert flatten_directions(results) == {
        "gsm8k/exact_match,strict-match": True,
        "wikitext/word_perplexity": False,
        "wikitext/bits_per_byte": False,
    }
    assert set(flatten_directions(results)) <= set(flatten_results(results))


def test_paper_forgetting_score_averages_the_three_benchmarks():
    metrics = {"hellaswag/acc_norm": 0.76, "hellaswag/acc": 0.57, "arc_challenge/acc_norm": 0.46}
    metrics["winogrande/acc"] = 0.69
    assert paper_forgetting_score(metrics) == pytest.approx((0.76 + 0.46 + 0.69) / 3)
    assert PAPER_FORGETTING_TASKS == ("hellaswag", "arc_challenge", "winogrande")
    del metrics["winogrande/acc"]
    with pytest.raises(UserError, match="needs winogrande/acc"):
        paper_forgetting_score(metrics)


def test_evaluate_command_runs_lm_eval_tasks_by_name(tiny_model_and_tokenizer, task_dir, tmp_path):
    """`learnforget evaluate MODEL --tasks T --include-path P` gives the harness's own numbers."""
    import sys

    from learnforget.cli import main

    model, tokenizer = tiny_model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    expected = run_harness(
        model, tokenizer, ["tiny_mc"], include_path=str(task_dir), include_builtin_tasks=False
    )
    argv, sys.argv = sys.argv, ["learnforget", "evaluate", str(tmp_path / "model"), "--tasks", "tiny_mc",
                                "--include-path", str(task_dir), "--json", str(tmp_path / "m.json")]  # fmt: skip
    try:
        main()
    except SystemExit as e:
        assert not e.code
    finally:
        sys.argv = argv
    got = json.loads((tmp_path / "m.json").read_text())
    assert got == pytest.approx(expected) and set(got) == {"tiny_mc/acc", "tiny_mc/acc_norm"}
