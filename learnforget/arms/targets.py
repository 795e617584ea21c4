"""Which layers an arm adapts, read from the model's own structure (any decoder-only architecture).

- `decoder_blocks`: the repeated transformer blocks (the ModuleList that holds most of the weights).
- `block_linears`: per block, the linear-like modules (`nn.Linear`, transformers' `Conv1D`) under the
  attention submodule vs the rest of the block (the MLP); embeddings and the LM head lie outside.
- `resolve_targets`: an arm's `target_modules` as the full module names peft adapts.
- `dropout_overrides`: config keys that give full finetuning its attention dropout on this architecture.

Groups: 'attention', 'mlp', 'all' (both), and the paper's sets 'paper-mlp' (the MLP without its gate,
i.e. up and down projections) and 'paper-all' (attention + paper-mlp). An explicit set is a
'+'-joined list of module-name suffixes, e.g. 'q_proj+v_proj' or 'attn.c_proj'.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from learnforget.config.arms import TargetGroup
from learnforget.config.methods import MODULE_SEPARATOR, Full
from learnforget.config.peft import check_quantization
from learnforget.errors import UserError

GROUPS = TargetGroup.__args__
# A block's child whose name or class says attention (self_attn, attn, attention, self_attention, ...).
ATTENTION_NAME = re.compile(r"attn|attention", re.IGNORECASE)
# Config keys of attention-probability dropout (attention_dropout, attn_pdrop, attention_probs_dropout_prob).
ATTENTION_DROPOUT_KEY = re.compile(r"(attn|attention).*drop", re.IGNORECASE)


def is_linear(module: nn.Module) -> bool:
    """A layer peft's LoRA can wrap as a dense matrix (Conv1D is GPT-2's transposed Linear)."""
    return isinstance(module, nn.Linear | Conv1D)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a linear-like module."""
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the repeated decoder blocks: the ModuleList holding the most parameters
    (nested lists, e.g. of experts, hold fewer than the list of blocks that contains them)."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module):
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (name, module), size
    if best is None:
        raise UserError(
            f"{type(model).__name__}: no list of decoder blocks (nn.ModuleList) found, so LoRA target groups "
            f"cannot be resolved; linear modules: {_listing(model)}"
        )
    return best


def block_linears(model: nn.Module) -> list[dict[str, list[str]]]:
    """Per decoder block, {'attention': [...], 'mlp': [...]}: full names of its linear modules in model
    order; those under a child named (or typed) attention are attention, the rest of the block is MLP."""
    prefix, blocks = decoder_blocks(model)
    found = []
    for index, block in enumerate(blocks):
        attention = {
            name
            for name, child in block.named_children()
            if ATTENTION_NAME.search(name + type(child).__name__)
        }
        groups: dict[str, list[str]] = {"attention": [], "mlp": []}
        for name, module in block.named_modules():
            if is_linear(module):
                groups["attention" if name.split(".")[0] in attention else "mlp"].append(
                    f"{prefix}.{index}.{name}"
                )
        found.append(groups)
    return found


def resolve_targets(model: nn.Module, target: str) -> list[str]:
    """Full names of the modules an arm with `target_modules=target` adapts (what peft's LoraConfig takes)."""
    blocks = block_linears(model)
    if target not in GROUPS:
        return _explicit(model, blocks, target.split(MODULE_SEPARATOR))
    attention = [n for b in blocks for n in b["attention"]]
    mlp = [n for b in blocks for n in b["mlp"]]
    if (target != "mlp" and not attention) or (target != "attention" and not mlp):
        raise UserError(
            f"target_modules {target!r}: no linear modules found under the attention and the MLP of the "
            f"blocks of {type(model).__name__} (linear modules: {_listing(model)}); list the ones to adapt, "
            "e.g. target_modules: {modules: [name, ...]}"
        )
    if target == "attention":
        return attention
    if target.startswith("paper-"):
        modules = dict(model.named_modules())
        mlp = [n for b in blocks for n in _paper_mlp(modules, b["mlp"])]
    return mlp if target.endswith("mlp") else attention + mlp


def _paper_mlp(modules: dict[str, nn.Module], mlp: list[str]) -> list[str]:
    """One block's MLP as the paper adapted it: up and down projections, the gate left out (Biderman et
    al. 2024 leave gate_proj out for comparability with gate-less MLPs such as GPT-2's c_fc/c_proj).

    A gate is told by its name. A fused gate+up module (Phi-3's gate_up_proj; or an up projection that
    writes twice the width the down projection reads, as ChatGLM's) holds the gate's rows in the same
    matrix: LoRA on it adapts the gate too, so 'paper-mlp' would silently equal 'mlp'. We refuse
    instead, so that a paper-* arm always means what the paper meant ('mlp'/'all' still work).
    """
    shape = {n: linear_shape(modules[n]) for n in mlp}
    fused = [n for n in mlp if "gate" in _last(n) and "up" in _last(n)]
    fused += [u for u in mlp for d in mlp if shape[u][0] == shape[d][1] and shape[u][1] == 2 * shape[d][0]]
    if fused:
        raise UserError(
            f"target_modules paper-mlp/paper-all: {_last(fused[0])} fuses the MLP's gate and up projections, "
            "so the paper's set (up + down, no gate) cannot be separated; use mlp or all"
        )
    kept = [n for n in mlp if "gate" not in _last(n)]
    if len(kept) > 2 and len(kept) == len(mlp):
        raise UserError(
            f"target_modules paper-mlp/paper-all: cannot tell the gate among the MLP's "
            f"{', '.join(_suffixes(kept))}; list the modules instead, e.g. target_modules: {{modules: [...]}}"
        )
    return kept


def _explicit(model: nn.Module, blocks: list[dict[str, list[str]]], suffixes: list[str]) -> list[str]:
    names = [n for b in blocks for n in b["attention"] + b["mlp"]]
    chosen = [n for n in names if any(n == s or n.endswith("." + s) for s in suffixes)]
    unknown = [s for s in suffixes if not any(n == s or n.endswith("." + s) for n in names)]
    if unknown:
        raise UserError(
            f"target_modules {{modules: [{', '.join(unknown)}]}}: no such linear module in the blocks of "
            f"{type(model).__name__} (found: {', '.join(_suffixes(names))})"
        )
    return chosen


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _suffixes(names: list[str]) -> list[str]:
    """Module names without the block prefix, de-duplicated in order (e.g. 'attn.c_proj')."""
    out = []
    for name in names:
        short = re.sub(r"^.*?\.\d+\.", "", name)
        if short not in out:
            out.append(short)
    return out


def _listing(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if is_linear(m)]
    return ", ".join(_suffixes(names)) or "none"


def uses_conv1d(model: nn.Module, names: list[str]) -> bool:
    """Whether the targets are Conv1D (weights stored transposed: peft's fan_in_fan_out)."""
    modules = dict(model.named_modules())
    return any(isinstance(modules[n], Conv1D) for n in names)


def dropout_overrides(config, full: bool, dropout: float) -> dict[str, float]:
    """Config keys to load the base with: the arm's attention dropout (`full` finetuning), every other
    dropout of the architecture at 0 (GPT-2 and OPT ship 0.1 residual/embedding dropout; Llama none),
    so that arms differ only in what they set."""
    values = config.to_dict()
    keys = [
        k for k, v in values.items() if "drop" in k and isinstance(v, int | float) and not isinstance(v, bool)
    ]
    attention = [k for k in keys if ATTENTION_DROPOUT_KEY.search(k)]
    if full and dropout and not attention:
        raise UserError(
            f"dropout {dropout:g}: {type(config).__name__} has no attention-dropout key "
            f"(its dropout keys: {', '.join(keys) or 'none'}); set dropout: 0 for full-finetuning arms"
        )
    rate = dropout if full else 0.0
    return {k: (rate if k in attention else 0.0) for k in keys if values[k] or k in attention}


def check_targets(config, arms) -> None:
    """Resolve every arm's targets and dropout on the meta device: a UserError before any work."""
    from transformers import AutoModelForCausalLM  # heavy or optional: only this path needs it

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    for arm in arms:
        dropout_overrides(config, isinstance(arm.kind, Full), arm.dropout)
        if arm.adapted and not (arm.peft and "target_modules" in arm.peft):
            resolve_targets(model, arm.target_modules)

    check_quantization(arms)
