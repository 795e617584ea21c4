"""Base models: the built-in tiny Llama (shipped, or pretrained and cached by recipe hash) or any HF model.

The built-in base for the default recipe ships inside the package (`learnforget/base/builtin_base/`, built by
`learnforget pretrain --ship`); it is used whenever a study's base recipe hashes to the shipped one.
Any other recipe is pretrained into `$LEARNFORGET_CACHE` (default `~/.cache/learnforget`) under
`base-<recipe hash>-<corpora fingerprint>/`. Both are ordinary Hugging Face model directories, so every
later stage loads them exactly like a hub model. A GGUF base (a `.gguf` file, or a named one such as
`smollm2-135m`) is converted once into such a directory too (gguf.py).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from learnforget.base.gguf import converted_base, gguf_path, is_gguf_base
from learnforget.config.study import BaseRecipe
from learnforget.data import corpora
from learnforget.data.tokens import interleave, pack_documents, sample_text, train_tokenizer
from learnforget.errors import UserError
from learnforget.files import cache_dir
from learnforget.runtime.precision import absolute_model_path, storage_dtype

# The one import up a layer (base -> train): pretraining the built-in base runs the training loop itself.
from learnforget.train.loop import make_optimizer, train_steps

SHIPPED_BASE = Path(__file__).parent / "builtin_base"
RECIPE_FILE = "learnforget_recipe.json"  # recipe, its hash, pretraining tokens and seconds, torch version


def builtin_base_path(recipe: BaseRecipe) -> Path:
    """Cache directory of the built-in base for a recipe (it may not exist yet)."""
    return cache_dir() / f"base-{recipe.digest()}-{corpora.fingerprint()}"


def base_info(path: str | Path) -> dict | None:
    """The pretraining record saved with a built-in base (None for any other model directory)."""
    file = Path(path) / RECIPE_FILE
    return json.loads(file.read_text()) if file.exists() else None


def shipped_base(recipe: BaseRecipe) -> Path | None:
    """The base shipped in the package, when it was built from this recipe."""
    info = base_info(SHIPPED_BASE)
    if info and info.get("recipe_hash") == recipe.digest() and (SHIPPED_BASE / "config.json").exists():
        return SHIPPED_BASE
    return None


def ship_base(built: Path) -> None:
    """Replace the shipped base with a freshly built one (what `learnforget pretrain --ship` does)."""
    SHIPPED_BASE.mkdir(exist_ok=True)
    for old in SHIPPED_BASE.iterdir():
        old.unlink()
    for file in sorted(built.iterdir()):
        shutil.copy2(file, SHIPPED_BASE / file.name)


# Files transformers loads weights from (sharded checkpoints have an index next to the shards).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.msgpack", "*.h5")


def check_base_model(base_model: str) -> None:
    """Fail early, before any work, on a base_model that cannot be a model."""
    if base_model == "builtin":
        return
    if is_gguf_base(base_model):
        gguf_path(base_model)  # the file (or its package) is there, is a GGUF, and gguf is installed
        return
    path = Path(base_model)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"base_model {base_model!r}: not a Hugging Face model directory (no config.json)")
        if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
            raise UserError(
                f"base_model {base_model!r}: config.json but no weights ({', '.join(WEIGHT_FILES)}); "
                "save the model with save_pretrained"
            )
    elif path.exists() or base_model.count("/") > 1 or base_model.startswith((".", "/", "~")):
        raise UserError(f"base_model {base_model!r}: no such model directory")


def resolve_base(
    base_model: str, recipe: BaseRecipe, progress: Callable[[int, int, float], None] | None = None
) -> str:
    """A loadable model path or hub id for a study's `base_model`: for the built-in base the shipped copy
    when the recipe is the shipped one, else the cached one, pretraining it if needed.

    A GGUF base resolves to its converted directory (converted on first use). A hub id is returned as
    is: transformers downloads it on first load (and names it if unreachable).
    """
    check_base_model(base_model)
    if is_gguf_base(base_model):
        return str(converted_base(base_model))
    if base_model == "builtin":
        shipped = shipped_base(recipe)
        if shipped is not None:
            return str(shipped)
        path = builtin_base_path(recipe)
        if not (path / "config.json").exists():
            pretrain_base(recipe, path, progress)
        return str(path)
    return absolute_model_path(base_model)


def load_causal_lm(
    path: str, precision: str = "fp32", attn_implementation: str = "sdpa", **config_overrides
) -> PreTrainedModel:
    """A causal LM from a directory or hub id, in the storage dtype of `precision` (see precision.py).

    A local directory is loaded by its absolute path, so what is saved from the model (a peft adapter's
    `base_model_name_or_path`) names a base that loads from anywhere.
    """
    if is_gguf_base(path):
        path = str(converted_base(path))
    try:
        return AutoModelForCausalLM.from_pretrained(
            absolute_model_path(path),
            dtype=storage_dtype(precision),
            attn_implementation=attn_implementation,
            **config_overrides,
        )
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the model ({str(e).splitlines()[0]})") from None


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model; a pad token is set (EOS) when the model has none."""
    if is_gguf_base(path):
        path = str(converted_base(path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise UserError(f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def build_tokenizer(recipe: BaseRecipe):
    """Train the built-in byte-level BPE on a sample of every built-in corpus's pretraining split."""
    texts = []
    for corpus in ("english", "code", "math"):
        texts += sample_text(corpora.documents(corpus, "pretrain"), recipe.tokenizer_bytes, recipe.seed)
    return train_tokenizer(texts, recipe.vocab_size)


def mix_rows(recipe: BaseRecipe) -> dict[str, int]:
    """Pretraining rows per corpus: each corpus's share of steps × batch rows (rounded)."""
    total_rows = recipe.steps * recipe.batch_size
    shares = {k: v for k, v in recipe.mix.items() if v > 0}
    norm = sum(shares.values())
    return {corpus: round(total_rows * share / norm) for corpus, share in sorted(shares.items())}


def pretraining_rows(recipe: BaseRecipe, tokenizer) -> torch.Tensor:
    """The pretraining mixture: each corpus's share of steps × batch rows, interleaved."""
    total_rows = recipe.steps * recipe.batch_size
    parts = []
    for i, (corpus, n_rows) in enumerate(mix_rows(recipe).items()):
        if n_rows:
            docs = corpora.documents(corpus, "pretrain")
            parts.append(pack_documents(tokenizer, docs, recipe.seq_len, n_rows, recipe.seed + i))
    rows = interleave(parts, recipe.seed)
    if len(rows) < total_rows:  # rounding: top up from the first rows
        rows = torch.cat([rows, rows[: total_rows - len(rows)]])
    return rows[:total_rows]


def pretraining_tokens(recipe: BaseRecipe) -> dict[str, int]:
    """Pretraining tokens per corpus (the rounding top-up, at most a row or two, counted in the first)."""
    rows = mix_rows(recipe)
    first = next(iter(rows))
    rows[first] += recipe.steps * recipe.batch_size - sum(rows.values())
    return {corpus: n * recipe.seq_len for corpus, n in rows.items()}


def pretrain_base(
    recipe: BaseRecipe, path: Path, progress: Callable[[int, int, float], None] | None = None
) -> None:
    """Train tokenizer and model from scratch and save them to `path` (atomically: temp dir, rename)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        torch.manual_seed(recipe.seed)
        started = time.time()
        tokenizer = build_tokenizer(recipe)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=recipe.hidden_size,
            num_hidden_layers=recipe.num_layers,
            num_attention_heads=recipe.num_heads,
            num_key_value_heads=recipe.num_heads,
            intermediate_size=recipe.intermediate_size,
            max_position_embeddings=recipe.seq_len,
            tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = LlamaForCausalLM(config)
        rows = pretraining_rows(recipe, tokenizer)
        optimizer, scheduler = make_optimizer(
            model, recipe.learning_rate, recipe.weight_decay, recipe.warmup_steps, recipe.steps
        )
        on_step = (lambda step, loss: progress(step + 1, recipe.steps, loss)) if progress else None
        train_steps(model, optimizer, scheduler, rows, recipe.batch_size, 0, recipe.steps, on_step=on_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=".tmp-base-"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "recipe": recipe.model_dump(),
            "recipe_hash": recipe.digest(),
            "corpora": corpora.fingerprint(),
            "seconds": round(time.time() - started, 1),
            "tokens": rows.numel(),
            "tokens_per_corpus": pretraining_tokens(recipe),
            "torch": torch.__version__,
        }
        (tmp / RECIPE_FILE).write_text(json.dumps(info, indent=2))
        if path.exists():  # another process finished first: theirs is identical
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    finally:
        torch.set_num_threads(threads)
