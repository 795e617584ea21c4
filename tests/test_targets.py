"""LoRA targets on nine architectures: the groups resolved from each model's structure adapt exactly the
modules listed here by hand, with the trainable count r x (in + out) summed over them; explicit module
sets; one-line errors before any work; full finetuning's attention dropout on GPT-2."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    FalconConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PretrainedConfig,
    Qwen2Config,
)

from learnforget.arms.build import count_parameters, load_arm_model, prepare_arm
from learnforget.arms.targets import dropout_overrides, resolve_targets
from learnforget.config.arms import Arm, expand_arms
from learnforget.config.load import load_study
from learnforget.config.study import StudyConfig
from learnforget.errors import UserError
from learnforget.study.dryrun import arm_size
from learnforget.train.loop import make_optimizer, train_steps
from tests.test_study import run_cli

RANK = 4
SMALL = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=2, hidden_size=32)
LLAMA_LIKE = dict(SMALL, num_key_value_heads=1, intermediate_size=48)
LLAMA_ATTENTION = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
LLAMA_MLP = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
LLAMA_PAPER_MLP = ["mlp.up_proj", "mlp.down_proj"]

# architecture: (config, block list, attention, mlp, paper-mlp or None where refused), written out by hand.
ARCHITECTURES = {
    "llama": (LlamaConfig(**LLAMA_LIKE), "model.layers", LLAMA_ATTENTION, LLAMA_MLP, LLAMA_PAPER_MLP),
    "mistral": (MistralConfig(**LLAMA_LIKE), "model.layers", LLAMA_ATTENTION, LLAMA_MLP, LLAMA_PAPER_MLP),
    "qwen2": (Qwen2Config(**LLAMA_LIKE), "model.layers", LLAMA_ATTENTION, LLAMA_MLP, LLAMA_PAPER_MLP),
    "gemma": (GemmaConfig(**LLAMA_LIKE, head_dim=16), "model.layers", LLAMA_ATTENTION, LLAMA_MLP, LLAMA_PAPER_MLP),
    "gpt2": (
        GPT2Config(vocab_size=64, n_layer=2, n_head=2, n_embd=32, n_positions=64, bos_token_id=0, eos_token_id=0),
        "transformer.h", ["attn.c_attn", "attn.c_proj"], ["mlp.c_fc", "mlp.c_proj"], ["mlp.c_fc", "mlp.c_proj"],
    ),
    "gpt-neox": (
        GPTNeoXConfig(**SMALL, intermediate_size=48), "gpt_neox.layers",
        ["attention.query_key_value", "attention.dense"], ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
        ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    ),
    "phi3": (
        Phi3Config(**LLAMA_LIKE, pad_token_id=0, bos_token_id=1, eos_token_id=2), "model.layers",
        ["self_attn.o_proj", "self_attn.qkv_proj"], ["mlp.gate_up_proj", "mlp.down_proj"], None,
    ),
    "opt": (
        OPTConfig(**SMALL, ffn_dim=48, word_embed_proj_dim=32, max_position_embeddings=64), "model.decoder.layers",
        ["self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj"], ["fc1", "fc2"],
        ["fc1", "fc2"],
    ),
    "falcon": (
        FalconConfig(**SMALL, bos_token_id=0, eos_token_id=0), "transformer.h",
        ["self_attention.query_key_value", "self_attention.dense"], ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
        ["mlp.dense_h_to_4h", "mlp.dense_4h_to_h"],
    ),
}  # fmt: skip
GROUPS = ["attention", "mlp", "all", "paper-mlp", "paper-all"]


def expected_suffixes(arch: str, group: str) -> list[str] | None:
    _, _, attention, mlp, paper_mlp = ARCHITECTURES[arch]
    if group.startswith("paper") and paper_mlp is None:
        return None
    parts = {"attention": attention, "mlp": mlp, "all": attention + mlp}
    return parts.get(group) or (paper_mlp if group == "paper-mlp" else attention + paper_mlp)


def lora_arm(target: str, rank: int = RANK) -> Arm:
    return Arm(name="a", method="lora", rank=rank, alpha=2 * rank, target_modules=target, learning_rate=1e-3,
               weight_decay=0.0, dropout=0.0, train_embeddings=False, optimizer="adamw", seed=0)  # fmt: skip


def full_arm(dropout: float) -> Arm:
    return Arm(name="f", method="full", rank=None, alpha=None, target_modules="all", learning_rate=1e-3,
               weight_decay=0.0, dropout=dropout, train_embeddings=True, optimizer="adamw", seed=0)  # fmt: skip


def tiny(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(ARCHITECTURES[arch][0])


def independent_count(model: nn.Module, arch: str, suffixes: list[str]) -> tuple[set[str], int]:
    """Full names of the hand-listed modules in every layer, and r x (in + out) summed over their weights."""
    layers = ARCHITECTURES[arch][0].num_hidden_layers
    names = {f"{ARCHITECTURES[arch][1]}.{i}.{s}" for i in range(layers) for s in suffixes}
    return names, sum(RANK * sum(model.get_submodule(n).weight.shape) for n in names)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_group_adapts_the_hand_listed_modules_with_their_lora_parameter_count(arch, group):
    model = tiny(arch)
    suffixes = expected_suffixes(arch, group)
    if suffixes is None:  # Phi-3's gate_up_proj holds the gate: the paper's sets are refused, not faked
        with pytest.raises(UserError, match="gate_up_proj fuses the MLP's gate and up"):
            prepare_arm(model, lora_arm(group))
        return
    names, expected = independent_count(model, arch, suffixes)
    wrapped = prepare_arm(model, lora_arm(group))
    adapted = {
        n.removeprefix("base_model.model.") for n, m in wrapped.named_modules() if isinstance(m, LoraLayer)
    }
    assert adapted == names
    assert count_parameters(wrapped)[0] == expected > 0


@pytest.mark.parametrize("arch", ["gpt2", "phi3"])
def test_dry_run_counts_the_same_parameters_on_the_meta_device(arch):
    config = ARCHITECTURES[arch][0]
    total = sum(p.numel() for p in tiny(arch).parameters())
    for group in ("attention", "all"):
        _, expected = independent_count(tiny(arch), arch, expected_suffixes(arch, group))
        assert arm_size(config, lora_arm(group)) == (expected, total + expected)
    assert arm_size(config, full_arm(0.1)) == (total, total)


def test_explicit_modules_in_the_config_become_one_arm_that_adapts_just_them():
    study = StudyConfig.model_validate(
        {
            "arms": [
                {
                    "method": "lora",
                    "rank": RANK,
                    "target_modules": ["attention", {"modules": ["q_proj", "v_proj"]}],
                }
            ]
        }
    )
    arms = expand_arms(study)
    assert [a.target_modules for a in arms] == ["attention", "q_proj+v_proj"]
    assert arms[1].name == "lora-r4-q_proj+v_proj-lr1e-3-s0"
    model = tiny("llama")
    _, expected = independent_count(model, "llama", ["self_attn.q_proj", "self_attn.v_proj"])
    assert count_parameters(prepare_arm(model, arms[1]))[0] == expected
    # A path suffix picks one of GPT-2's two c_proj layers.
    assert resolve_targets(tiny("gpt2"), "attn.c_proj") == [
        "transformer.h.0.attn.c_proj",
        "transformer.h.1.attn.c_proj",
    ]


def test_a_misspelt_group_or_unknown_module_is_a_one_line_error():
    for targets, message in [
        (
            "atention",
            "'atention' is not a group (all, attention, mlp, paper-all, paper-mlp); explicit modules go",
        ),
        (
            "{modules: [attention]}",
            "'attention' is not a module name (a group goes as target_modules: attention)",
        ),
        ("{module: [q_proj]}", "explicit modules go as {modules: [name, ...]}"),
    ]:
        with pytest.raises(UserError, match=re.escape(message)):
            load_study(None, [f"arms=[{{method: lora, target_modules: {targets}}}]"])
    with pytest.raises(UserError) as err:
        resolve_targets(tiny("gpt2"), "q_proj+c_fc")
    message = str(err.value)
    assert "\n" not in message and "q_proj" in message
    assert message.endswith("(found: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = nn.Linear(8, 8)  # no attention submodule, no MLP beside it


class Unusual(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(8, 4)


def test_groups_that_the_structure_cannot_resolve_are_a_one_line_error_listing_the_modules():
    for group in ("attention", "all", "paper-all"):
        with pytest.raises(UserError, match=r"no linear modules found .* \(linear modules: mixer, head\)"):
            resolve_targets(Unusual(), group)
    assert resolve_targets(Unusual(), "mixer") == ["blocks.0.mixer", "blocks.1.mixer"]
    with pytest.raises(UserError, match="no list of decoder blocks"):
        resolve_targets(nn.Sequential(nn.Linear(2, 2)), "all")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny GPT-2 and Phi-3 as model directories (the path `run` and `load_arm_model` take)."""
    root = tmp_path_factory.mktemp("bases")
    for arch in ("gpt2", "phi3"):
        tiny(arch).save_pretrained(root / arch)
    return root


def test_full_finetuning_dropout_on_gpt2_sets_attn_pdrop_and_trains(saved):
    model = load_arm_model(str(saved / "gpt2"), full_arm(0.2))
    assert model.config.attn_pdrop == 0.2 and model.transformer.h[0].attn.attn_dropout.p == 0.2
    # GPT-2 ships 0.1 residual and embedding dropout: off, so arms differ only in what they set.
    assert model.config.resid_pdrop == model.config.embd_pdrop == 0.0
    before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    optimizer, scheduler = make_optimizer(model, 1e-3, 0.0, 0, 1)
    loss = train_steps(model, optimizer, scheduler, torch.randint(0, 64, (2, 16)), 2, 0, 1)
    assert 3.0 < loss < 5.0  # about ln(64) at initialisation
    assert not torch.equal(before, model.transformer.h[0].attn.c_attn.weight)
    lora = load_arm_model(str(saved / "gpt2"), lora_arm("all"))
    assert lora.config.attn_pdrop == lora.config.resid_pdrop == 0.0


def test_full_dropout_without_an_attention_dropout_key_is_a_one_line_error():
    with pytest.raises(UserError, match="PreTrainedConfig has no attention-dropout key"):
        dropout_overrides(PretrainedConfig(), True, 0.1)
    assert dropout_overrides(PretrainedConfig(), True, 0.0) == {}


@pytest.mark.parametrize(
    "arch, target, expected",
    [
        (
            "gpt2",
            "{modules: [q_proj]}",
            "no such linear module in the blocks of GPT2LMHeadModel (found: attn.c_attn",
        ),
        ("phi3", "paper-all", "gate_up_proj fuses the MLP's gate and up projections"),
    ],
)
def test_run_and_dry_run_refuse_unresolvable_targets_before_any_work(
    saved, tmp_path, capsys, arch, target, expected
):
    arms = f"arms=[{{method: lora, rank: 2, target_modules: {target}}}]"
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(saved / arch), "budget_tokens": 1024, "seq_len": 16}))
    for extra in (["--dry-run"], ["--out", str(tmp_path / "out")]):
        code, out, err = run_cli(["run", str(config), "--set", arms, *extra], capsys)
        assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
