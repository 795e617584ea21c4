"""Built-in recipes: every shipped YAML loads, says how to run it, and expands to the grid it promises.

The paper recipes are checked against Llama-2-7B's architecture on the meta device (no weights, no hub).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import torch

from learnforget.config.arms import expand_arms
from learnforget.config.load import BUILTIN_CONFIG_DIR, load_studies, load_study, resolve_config_path
from tests.test_study import run_cli

REPO = Path(__file__).resolve().parent.parent
STUDY_FILES = sorted(p for p in BUILTIN_CONFIG_DIR.rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE_FILES = sorted((BUILTIN_CONFIG_DIR / "accelerate").glob("*.yaml"))
PAPER = ["paper/code-cpt", "paper/math-cpt", "paper/code-ift", "paper/math-ift"]
LLAMA2_7B_PARAMS = 6_738_415_616
# LoRA adds r x (d_in + d_out) per adapted matrix; per Llama-2-7B layer, per unit of rank:
# the paper's sets: attention (q,k,v,o) and paper-mlp (up, down: its footnote leaves gate_proj out)
LORA_PER_RANK_LAYER = {"attention": 4 * (4096 + 4096), "paper-mlp": 2 * (4096 + 11008)}


def builtin_name(path: Path) -> str:
    return path.relative_to(BUILTIN_CONFIG_DIR).with_suffix("").as_posix()


def header(path: Path) -> str:
    """The leading comment block of a YAML file."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])


@pytest.mark.parametrize("path", STUDY_FILES, ids=builtin_name)
def test_study_file_loads_by_name_and_its_header_says_how_to_run_it(path):
    name = builtin_name(path)
    assert resolve_config_path(name) == path
    studies = load_studies(name)
    assert studies == load_studies(str(path))
    assert path.read_text().startswith("# ")
    assert re.search(rf"learnforget run {re.escape(name)}\b", header(path)), "header lacks the run command"
    for _, study in studies:
        arms = expand_arms(study)
        assert len({a.name for a in arms}) == len(arms) > 0


def test_shipped_file_sets_cover_the_paper_and_the_tiny_grid():
    assert {builtin_name(p) for p in STUDY_FILES} >= {"grid-tiny", *PAPER}
    assert {p.stem for p in ACCELERATE_FILES} == {"ddp", "fsdp", "deepspeed-zero3"}


def test_grid_tiny_is_full_with_regularizers_and_lora_ranks_by_targets_at_two_rates():
    study = load_study("grid-tiny")
    arms = expand_arms(study)
    full = [a for a in arms if a.method == "full"]
    lora = [a for a in arms if a.method == "lora"]
    assert len(arms) == 18 and len(full) == 6 and len(lora) == 12
    assert (
        sorted((a.weight_decay > 0, a.dropout > 0) for a in full)
        == [(False, False)] * 2 + [(False, True)] * 2 + [(True, False)] * 2
    )
    assert {(a.rank, a.target_modules) for a in lora} == {
        (r, t) for r in (4, 16) for t in ("attention", "mlp", "all")
    }
    assert all(a.alpha == 2 * a.rank for a in lora)
    full_rates, lora_rates = {a.learning_rate for a in full}, {a.learning_rate for a in lora}
    assert len(full_rates) == len(lora_rates) == 2
    assert sorted(lora_rates) == pytest.approx([10 * r for r in sorted(full_rates)])
    assert study.base_model == "builtin" and study.workers == 2
    assert study.steps * study.tokens_per_step <= 200_000  # smaller than the default study per arm


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_matches_the_papers_setting(name):
    study = load_study(name)
    arms = expand_arms(study)
    domain, regime = name.removeprefix("paper/").split("-")
    assert (study.base_model, study.domain, study.regime) == ("meta-llama/Llama-2-7b-hf", domain, regime)
    assert study.seq_len == (1024 if name == "paper/math-ift" else 4096)
    if regime == "cpt":
        assert study.budget_tokens == 20_000_000_000 and study.epochs is None
    else:
        assert study.epochs == 16 and len(study.milestone_steps()) == 16
        assert study.milestone_steps()[-1] == study.steps
    expected_data = {
        "paper/code-cpt": ("bigcode/starcoderdata", "content", None, None),
        "paper/math-cpt": ("open-web-math/open-web-math", "text", None, None),
        "paper/code-ift": ("ise-uiuc/Magicoder-Evol-Instruct-110K", None, "instruction", "response"),
        "paper/math-ift": ("meta-math/MetaMathQA", None, "query", "response"),
    }[name]
    d = study.data
    fields = (d.text_field, None, None) if regime == "cpt" else (None, d.prompt_field, d.response_field)
    assert (d.train, *fields) == expected_data

    # Arms: LionW everywhere; LoRA at r = 16, 64, 256 with alpha = 2r; LoRA's rates 10x full's.
    assert {a.optimizer for a in arms} == {"lion"} and {a.method for a in arms} == {"full", "lora"}
    lora = [a for a in arms if a.method == "lora"]
    assert {a.rank for a in lora} == {16, 64, 256} and all(a.alpha == 2 * a.rank for a in lora)
    assert not any(a.train_embeddings for a in lora)
    plain_full = [a for a in arms if a.method == "full" and not a.weight_decay and not a.dropout]
    full_rates = sorted({a.learning_rate for a in plain_full})
    for rank in (16, 64, 256):
        rates = sorted(a.learning_rate for a in lora if a.rank == rank and a.target_modules == "paper-all")
        assert rates == pytest.approx([10 * r for r in full_rates])
    if name == "paper/code-cpt":
        assert {a.target_modules for a in lora} == {"attention", "paper-mlp", "paper-all"}
    else:
        assert {a.target_modules for a in lora} == {"paper-all"}
    if name == "paper/code-ift":
        regularized = [a for a in arms if a.method == "full" and (a.weight_decay or a.dropout)]
        assert {(a.weight_decay > 0, a.dropout > 0) for a in regularized} == {(True, False), (False, True)}

    # Evaluation: the paper's forgetting suite, and its learning benchmark.
    ev = study.eval
    assert {"hellaswag", "arc_challenge", "winogrande"} <= set(ev.harness_tasks)
    assert ev.forgetting_metric == "harness/paper_forgetting"
    if domain == "code":
        assert ev.code_problems == "humaneval" and ev.generation_problems == 164
        assert ev.learning_metric == "code/pass@1"
    else:
        assert "gsm8k" in ev.harness_tasks and ev.learning_metric.startswith("harness/gsm8k/")
    # Launched as tests/test_fsdp.py launches: torchrun, every arm sharded with FSDP2.
    assert f"torchrun --nproc_per_node 8 -m learnforget run {name}\n" in header(
        BUILTIN_CONFIG_DIR / f"{name}.yaml"
    )
    assert study.sharding == "fsdp" and study.workers == 1


@pytest.mark.parametrize(
    "method, rank, targets, expected",
    [
        ("full", None, "all", LLAMA2_7B_PARAMS),
        ("lora", 16, "paper-all", 16 * 32 * sum(LORA_PER_RANK_LAYER.values())),  # 32,243,712: ~32M
        ("lora", 16, "attention", 16 * 32 * LORA_PER_RANK_LAYER["attention"]),
    ],
)
def test_trainable_parameters_of_paper_arms_on_llama2_7b(method, rank, targets, expected):
    from learnforget.study.dryrun import arm_size, base_config

    study = load_study("paper/code-cpt")
    arm = next(
        a for a in expand_arms(study) if (a.method, a.rank, a.target_modules) == (method, rank, targets)
    )
    torch.set_num_threads(1)
    trainable, total = arm_size(base_config(study), arm)
    assert trainable == expected
    assert total == LLAMA2_7B_PARAMS + (trainable if method == "lora" else 0)
    if method == "lora" and targets == "paper-all":
        assert 32e6 < trainable < 33e6


def test_paper_recipe_dry_runs_through_the_cli(capsys):
    torch.set_num_threads(1)
    one_arm = "arms=[{method: lora, rank: 16, learning_rate: 2.0e-4, optimizer: lion}]"
    code, out, err = run_cli(["run", "paper/code-ift", "--dry-run", "--set", one_arm], capsys)
    assert code == 0, err
    assert "lora-r16-all-lr2e-4-lion-s0" in out and "39,976,960" in out
    # An epoch of 110,000 pairs ends with 176 rows: too few for 256 processes to take one each.
    code, out, err = run_cli(
        ["run", "paper/code-ift", "--dry-run", "--world-size", "256", "--set", one_arm], capsys
    )
    assert code == 2 and "each epoch ends with a batch of 176 rows, fewer than the 256 processes" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER)
def test_every_paper_arm_dry_runs(name, capsys):
    torch.set_num_threads(1)
    code, out, err = run_cli(["run", name, "--dry-run"], capsys)
    assert code == 0, err
    for arm in expand_arms(load_study(name)):
        assert arm.name in out


@pytest.mark.parametrize("path", ACCELERATE_FILES, ids=lambda p: p.stem)
def test_accelerate_config_is_valid_for_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))  # refuses unknown keys
    assert config.mixed_precision == "bf16" and config.num_processes >= 1
    assert f"accelerate launch --config_file configs/accelerate/{path.name} -m learnforget run" in header(
        path
    )
    # Only DDP's launch is tested (tests/test_distributed.py); the others say plainly that they are not.
    assert header(path).startswith("# UNTESTED") == (path.stem != "ddp")
    kind = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero3": "DEEPSPEED"}[path.stem]
    assert config.distributed_type.value == kind
    if path.stem == "fsdp":
        from transformers.models.llama import modeling_llama

        fsdp = config.fsdp_config
        assert fsdp["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
        assert hasattr(modeling_llama, fsdp["fsdp_transformer_layer_cls_to_wrap"])
    if path.stem == "deepspeed-zero3":
        assert config.deepspeed_config["zero_stage"] == 3


def test_recipes_ship_with_the_package_and_the_repo_links_them():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["learnforget"]
    package = BUILTIN_CONFIG_DIR.parent
    shipped = {p for pattern in patterns for p in package.glob(pattern)}
    assert set(BUILTIN_CONFIG_DIR.rglob("*.yaml")) <= shipped
    assert (REPO / "configs").resolve() == BUILTIN_CONFIG_DIR.resolve()
