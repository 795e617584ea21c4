"""Config loading: defaults, grids, overrides and one-line errors for user mistakes."""

import pytest

from learnforget.config import StudyConfig, expand_arms, load_study
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
