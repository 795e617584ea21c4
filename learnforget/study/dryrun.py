"""`run --dry-run`: the expanded grid with trainable parameters and a memory estimate per arm, no training.

Models are instantiated on the meta device (no memory, no weights), so a 7B grid dry-runs in seconds.
"""

from __future__ import annotations

import os

import torch
from rich.console import Console
from rich.table import Table

from learnforget.arms.build import count_parameters, prepare_arm
from learnforget.arms.targets import check_targets, resolve_targets
from learnforget.base.gguf import converted_base, is_gguf_base
from learnforget.base.load import builtin_base_path, shipped_base
from learnforget.config.arms import Arm
from learnforget.config.peft import rewrites_base
from learnforget.config.study import StudyConfig
from learnforget.data.datasets import template_setting
from learnforget.data.parallel import PARALLEL_MIN_EXAMPLES, tokenize_workers
from learnforget.data.shards import token_dtype
from learnforget.data.templates import describe_template
from learnforget.errors import UserError
from learnforget.evaluate.arm_model import MAX_MERGED_BYTES
from learnforget.evaluate.harness import check_tasks
from learnforget.files import cache_dir
from learnforget.runtime.precision import cpu_bf16_warning
from learnforget.study.identity import check_arms_fit
from learnforget.study.progress import study_header
from learnforget.train.fused_loss import FUSED_MODEL_TYPES
from learnforget.train.memory import estimate_memory

# Architectures of the paper's base, so its recipes dry-run offline (the hub is not needed for counting).
KNOWN_CONFIGS = {
    "meta-llama/Llama-2-7b-hf": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
    ),
}  # fmt: skip


def base_config(study: StudyConfig):
    """The base model's transformers config, without downloading or loading weights."""
    from transformers import AutoConfig, LlamaConfig  # heavy or optional: only this path needs it

    if study.base_model == "builtin":
        r = study.base
        return LlamaConfig(
            vocab_size=r.vocab_size, hidden_size=r.hidden_size, num_hidden_layers=r.num_layers,
            num_attention_heads=r.num_heads, num_key_value_heads=r.num_heads,
            intermediate_size=r.intermediate_size, max_position_embeddings=r.seq_len, tie_word_embeddings=True,
        )  # fmt: skip
    if study.base_model in KNOWN_CONFIGS:
        return LlamaConfig(**KNOWN_CONFIGS[study.base_model])

    if is_gguf_base(study.base_model):  # converted here (once, cached): the run needs it anyway
        return AutoConfig.from_pretrained(converted_base(study.base_model))
    unreachable = None if os.path.isdir(study.base_model) else hub_unreachable()
    try:  # with the hub unreachable, the cache only: huggingface_hub would retry for ~25 s
        return AutoConfig.from_pretrained(study.base_model, local_files_only=unreachable is not None)
    except (OSError, ValueError) as e:  # offline, a mistyped hub id, no access, not a model's config
        why = (
            f"the hub is unreachable ({unreachable}) and it is not in the cache"
            if unreachable
            else _first_line(e)
        )
        raise UserError(
            f"base_model {study.base_model!r}: its config could not be read ({why}); check the "
            "name or path, and network access (or HF_HUB_OFFLINE=1 with the model in the cache)"
        ) from None


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub's host cannot be resolved (no network), or None (reachable, or offline mode)."""
    import socket  # only this path needs it
    from urllib.parse import urlparse  # only this path needs it

    from huggingface_hub import constants  # heavy or optional: only this path needs it

    if constants.HF_HUB_OFFLINE:
        return None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        return f"{host}: {e.strerror or e}"
    return None


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def check_harness_tasks(study: StudyConfig) -> None:
    """Every name in eval.harness_tasks is an lm-eval task (indexing them takes seconds: only when set)."""
    if study.eval.harness_tasks:
        try:
            check_tasks(study.eval.harness_tasks, study.eval.harness_include_path)
        except UserError as e:
            raise UserError(f"eval.harness_tasks: {e}") from None


def arm_size(config, arm: Arm) -> tuple[int, int]:
    """(trainable, total) parameters of an arm, counted on the meta device."""
    from transformers import AutoModelForCausalLM  # heavy or optional: only this path needs it

    if rewrites_base(arm.peft):  # same parameters; PiSSA's SVD / OLoRA's QR need real weights
        arm = arm.model_copy(update={"peft": {**arm.peft, "init_lora_weights": True}})
    with torch.device("meta"):  # LoRA weights too: nothing is allocated, even for r=256 on 7B
        model = AutoModelForCausalLM.from_config(config)
        try:
            model = prepare_arm(model, arm)
        except (ValueError, TypeError) as e:  # peft's own checks (r < 1, keywords it refuses)
            if arm.peft is None:
                raise
            raise UserError(f"arm {arm.name}: peft refuses its settings ({_first_line(e)})") from None
    return count_parameters(model)


def default_world_size() -> int:
    """Processes per arm: the launcher's WORLD_SIZE (accelerate launch / torchrun), else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def arm_memory(
    config,
    study: StudyConfig,
    arm: Arm,
    trainable: int,
    total: int,
    world_size: int = 1,
    device: str | None = None,
):
    """`memory.estimate_memory` of one arm per device, from the model config and the study's settings.

    Each process takes its share of every batch (`batch_size / world_size`, rounded up) and runs it in
    forward passes of `micro_batch_size` sequences when that is smaller. `device`: 'cuda' or 'cpu',
    where the arm trains (default: a GPU when there is one, as `distributed.device`).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    sharded = study.sharding == "fsdp" and world_size > 1
    # As evaluate/arm_model.merge_refusal: a LoRA / peft arm in fp32, unsharded, unquantized, small enough.
    merged_copy = (
        arm.adapted and study.precision == "fp32" and not sharded and not arm.quantization
        and total * 4 <= MAX_MERGED_BYTES
    )  # fmt: skip

    local = -(-study.batch_size // world_size)
    sequences = min(local, study.micro_batch_size or local)
    # A tied input embedding is also the LM head, a matmul weight (autocast copies it).
    tied = getattr(config, "tie_word_embeddings", False)
    embedding_params = 0 if tied else config.vocab_size * config.hidden_size
    return estimate_memory(
        hidden=config.hidden_size, intermediate=config.intermediate_size, layers=config.num_hidden_layers,
        heads=config.num_attention_heads, vocab=config.vocab_size, trainable=trainable, total=total,
        embedding_params=embedding_params, sequences=sequences, seq_len=study.seq_len,
        precision=study.precision, optimizer=arm.optimizer, gradient_checkpointing=study.gradient_checkpointing,
        attn_implementation=study.attn_implementation, sharding=study.sharding, world_size=world_size,
        adapted=adapted_linears(config, arm), fused_loss=uses_fused_loss(config, study, world_size),
        device=device, spectra=study.eval.spectra, merged_copy=merged_copy,
    )  # fmt: skip


def uses_fused_loss(config, study: StudyConfig, world_size: int) -> bool:
    """Whether `train.train_steps` computes this arm's loss without full logits (fused_loss.py)."""
    one_process = world_size == 1
    return (
        study.precision == "fp32" and one_process and getattr(config, "model_type", None) in FUSED_MODEL_TYPES
    )


def adapted_linears(config, arm: Arm) -> list[str]:
    """Short names of the linear layers a LoRA arm adapts in one block (q_proj, ...); none for full."""
    if not arm.adapted:
        return []
    if arm.peft and "target_modules" in arm.peft:
        names = arm.peft["target_modules"]
        return sorted({names} if isinstance(names, str) else set(names))
    from transformers import AutoModelForCausalLM  # heavy or optional: only this path needs it

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sorted({name.rsplit(".", 1)[-1] for name in resolve_targets(model, arm.target_modules)})


def print_dry_run(
    study: StudyConfig, arms: list[Arm], console: Console, world_size: int | None = None
) -> list[dict]:
    """Print (and return) one row per arm: settings, trainable parameters, estimated memory per device."""
    world_size = world_size or default_world_size()
    study.check_last_batch(world_size)
    check_harness_tasks(study)
    config = base_config(study)
    check_targets(config, arms)  # every arm's targets and dropout, before the table
    check_arms_fit(arms, config.to_dict())
    sharding = f", FSDP over {world_size}" if study.sharding == "fsdp" else ""
    table = Table(
        title=f"{study.name}: {study_header(study, len(arms))}; "
        f"memory per device (GB): {world_size} process{'es' if world_size > 1 else ''}{sharding}, {study.precision}"
        f"{', gradient checkpointing' if study.gradient_checkpointing else ''}"
        f"{', compiled layers' if study.compile else ''}"
    )
    columns = ["arm", "method", "rank", "alpha", "targets", "lr", "wd", "dropout", "seed", "trainable",
               "% of total", "weights", "grads+opt", "activ.", "held", "est. memory GB"]  # fmt: skip
    for col in columns:
        table.add_column(col, justify="left" if col in ("arm", "method", "targets") else "right")
    rows = []
    for arm in arms:
        trainable, total = arm_size(config, arm)
        memory = arm_memory(config, study, arm, trainable, total, world_size)
        gb = {k: v / 2**30 for k, v in memory.as_dict().items()}
        rows.append({"arm": arm.name, "trainable": trainable, "total": total, "memory_gb": gb["total"],
                     "memory": memory.as_dict()})  # fmt: skip
        table.add_row(
            arm.name, arm.method, str(arm.rank or "–"), f"{arm.alpha:g}" if arm.alpha else "–",
            "+".join(adapted_linears(config, arm))
            if arm.peft and "target_modules" in arm.peft
            else arm.target_modules if arm.adapted else "all",
            f"{arm.learning_rate:g}",
            f"{arm.weight_decay:g}", f"{arm.dropout:g}", str(arm.seed), f"{trainable:,}",
            f"{100 * trainable / total:.2f}", f"{gb['weights']:.2f}", f"{gb['gradients'] + gb['optimizer']:.2f}",
            f"{gb['activations']:.2f}", f"{gb['held']:.2f}", f"{gb['total']:.2f}",
        )  # fmt: skip
    console.print(table)
    warning = cpu_bf16_warning(study.precision)
    if warning:
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)
    plan = data_plan(study, config.vocab_size, base_tokenizer(study))
    console.print(plan, highlight=False, soft_wrap=True)
    return rows


def base_tokenizer(study: StudyConfig):
    """The base's tokenizer, for the template line (no weights: cheap), or None where it cannot be had:
    a built-in base not pretrained yet, a hub model neither cached nor reachable. A hub model whose
    architecture the dry run knows offline (KNOWN_CONFIGS) is only looked for in the local cache."""
    from transformers import AutoTokenizer  # heavy or optional: only this path needs it

    if study.base_model == "builtin":
        path = shipped_base(study.base) or builtin_base_path(study.base)
        if not (path / "tokenizer_config.json").exists():
            return None
        return AutoTokenizer.from_pretrained(path)
    if is_gguf_base(study.base_model):  # converted by base_config already
        return AutoTokenizer.from_pretrained(converted_base(study.base_model))
    for local_only in (True, False) if study.base_model not in KNOWN_CONFIGS else (True,):
        try:
            return AutoTokenizer.from_pretrained(study.base_model, local_files_only=local_only)
        except Exception:  # offline, gated, or no tokenizer files: the line names both possibilities
            continue
    return None


def data_plan(study: StudyConfig, vocab_size: int | None = None, tokenizer=None) -> str:
    """What the arms train on, and where it lives (disk, memory), read from the config (no download);
    ``vocab_size`` is the base model's, ``tokenizer`` its tokenizer when loaded (``base_tokenizer``):
    with it the template line says whether the chat template is used."""
    d = study.data
    template = template_line(study, tokenizer)
    source = (
        "built-in " + ("tasks" if study.regime == "ift" else "corpus") if d.train == "builtin" else d.train
    )
    source += f" (preset {d.preset})" if d.preset else ""
    source += f", data_dir {d.data_dir}" if d.data_dir else ""
    if study.regime == "cpt":
        field = "" if d.train == "builtin" else f", text field '{d.text_field}'"
        docs = f", at most {d.max_documents:,} documents" if d.max_documents else ""
        return (
            f"Data: {source}{field}{docs}; documents packed end to end (EOS between) into "
            f"{study.steps:,} steps × {study.batch_size} rows × {study.seq_len} tokens = "
            f"{study.steps * study.tokens_per_step:,} tokens, loss on every token.\n"
            f"Evaluation prompts (reference NLL, generation, diversity): {template}.\n"
            + token_file_plan(study, vocab_size)
        )
    pairs = f"'{d.prompt_field}' → '{d.response_field}'"
    auto = f"format auto (by each record's fields: messages, ShareGPT, Alpaca, or pairs {pairs})"
    fields = {"pairs": pairs, "auto": auto}.get(d.format, f"format {d.format}")
    budget = (
        f"{study.epochs} epoch{'s' * (study.epochs > 1)}"
        if study.epochs
        else f"a budget of {study.budget_tokens:,} padded tokens"
    )
    n_rows = study.train_rows
    left = d.examples % study.batch_size
    exact = (
        f" (the last of an epoch's {study.steps_per_epoch:,} steps takes the {left:,} rows left over: "
        "epochs are exact)"
        if study.epochs and left
        else ""
    )
    return (
        f"Data: {source}, {fields}; {d.examples:,} examples × {budget} = {study.steps:,} steps of "
        f"{study.batch_size} rows{exact} of at most {study.seq_len} tokens, each batch padded to its longest row"
        f"{' (rows grouped by length)' if d.group_by_length else ''}; examples longer than seq_len are "
        f"{'truncated' if d.overlong == 'truncate' else 'dropped'} and counted; loss on responses only.\n"
        f"Template: {template}; BOS as the tokenizer adds it. Evaluation prompts use the same template.\n"
        + example_file_plan(study, vocab_size, n_rows)
    )


def template_line(study: StudyConfig, tokenizer=None) -> str:
    """The template the study will use (``datasets.study_template``), in words with an example."""
    base = "the built-in base" if study.base_model == "builtin" else study.base_model
    builtin_prompts = study.regime == "cpt" or study.data.train == "builtin"
    return describe_template(template_setting(study), builtin_prompts, tokenizer, base)


def size(n_bytes: float) -> str:
    """Bytes in KB, MB or GB (powers of 1024, as the memory table)."""
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,.0f} bytes"


def token_width(vocab_size: int | None) -> tuple[int, str]:
    """(bytes a token, how that was decided) in token and example files."""
    if vocab_size is None:
        return 2, "2 or 4 bytes (uint16 up to a vocabulary of 65,536 tokens, else uint32)"
    dtype = token_dtype(vocab_size)
    width = 2 if dtype == "uint16" else 4
    return width, f"{width} bytes ({dtype}: vocabulary {vocab_size:,})"


def disk_room(where, n_bytes: int) -> str:
    """Free space at ``where`` (or its nearest existing parent), flagged when short of ``n_bytes``."""
    import shutil  # only this path needs it

    existing = next(p for p in (where, *where.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    return f"{size(free)} free there" + ("" if free >= n_bytes else f" (NOT ENOUGH: needs {size(n_bytes)})")


def token_file_plan(study: StudyConfig, vocab_size: int | None) -> str:
    """The CPT token file: size on disk (2 or 4 bytes a token), free space there, and why it is not
    resident (a step reads its own rows from it)."""
    tokens = study.steps * study.tokens_per_step
    width, how_wide = token_width(vocab_size)
    n_bytes = tokens * width
    on_disk = f" = {size(n_bytes)}" if vocab_size is not None else ""
    where = cache_dir() / "tokens"
    workers = tokenize_workers(tokens)
    how = f"{workers} processes" if workers > 1 else "one process with the tokenizer's threads"
    step = study.batch_size * study.seq_len * 8
    return (
        f"Token file: {tokens:,} tokens × {how_wide}{on_disk} on disk in {where}/ ({disk_room(where, n_bytes)}), "
        f"tokenized once ({how} on this machine) and shared by every arm and process. Memory: the file is "
        f"not loaded: a step reads its {study.batch_size} rows ({size(step)} as int64), so "
        "resident memory does not grow with the corpus."
    )


def example_file_plan(study: StudyConfig, vocab_size: int | None, n_rows: int) -> str:
    """The IFT example file: its size on disk at most (every example seq_len tokens; the real size is
    known once tokenized), free space there, and what each training process holds."""
    n = study.data.examples
    tokens = n * study.seq_len
    width, how_wide = token_width(vocab_size)
    n_bytes = tokens * (width + 1) + 8 * (n + 1)
    where = cache_dir() / "examples"
    workers = tokenize_workers(n, PARALLEL_MIN_EXAMPLES)
    how = f"{workers} processes" if workers > 1 else "one process with the tokenizer's threads"
    step = 2 * study.batch_size * study.seq_len * 8
    seeds = "" if study.data.train == "builtin" else " (and seed: user data is read in its own order)"
    return (
        f"Example file: at most {n:,} examples × {study.seq_len} = {tokens:,} tokens (the real count is in the "
        f"log and summary.md once tokenized) × ({how_wide} + a 1-byte loss mask) + 8-byte offsets = at most "
        f"{size(n_bytes)} on disk in {where}/ ({disk_room(where, n_bytes)}), tokenized once ({how} on this "
        f"machine) and shared by every arm and process{seeds}. Memory: the file is not loaded: each training "
        f"process holds {n + 1:,} offsets and {n_rows:,} row indices (8 bytes each: "
        f"{size(8 * (n + 1 + n_rows))}), and a step reads its {study.batch_size} rows (at most {size(step)} "
        "of int64 ids and labels), so resident memory does not grow with the data; data.pt holds only the "
        "evaluation sets and a descriptor."
    )
