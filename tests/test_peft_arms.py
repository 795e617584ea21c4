"""Any peft method as an arm: config grids and errors, and ΔW of every method against peft's dense merge."""

import copy

import pytest
import torch

from learnforget.config.arms import expand_arms
from learnforget.config.load import load_study
from learnforget.config.study import StudyConfig
from learnforget.errors import UserError

torch.set_num_threads(1)


def arms_of(*specs: dict):
    return expand_arms(StudyConfig.model_validate({"arms": list(specs)}))


# ---------------------------------------------------------------------------------------------------
# Config


def test_paper_lora_arms_keep_their_names_and_identities():
    # Identities of `method: lora` arms as computed before peft arms existed: results and resumes stay valid.
    arms = arms_of(
        {"method": "full", "learning_rate": 5e-4},
        {"method": "lora", "rank": [1, 4, 16], "learning_rate": 5e-3},
    )
    assert [(a.name, a.id) for a in arms] == [
        ("full-lr5e-4-s0", "1e675ace6df2"), ("lora-r1-all-lr5e-3-s0", "2ea56ea0ac7d"),
        ("lora-r4-all-lr5e-3-s0", "db8044fded61"), ("lora-r16-all-lr5e-3-s0", "7f137e2b8198"),
    ]  # fmt: skip
    assert all(a.peft is None and a.quantization is None for a in arms)


def test_peft_keywords_sweep_and_name_the_arm():
    arms = arms_of(
        {"method": "peft", "peft": {"type": "lora", "r": [8, 16], "use_dora": True}, "learning_rate": [2e-4, 1e-3]},
        {"method": "peft", "peft": {"type": "VERA", "r": 256, "d_initial": 0.2}, "learning_rate": 1e-2},
        {"method": "peft", "peft": {"type": "LoRA", "r": 4, "init_lora_weights": "pissa", "lora_alpha": 8}},
        {"method": "peft", "peft": {"type": "IA3", "target_modules": [["k_proj", "down_proj"]],
                                    "feedforward_modules": ["down_proj"]}},
    )  # fmt: skip
    names = [a.name for a in arms]
    assert names[:4] == ["dora-r8-lr2e-4-s0", "dora-r8-lr1e-3-s0", "dora-r16-lr2e-4-s0", "dora-r16-lr1e-3-s0"]
    assert names[4:] == ["vera-r256-d_initial0.2-lr1e-2-s0", "pissa-r4-a8-lr1e-3-s0",
                         "ia3-custom-lr1e-3-s0"]  # fmt: skip
    assert arms[0].peft == {"type": "LORA", "r": 8, "use_dora": True} and arms[0].rank == 8
    assert arms[6].peft["target_modules"] == ["k_proj", "down_proj"]  # a list-valued keyword, not swept
    assert len({a.id for a in arms}) == len(arms)
    # The identity covers every keyword: the same arm with another keyword value is another arm.
    other = arms_of(
        {"method": "peft", "peft": {"type": "VERA", "r": 256, "d_initial": 0.3}, "learning_rate": 1e-2}
    )
    assert other[0].id != arms[4].id


@pytest.mark.parametrize(
    "arm, expected",
    [
        ({"method": "peft", "peft": {"type": "LORAX"}}, "arms.0: peft.type: unknown peft method 'LORAX'; valid: "),
        ({"method": "peft", "peft": {"type": "LORA", "rank": 4}}, "arms.0: peft.rank: not a keyword of peft's LoraConfig; valid: "),
        ({"method": "peft", "peft": {"r": 4}}, "arms.0: peft: needs a type (one of "),
        ({"method": "peft"}, "method peft needs peft:"),
        ({"method": "lora", "peft": {"type": "LORA"}}, "peft: only for method peft"),
        ({"method": "peft", "rank": 4, "peft": {"type": "LORA"}}, "rank: for method lora"),
        ({"method": "peft", "dropout": 0.1, "peft": {"type": "LORA"}}, "lora_dropout"),
        ({"method": "full", "quantization": "4bit"}, "quantization: only for method lora or peft"),
        ({"method": "peft", "peft": {"type": "OFT", "r": 4, "oft_block_size": 4}}, "peft OFT: "),
    ],
)  # fmt: skip
def test_bad_peft_settings_are_one_line_user_errors(tmp_path, arm, expected):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"arms": [arm]}))
    with pytest.raises(UserError) as err:
        load_study(str(path))
    assert str(path) in str(err.value) and expected in str(err.value) and "\n" not in str(err.value)


def test_qlora_arm_is_refused_without_gpu_and_bitsandbytes():
    from learnforget.config.peft import check_quantization

    arms = arms_of({"method": "lora", "rank": 4, "quantization": "4bit"}, {"method": "full"})
    assert arms[0].name == "lora-r4-all-q4bit-lr1e-3-s0" and arms[1].quantization is None
    if torch.cuda.is_available():
        pytest.skip("a GPU machine runs QLoRA")
    with pytest.raises(
        UserError, match=r"arm lora-r4-all-q4bit-lr1e-3-s0: quantization 4bit \(QLoRA\) needs "
    ):
        check_quantization(arms)
    check_quantization(arms[1:])  # no quantized arm: nothing to refuse


# ---------------------------------------------------------------------------------------------------
# ΔW of every method: ours (one module at a time) against peft's merge_and_unload on a copy

METHODS = {
    "lora": {"type": "LORA", "r": 4, "lora_alpha": 8},
    "rslora": {"type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": True},
    "dora": {"type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True},
    "pissa": {"type": "LORA", "r": 4, "lora_alpha": 4, "init_lora_weights": "pissa"},
    "olora": {"type": "LORA", "r": 4, "lora_alpha": 4, "init_lora_weights": "olora"},
    "vera": {"type": "VERA", "r": 16},
    "ia3": {"type": "IA3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "loha": {"type": "LOHA", "r": 4},
    "lokr": {"type": "LOKR", "r": 4},
    "oft": {"type": "OFT", "oft_block_size": 8},
}  # fmt: skip


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=128)  # fmt: skip
    path = tmp_path_factory.mktemp("base")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def trained_arm(base_dir, settings: dict, steps: int):
    from learnforget.arms.build import load_arm_model
    from learnforget.train.loop import make_optimizer, train_steps

    (arm,) = arms_of({"method": "peft", "peft": settings, "learning_rate": 2e-2})
    torch.manual_seed(0)
    model = load_arm_model(str(base_dir), arm)
    rows = torch.randint(0, 128, (4 * max(steps, 1), 16), generator=torch.Generator().manual_seed(1))
    optimizer, scheduler = make_optimizer(model, arm.learning_rate, 0.0, 0, max(steps, 1))
    train_steps(model, optimizer, scheduler, rows, 4, 0, steps)
    return arm, model


@pytest.mark.parametrize("method", list(METHODS))
def test_delta_w_of_every_method_equals_peft_dense_merge(base_dir, method):
    from learnforget.analyse.spectrum import spectrum_of_state_dicts
    from learnforget.arms.delta import merged_weights
    from learnforget.base.load import load_causal_lm

    arm, model = trained_arm(base_dir, METHODS[method], steps=2)
    assert arm.method == method
    original = load_causal_lm(str(base_dir)).state_dict()
    ours = merged_weights(model)
    dense = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(ours) == set(dense) == set(original)
    # From a given full state dict (sharded arms pass the gathered one): the same, and the state untouched.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    from_state = merged_weights(model, state)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    changed = 0
    for name, weight in dense.items():
        torch.testing.assert_close(ours[name], weight, rtol=1e-5, atol=1e-6, msg=f"{method} {name}")
        torch.testing.assert_close(from_state[name], weight, rtol=1e-5, atol=1e-6, msg=f"{method} {name}")
        changed += weight.ndim == 2 and (ours[name] - original[name]).abs().max().item() > 1e-6
    assert changed >= 2, f"{method}: the training steps changed no weight matrix"
    result = spectrum_of_state_dicts(original, ours)
    moved = [m for m in result["matrices"] if m["delta_fro"] > 0]
    assert len(moved) == changed and all(0 < m["rank_delta"] <= min(m["shape"]) for m in moved)


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_base_rewriting_methods_measure_delta_w_from_the_original_base(base_dir, method):
    from learnforget.arms.delta import merged_weights
    from learnforget.base.load import load_causal_lm

    _, model = trained_arm(base_dir, METHODS[method], steps=0)
    residual = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    original = load_causal_lm(str(base_dir)).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert (residual - original[q]).abs().max() > 1e-2  # peft rewrote the base weights at init
    torch.testing.assert_close(merged_weights(model)[q], original[q], rtol=0, atol=1e-5)  # yet ΔW = 0


@pytest.mark.parametrize("method", ["dora", "ia3", "pissa"])
def test_saved_adapters_of_any_method_give_the_same_spectra(base_dir, tmp_path, method):
    from learnforget.analyse.spectrum import compare_checkpoints, spectrum_of_state_dicts
    from learnforget.arms.delta import merged_weights
    from learnforget.base.load import load_causal_lm
    from learnforget.study.saving import save_initial_adapter

    arm, model = trained_arm(base_dir, METHODS[method], steps=0)
    initial = save_initial_adapter(model, arm, tmp_path)
    assert (initial is not None) == (method == "pissa")
    arm, model = trained_arm(base_dir, METHODS[method], steps=2)
    # As study.save_final: PiSSA is saved converted to a plain LoRA on the original base.
    model.save_pretrained(
        tmp_path / "adapter", path_initial_model_for_weight_conversion=initial and str(initial)
    )
    expected = spectrum_of_state_dicts(load_causal_lm(str(base_dir)).state_dict(), merged_weights(model))
    found = compare_checkpoints(str(base_dir), str(tmp_path / "adapter"), progress=False)
    by_name = {m["name"]: m for m in found["matrices"]}
    moved = [m for m in expected["matrices"] if m["delta_fro"] > 0]
    assert moved
    for m in moved:
        assert by_name[m["name"]]["rank_delta"] == m["rank_delta"]
        assert by_name[m["name"]]["delta_fro"] == pytest.approx(m["delta_fro"], rel=1e-3)


def test_peft_methods_study_matches_trainable_budgets_where_the_method_allows():
    from learnforget.study.dryrun import arm_size, base_config

    study = load_study("peft-methods")
    arms = expand_arms(study)
    assert len(arms) == 32 and study.workers == 2
    by_method: dict[str, set] = {}
    for arm in arms:
        by_method.setdefault(arm.method, set()).add((arm.learning_rate, arm.seed))
    assert list(by_method) == ["full", "lora", "rslora", "dora", "pissa", "vera", "ia3", "loha"]
    assert all(len(v) == 4 for v in by_method.values())  # 2 learning rates × 2 seeds each
    config = base_config(study)
    trainable = {a.method: arm_size(config, a)[0] for a in arms}
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    matched = 8 * layers * (4 * (h + h) + 2 * (h + f) + (f + h))  # LoRA r8 on q k v o, gate up, down
    assert {m: trainable[m] for m in ("lora", "rslora", "pissa", "loha")} == dict.fromkeys(
        ("lora", "rslora", "pissa", "loha"), matched
    )
    assert trainable["dora"] == matched + layers * (5 * h + 2 * f)  # + one magnitude per output feature
    assert trainable["vera"] == layers * 7 * 256 + layers * (5 * h + 2 * f)  # r per layer + one per output
    assert trainable["ia3"] == layers * (2 * h + f)  # one vector per adapted layer: k, v outputs; down input


def test_qlora_dry_run_on_cpu_exits_with_one_line(tmp_path, capsys):
    import yaml

    from tests.conftest import cli_exit_code

    if torch.cuda.is_available():
        pytest.skip("a GPU machine runs QLoRA")
    path = tmp_path / "qlora.yaml"
    path.write_text(yaml.safe_dump({"arms": [{"method": "lora", "rank": 4, "quantization": "4bit"}]}))
    assert cli_exit_code(["run", str(path), "--dry-run"]) == 2
    assert "quantization 4bit (QLoRA) needs bitsandbytes on a CUDA GPU" in capsys.readouterr().err.replace(
        "\n", " "
    )


# ---------------------------------------------------------------------------------------------------
# Evaluation through a plain copy holding the merged weights (eval_model.py)

MERGED_EVAL_ARMS = {
    **{m: {"method": "peft", "peft": METHODS[m]} for m in ("lora", "dora", "ia3", "pissa")},
    "lora-embeddings": {"method": "lora", "rank": 4, "train_embeddings": True},
    "lora-modules_to_save": {
        "method": "peft",
        "peft": {**METHODS["lora"], "modules_to_save": ["lm_head"]},
        "train_embeddings": True,
    },  # else set_embeddings_trainable freezes the head
}


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """A tiny Llama (untied head) with the built-in tokenizer, and a small study's evaluation sets."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.base.load import SHIPPED_BASE, load_tokenizer
    from learnforget.evaluate.sets import evaluation_sets

    tokenizer = load_tokenizer(str(SHIPPED_BASE))
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=len(tokenizer), max_position_embeddings=512)  # fmt: skip
    path = tmp_path_factory.mktemp("evalbase")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    study = StudyConfig.model_validate(
        {"eval": {"loss_tokens": 1024, "choice_items": 8, "generation_problems": 4, "reference_problems": 4,
                  "diversity_prompts": 2, "diversity_samples": 3, "max_new_tokens": 16}}
    )  # fmt: skip
    return path, tokenizer, study, {"eval": evaluation_sets(study, tokenizer)}


def train_arm(path, spec: dict, steps: int, start: int = 0, model=None, optimizer=None):
    from learnforget.arms.build import load_arm_model
    from learnforget.train.loop import make_optimizer, train_steps

    (arm,) = arms_of({**spec, "learning_rate": 2e-2})
    if model is None:
        torch.manual_seed(0)
        model = load_arm_model(str(path), arm)
        optimizer = make_optimizer(model, arm.learning_rate, 0.0, 0, 8)
    rows = torch.randint(0, 500, (4 * 8, 16), generator=torch.Generator().manual_seed(1))
    loss = train_steps(model, *optimizer, rows, 4, start, start + steps)
    return arm, model, optimizer, loss


@pytest.mark.parametrize("name", list(MERGED_EVAL_ARMS))
def test_merged_copy_evaluates_like_the_adapter_model_and_leaves_it_untouched(eval_setup, name):
    from learnforget.arms.delta import merged_weights
    from learnforget.evaluate.arm_model import ArmEvaluator, evaluate_model

    path, tokenizer, study, data = eval_setup
    arm, model, _, _ = train_arm(path, MERGED_EVAL_ARMS[name], steps=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    evaluator = ArmEvaluator(model, arm, study, str(path), sharded=False)
    timings: dict[str, float] = {}
    merged = evaluator.evaluate(tokenizer, data, timings)
    assert evaluator.merge and evaluator.plain is not None and "merge" in timings  # the copy was evaluated
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # bitwise
    direct = evaluate_model(model, tokenizer, study, data)
    assert set(merged) == set(direct) and len(merged) >= 8
    for metric, value in direct.items():
        if metric.endswith(("loss", "nll")):
            assert abs(merged[metric] - value) <= 1e-5, (name, metric, merged[metric], value)
        else:
            assert merged[metric] == value, (name, metric)
    # The spectra get the weights the evaluation used (no second merge), equal to merging now.
    weights = evaluator.weights()
    assert weights.keys() == merged_weights(model).keys() == evaluator.plain.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in merged_weights(model).items())
    if name.startswith("lora-"):  # the trained embeddings / head differ from the base's and were loaded
        head = "lm_head.weight"
        assert not torch.equal(weights[head], load_causal_lm_state(path)[head])
        assert torch.equal(evaluator.plain.state_dict()[head], weights[head])


def load_causal_lm_state(path):
    from learnforget.base.load import load_causal_lm

    return load_causal_lm(str(path)).state_dict()


def test_training_goes_on_bit_for_bit_after_a_merged_evaluation(eval_setup):
    from learnforget.evaluate.arm_model import ArmEvaluator

    path, tokenizer, study, data = eval_setup
    spec = MERGED_EVAL_ARMS["lora"]
    arm, model, optimizer, _ = train_arm(path, spec, steps=2)
    ArmEvaluator(model, arm, study, str(path), sharded=False).evaluate(tokenizer, data, {})
    evaluated = train_arm(path, spec, 2, start=2, model=model, optimizer=optimizer)[3]
    _, model, optimizer, _ = train_arm(path, spec, steps=2)
    assert evaluated == train_arm(path, spec, 2, start=2, model=model, optimizer=optimizer)[3]


def test_sharded_large_or_mismatched_arms_evaluate_the_adapter_model(eval_setup, monkeypatch, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.evaluate import arm_model as eval_model
    from learnforget.evaluate.arm_model import ArmEvaluator, unmerged_reason

    path, tokenizer, study, data = eval_setup
    arm, model, _, _ = train_arm(path, MERGED_EVAL_ARMS["lora"], steps=0)
    assert unmerged_reason(model, arm, study, sharded=False) is None
    assert unmerged_reason(model, arm, study, sharded=True) == "sharded"
    assert not ArmEvaluator(model, arm, study, str(path), sharded=True).merge
    assert unmerged_reason(model.get_base_model(), arm, study, sharded=False) == "a plain model already"
    bf16 = StudyConfig.model_validate({"precision": "bf16-mixed"})
    assert unmerged_reason(model, arm, bf16, sharded=False) == "precision bf16-mixed"
    monkeypatch.setattr(eval_model, "MAX_MERGED_BYTES", 1000)
    assert unmerged_reason(model, arm, study, sharded=False) == "0.0 GiB of weights"
    evaluator = ArmEvaluator(model, arm, study, str(path), sharded=False)
    assert not evaluator.merge
    monkeypatch.undo()
    # A base whose tensors do not take the merged weights: a warning, then the adapter model as before.
    other = LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=len(tokenizer))  # fmt: skip
    LlamaForCausalLM(other).save_pretrained(tmp_path)
    evaluator = ArmEvaluator(model, arm, study, str(tmp_path), sharded=False)
    assert evaluator.merge
    metrics = evaluator.evaluate(
        tokenizer, {"eval": {"loss": data["eval"]["loss"]}}, {}
    )  # the loss suite only
    assert not evaluator.merge and evaluator.plain is None
    assert set(metrics) == {"english/loss", f"{study.domain}/loss"}


def test_a_head_trained_apart_from_its_tied_embeddings_evaluates_the_adapter_model(eval_setup, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.evaluate.arm_model import ArmEvaluator, evaluate_model

    _, tokenizer, study, data = eval_setup
    config = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                         vocab_size=len(tokenizer), tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    arm, model, _, _ = train_arm(tmp_path, MERGED_EVAL_ARMS["lora-modules_to_save"], steps=2)
    evaluator = ArmEvaluator(model, arm, study, str(tmp_path), sharded=False)
    loss_only = {"eval": {"loss": data["eval"]["loss"]}}
    metrics = evaluator.evaluate(tokenizer, loss_only, {})
    assert not evaluator.merge and metrics == evaluate_model(model, tokenizer, study, loss_only)
