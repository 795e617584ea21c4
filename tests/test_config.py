"""Config loading: defaults, grids, overrides and one-line errors for user mistakes."""

import pytest

from learnforget.config.arms import expand_arms
from learnforget.config.load import load_study
from learnforget.config.study import StudyConfig
from learnforget.errors import UserError


def test_default_study_needs_no_file_and_expands_full_plus_three_lora_ranks():
    study = load_study(None)
    arms = expand_arms(study)
    assert [a.method for a in arms] == ["full", "lora", "lora", "lora"]
    assert [a.rank for a in arms[1:]] == [1, 4, 16]
    assert all(a.alpha == 2 * a.rank for a in arms[1:])
    assert arms[0].train_embeddings and not any(a.train_embeddings for a in arms[1:])
    lora_lr, full_lr = arms[1].learning_rate, arms[0].learning_rate
    assert lora_lr == pytest.approx(10 * full_lr)
    assert study.milestones >= 5 and study.milestone_steps()[-1] == study.steps


def test_grid_is_cartesian_product_with_readable_unique_names():
    study = StudyConfig.model_validate(
        {"arms": [{"method": "lora", "rank": [2, 8], "target_modules": ["attention", "mlp", "all"],
                   "learning_rate": [1e-3, 3e-3]}, {"method": "full", "weight_decay": [0, 0.1], "seed": [0, 1]}]}
    )  # fmt: skip
    names = [a.name for a in expand_arms(study)]
    assert len(names) == len(set(names)) == 2 * 3 * 2 + 2 * 2
    assert "lora-r8-mlp-lr3e-3-s0" in names and "full-lr1e-3-wd0.1-s1" in names


def test_overrides_reach_nested_keys_and_list_items():
    study = load_study(None, ["budget_tokens=4096", "arms.1.rank=[2]", "base.hidden_size=64"])
    assert study.budget_tokens == 4096 and study.base.hidden_size == 64
    assert [a.rank for a in expand_arms(study) if a.method == "lora"] == [2]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("budget_tokns: 5\n", "budget_tokns: unknown key"),
        ("budget_tokens: lots\n", "budget_tokens: Input should be a valid integer"),
        ("arms:\n  - method: ful\n", "arms.0.method"),
        ("arms: [\n", "invalid YAML"),
    ],
)
def test_bad_config_gives_one_line_naming_the_file_and_key(tmp_path, text, expected):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load_study(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_override_are_user_errors():
    with pytest.raises(UserError, match="no-such.yaml: no such config file"):
        load_study("no-such.yaml")
    with pytest.raises(UserError, match="expected key=value"):
        load_study(None, ["budget_tokens"])
    with pytest.raises(UserError, match="unknown key"):
        load_study(None, ["nope=1"])


def test_arms_are_identified_by_all_their_settings_and_names_never_collide():
    study = load_study(None, ["arms=[{method: full, learning_rate: [1e-3, 1.4e-3]}]"])
    arms = expand_arms(study)
    assert [a.name for a in arms] == ["full-lr1e-3-s0", "full-lr1.4e-3-s0"]
    with pytest.raises(UserError, match="arm full-lr1e-3-s0 is given twice"):  # 0.001 is 1e-3: one arm
        load_study(None, ["arms=[{method: full, learning_rate: [1e-3, 1.4e-3, 0.001]}]"])
    assert len({a.id for a in arms}) == 2 and all(len(a.id) == 12 for a in arms)
    # The id hashes the settings, not the name: the same settings give the same id in any grid.
    again = expand_arms(load_study(None, ["arms=[{method: full, learning_rate: 1.4e-3, seed: [1, 0]}]"]))
    assert again[1].id == arms[1].id and again[0].id != arms[1].id
    # Names of plain values are as they always were.
    names = [a.name for a in expand_arms(load_study(None, ["arms.0.weight_decay=[0, 1, 0.1234567]"]))]
    assert names[:3] == ["full-lr2e-4-s0", "full-lr2e-4-wd1-s0", "full-lr2e-4-wd0.1234567-s0"]
    assert "lora-r16-all-lr2e-3-s0" in names
    lora = expand_arms(load_study(None, ["arms.1.learning_rate=[1.23456789e-3, 1.23456788e-3]"]))
    assert len({a.name for a in lora}) == len(lora) == 7


@pytest.mark.parametrize(
    "override, expected",
    [
        ("arms.1.rank=0", "arms.1: rank must be at least 1"),
        ("arms.1.rank=[4, -1]", "rank must be at least 1"),
        ("arms.0.learning_rate=-1e-3", "learning_rate must be a number in (0, 10]"),
        ("arms.0.learning_rate=0", "learning_rate must be a number in (0, 10]"),
        ("arms.0.learning_rate=.nan", "finite number"),
        ("arms.0.weight_decay=-0.1", "weight_decay must be a number ≥ 0"),
        ("arms.0.dropout=1", "dropout must be in [0, 1)"),
        ("arms.1.alpha=0", "alpha must be a positive number"),
        ("base.hidden_size=36", "head width hidden_size/num_heads = 9 is odd"),
        ("base.hidden_size=130", "not divisible by num_heads"),
        ("budget_tokens=1", "budget_tokens 1 is less than one step's tokens (batch_size × seq_len = 2048)"),
        ("budget_tokens=99999999999999999999999", "budget_tokens: Input should be less than or equal"),
        ("eval.pass_k=[10]", "eval.pass_k: k = 10 needs 10 samples per problem, but 5 are drawn"),
        ("eval.learning_metric=code/pass@10", "eval.learning_metric 'code/pass@10' is not a metric"),
        ("eval.forgetting_metric=english/acc", "choose one of code/distinct_fraction, code/loss"),
        ("arms.0.seed=-1", "seed must be in [0, 2^63)"),
    ],
)
def test_values_that_would_train_nonsense_are_refused_in_one_line(override, expected):
    with pytest.raises(UserError) as err:
        load_study(None, ["domain=code", override])
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert len(str(err.value)) < 400, "the message must not dump the whole config"


def test_valid_metric_names_and_pass_k_within_the_samples_are_accepted():
    study = load_study(
        None, ["domain=code", "eval.pass_k=[1, 5]", "eval.learning_metric=code/sampled_pass@5"]
    )
    assert study.eval.learning_metric == "code/sampled_pass@5"
    harness = load_study(
        None, ["eval.harness_tasks=[hellaswag]", "eval.forgetting_metric=harness/paper_forgetting"]
    )
    assert harness.eval.forgetting_metric == "harness/paper_forgetting"


def test_a_binary_file_or_a_directory_as_config_is_one_line(tmp_path):
    binary = tmp_path / "study.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(UserError, match="study.yaml: not a UTF-8 text file"):
        load_study(str(binary))
    with pytest.raises(UserError, match="not a regular file"):
        load_study(str(tmp_path))
