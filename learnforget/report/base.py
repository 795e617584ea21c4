"""How faithful a scale model of Llama-2-7B the built-in base is, and how close a rebuild is to the shipped one.

Proportions are computed from the weights themselves and the token counts recorded at pretraining
(`learnforget_recipe.json`), never from the recipe's intentions. The rules the default recipe must meet:
embeddings + LM head at most 12% of the parameters, at least 15 pretraining tokens per parameter, and
the target domains (code, math) at most 10% of pretraining.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.table import Table

from learnforget.base.load import (
    base_info,
    builtin_base_path,
    load_causal_lm,
    load_tokenizer,
    pretrain_base,
    ship_base,
    shipped_base,
)
from learnforget.data import corpora
from learnforget.data.tokens import sample_packed_rows
from learnforget.errors import UserError
from learnforget.evaluate.likelihood import mean_token_loss
from learnforget.files import cache_dir
from learnforget.study.display import pretrain_progress, progress_bars

TARGET_DOMAINS = ("code", "math")
MAX_EMBEDDING_SHARE = 0.12
MIN_TOKENS_PER_PARAM = 15.0
MAX_TARGET_SHARE = 0.10
HELDOUT_ROWS = 32  # rows of the model's context per corpus for the held-out losses
HELDOUT_SEED = 1234

# Llama-2-7B (Touvron et al. 2023): 6.74B parameters, untied 32,000 × 4,096 embeddings and LM head, 2T
# pretraining tokens; its data mixture is not published.
LLAMA2_7B = {
    "params": 6_738_415_616,
    "embedding_params": 2 * 32_000 * 4_096,
    "tokens": 2_000_000_000_000,
}


def base_proportions(model: torch.nn.Module, info: dict) -> dict:
    """Parameters, embedding + LM-head share, pretraining tokens (per corpus) and tokens per parameter of
    a built-in base: `model` loaded from its directory, `info` its pretraining record."""
    total = sum(p.numel() for p in model.parameters())  # tied weights are one parameter, counted once
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    embedding_params = embedding.numel() + (0 if head is embedding else head.numel())
    tokens = int(info["tokens"])
    per_corpus = {k: int(v) for k, v in info["tokens_per_corpus"].items()}
    return {
        "params": total,
        "embedding_params": embedding_params,
        "embedding_share": embedding_params / total,
        "tokens": tokens,
        "tokens_per_param": tokens / total,
        "corpus_shares": {k: v / tokens for k, v in per_corpus.items()},
        "target_share": sum(v for k, v in per_corpus.items() if k in TARGET_DOMAINS) / tokens,
    }


def proportion_failures(props: dict) -> list[str]:
    """The rules a faithful scale model breaks (empty when it meets all three)."""
    failures = []
    if props["embedding_share"] > MAX_EMBEDDING_SHARE:
        failures.append(f"embedding + LM head {props['embedding_share']:.1%} > {MAX_EMBEDDING_SHARE:.0%}")
    if props["tokens_per_param"] < MIN_TOKENS_PER_PARAM:
        failures.append(f"{props['tokens_per_param']:.1f} tokens per parameter < {MIN_TOKENS_PER_PARAM:g}")
    if props["target_share"] > MAX_TARGET_SHARE + 1e-9:
        failures.append(f"target domains {props['target_share']:.1%} of pretraining > {MAX_TARGET_SHARE:.0%}")
    return failures


def proportions_table(props: dict) -> Table:
    """The built-in base's proportions next to Llama-2-7B's."""
    llama = LLAMA2_7B
    table = Table(title="Built-in base vs Llama-2-7B")
    for column in ("", "built-in base", "Llama-2-7B"):
        table.add_column(column, justify="left" if not column else "right")
    shares = ", ".join(f"{k} {v:.1%}" for k, v in sorted(props["corpus_shares"].items()))
    rows = [
        ("parameters", f"{props['params']:,}", f"{llama['params']:,}"),
        ("embedding + LM head", f"{props['embedding_params']:,}", f"{llama['embedding_params']:,}"),
        ("embedding + LM head share", f"{props['embedding_share']:.1%}",
         f"{llama['embedding_params'] / llama['params']:.1%}"),
        ("pretraining tokens", f"{props['tokens']:,}", f"{llama['tokens']:,}"),
        ("tokens per parameter", f"{props['tokens_per_param']:.1f}", f"{llama['tokens'] / llama['params']:.0f}"),
        ("target domains (code + math) share", f"{props['target_share']:.1%}", "not published"),
        ("pretraining mix", shares, "not published"),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


def heldout_losses(path: str | Path) -> dict[str, float]:
    """Mean held-out loss (nats/token) per built-in corpus of a model directory, in its own context."""
    model, tokenizer = load_causal_lm(str(path)), load_tokenizer(str(path))
    seq_len = model.config.max_position_embeddings
    losses = {}
    for corpus in ("english", "code", "math"):
        docs = corpora.documents(corpus, "heldout")
        rows = sample_packed_rows(tokenizer, docs, seq_len, HELDOUT_ROWS, HELDOUT_SEED)
        losses[corpus] = mean_token_loss(model, rows, batch_size=8)
    return losses


def closeness(shipped: str | Path, rebuilt: str | Path) -> dict:
    """How close a rebuilt base is to the shipped one: tokenizer identical, the largest absolute weight
    difference, the relative Frobenius distance ‖W_rebuilt − W_shipped‖ / ‖W_shipped‖ over all weights
    together, and both models' held-out loss per corpus."""
    same_tokenizer = (
        load_tokenizer(str(shipped)).backend_tokenizer.to_str()
        == load_tokenizer(str(rebuilt)).backend_tokenizer.to_str()
    )
    a = dict(load_causal_lm(str(shipped)).named_parameters())
    b = dict(load_causal_lm(str(rebuilt)).named_parameters())
    comparable = a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    max_abs, diff_sq, ref_sq = math.nan, math.nan, math.nan
    if comparable:
        with torch.no_grad():
            max_abs = max((a[k] - b[k]).abs().max().item() for k in a)
            diff_sq = sum((a[k] - b[k]).double().pow(2).sum().item() for k in a)
            ref_sq = sum(a[k].double().pow(2).sum().item() for k in a)
    return {
        "tokenizer_identical": same_tokenizer,
        "max_abs_diff": max_abs,
        "relative_frobenius": math.sqrt(diff_sq / ref_sq) if comparable else math.nan,
        "loss": {"shipped": heldout_losses(shipped), "rebuilt": heldout_losses(rebuilt)},
    }


def closeness_table(report: dict) -> Table:
    """The closeness report as one table of plain numbers."""
    table = Table(title="Rebuilt base vs shipped base")
    for column in ("measure", "shipped", "rebuilt", "difference"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("tokenizer identical", "", "", "yes" if report["tokenizer_identical"] else "no")
    table.add_row("max |Δw| over all weights", "", "", f"{report['max_abs_diff']:.3g}")
    table.add_row("relative Frobenius distance", "", "", f"{report['relative_frobenius']:.3g}")
    shipped, rebuilt = report["loss"]["shipped"], report["loss"]["rebuilt"]
    for corpus in shipped:
        table.add_row(
            f"{corpus} held-out loss (nats/token)",
            f"{shipped[corpus]:.4f}",
            f"{rebuilt[corpus]:.4f}",
            f"{rebuilt[corpus] - shipped[corpus]:+.4f}",
        )
    return table


def rebuild_base(recipe, out: Path | None, ship: bool, console, out_console) -> Path:
    """Pretrain the built-in base from its recipe into `out` (default: the cache), print its proportions
    next to Llama-2-7B's and how close it is to the shipped base; `ship` replaces the shipped base."""
    shipped, cached = shipped_base(recipe), builtin_base_path(recipe)
    if out is None and shipped is None and not (cached / "config.json").exists():
        out = cached  # a recipe of its own: the rebuild is the one studies will use
    target = out or cache_dir() / "rebuilds" / f"base-{recipe.digest()}-{time.strftime('%Y%m%d-%H%M%S')}"
    if target.exists():
        raise UserError(f"--out {target}: already exists; name a new directory")
    console.print(f"Pretraining the built-in base from its recipe ({recipe.digest()}) into {target}")
    with progress_bars() as progress:
        pretrain_base(recipe, target, pretrain_progress(progress, recipe.steps))
    info = base_info(target)
    props = base_proportions(load_causal_lm(str(target)), info)
    out_console.print(proportions_table(props))
    failures = proportion_failures(props)
    out_console.print(
        f"Pretrained {info['tokens']:,} tokens in {info['seconds']:.0f} s. Scale-model rules: "
        + ("all met" if not failures else "not met: " + "; ".join(failures)),
        highlight=False,
    )
    if shipped is not None:
        out_console.print(closeness_table(closeness(shipped, target)))
    else:
        out_console.print("The shipped base has another recipe: no closeness report.")
    if ship:
        ship_base(target)
        out_console.print(f"Shipped: the package's built-in base is now this rebuild ({recipe.digest()}).")
    return target
