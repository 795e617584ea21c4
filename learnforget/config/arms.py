"""An arm's settings: the grid an arm spec sweeps, the concrete arm it expands to, its name and identity.

An arm is identified by its settings (`Arm.id`), never by its name; its configuration (the settings but
the seed: what seeds repeat) and its sweep (the settings but the seed and the learning rate) are fields
too. `ARM_SETTINGS` is the one list of an arm's settings: the store's columns, the frontier's keys and the
plots' keys come from it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from learnforget.config.methods import MODULE_SEPARATOR, Base, Full, MethodType, method_of, short_number
from learnforget.config.peft import (
    alpha_of,
    build_config,
    check_peft_settings,
    method_family,
    normalized_type,
    rank_of,
    takes_list,
)
from learnforget.config.strict import Strict, as_list
from learnforget.errors import UserError

if TYPE_CHECKING:  # the study holds arm specs; expanding them reads the study
    from learnforget.config.study import StudyConfig

# Named sets of linear layers LoRA adapts, resolved from each model's structure (learnforget/arms/targets.py).
TargetGroup = Literal["all", "attention", "mlp", "paper-all", "paper-mlp"]
Method = Literal["full", "lora", "peft"]


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
        for rank in as_list(self.rank):
            if rank < 1:
                raise ValueError(f"rank must be at least 1 (got {rank})")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha must be a positive number (got {self.alpha}); omit it for 2r")
        for lr in as_list(self.learning_rate):
            if not (math.isfinite(lr) and 0 < lr <= 10):
                raise ValueError(f"learning_rate must be a number in (0, 10] (got {lr})")
        for wd in as_list(self.weight_decay):
            if not (math.isfinite(wd) and 0 <= wd <= 1e3):
                raise ValueError(f"weight_decay must be a number ≥ 0 (got {wd})")
        for dropout in as_list(self.dropout):
            if not (math.isfinite(dropout) and 0 <= dropout < 1):
                raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        for seed in as_list(self.seed):
            if not 0 <= seed < 2**63:
                raise ValueError(f"seed must be in [0, 2^63) (got {seed})")
        for field in ("method", "rank", "target_modules", "learning_rate", "weight_decay", "dropout",
                      "optimizer", "seed"):  # fmt: skip
            if getattr(self, field) == []:
                raise ValueError(f"{field}: an empty list gives no arms")
        self._check_peft()
        return self

    def _check_peft(self) -> None:
        methods = set(as_list(self.method))
        if self.quantization and methods == {"full"}:
            raise ValueError("quantization: only for method lora or peft (full finetuning trains the base)")
        if "peft" not in methods:
            if self.peft is not None:
                raise ValueError("peft: only for method peft (e.g. method: peft, peft: {type: LORA, r: 16})")
            return
        if self.peft is None:
            raise ValueError("method peft needs peft: {type: ..., keywords}, e.g. peft: {type: LORA, r: 16}")

        check_peft_settings(self.peft)
        if "lora" not in methods:
            for field in ("rank", "alpha"):  # set away from its default (a dumped config repeats the default)
                if getattr(self, field) != ArmSpec.model_fields[field].default:
                    raise ValueError(
                        f"{field}: for method lora; a peft method takes its own keyword, e.g. peft: {{r: 16}}"
                    )
        if any(as_list(self.dropout)):
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


# The one description of an arm's settings, with each one's SQLite column type: the store's columns, the
# frontier's and the plots' keys come from here (an Arm has exactly these fields, and its name).
ARM_SETTINGS: dict[str, str] = {
    "method": "TEXT", "rank": "INTEGER", "alpha": "REAL", "target_modules": "TEXT", "learning_rate": "REAL",
    "weight_decay": "REAL", "dropout": "REAL", "train_embeddings": "INTEGER", "optimizer": "TEXT",
    "seed": "INTEGER", "peft": "TEXT", "quantization": "TEXT",
}  # fmt: skip
# Settings added after the first store schema: left out of the identity while unset.
ADDED_SETTINGS = ("peft", "quantization")
# Settings a configuration's seeds share (all but the seed), and an LR sweep's points (all but the LR too).
CONFIGURATION_SETTINGS = tuple(k for k in ARM_SETTINGS if k != "seed")
SWEEP_SETTINGS = tuple(k for k in CONFIGURATION_SETTINGS if k != "learning_rate")


def peft_grid(settings: dict) -> list[dict]:
    """Every combination of a peft block's swept keywords ({type: LORA, r: [8, 16]} -> two settings)."""

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


class Arm(Strict):
    """One concrete arm after grid expansion: its settings (ARM_SETTINGS) and its display name."""

    name: str
    method: str  # the method's family: 'full', 'lora', 'dora', 'vera', 'ia3', ... (`kind` is its type)
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
    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude={"name"})

    @property
    def id(self) -> str:
        """Identity of the arm: a hash of all its settings (the name is for display). Settings added since
        the first version count only when set, so earlier arms keep their identities."""
        return settings_id(self.settings)

    @property
    def kind(self) -> MethodType:
        """The method as a type (config/methods.py)."""
        return method_of(self.settings)

    @property
    def adapted(self) -> bool:
        """Whether the arm trains an adapter on a frozen base (LoRA or any peft method)."""
        return self.kind.adapts_frozen_base

    @property
    def configuration(self) -> str:
        """The arm's seed group: its name without the seed ('lora-r4-all-lr5e-3'), from its settings."""
        return configuration_label(self.settings)

    @property
    def sweep(self) -> str:
        """The learning-rate sweep the arm belongs to ('lora-r4-all'), from its settings."""
        return sweep_label(self.settings)


def settings_id(settings: dict) -> str:
    """An arm's identity from its settings (ADDED_SETTINGS count only when set)."""
    return arm_id(
        {k: v for k, v in settings.items() if k in ARM_SETTINGS and not (k in ADDED_SETTINGS and v is None)}
    )


def arm_id(settings: dict) -> str:
    """12 hex digits of the sha256 of the settings' canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _fmt_lr(lr: float) -> str:
    """Exact and short: 5e-4, 1.4e-3, 1.23456e-3 (never rounded, so distinct rates get distinct names)."""
    mantissa, exponent = f"{Decimal(repr(float(lr))).normalize():e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def name_parts(arm: dict) -> dict[str, list[str]]:
    """The parts of an arm's name by what they say: method, settings, learning rate, the rest, seed."""
    kind = method_of(arm)
    rest = []
    if arm["weight_decay"]:
        rest.append(f"wd{short_number(arm['weight_decay'])}")
    if arm["dropout"]:
        rest.append(f"do{short_number(arm['dropout'])}")
    if bool(arm["train_embeddings"]) != isinstance(kind, Full):  # the method's default is not named
        rest.append("emb" if arm["train_embeddings"] else "noemb")
    if (arm.get("optimizer") or "adamw") != "adamw":
        rest.append(arm["optimizer"])
    return {
        "method": [arm["method"], *kind.name_parts()]
        + ([f"q{arm['quantization']}"] if arm.get("quantization") else []),
        "learning_rate": [f"lr{_fmt_lr(arm['learning_rate'])}"],
        "rest": rest,
        "seed": [f"s{arm['seed']}"],
    }


def arm_name(arm: dict) -> str:
    """Deterministic readable name, e.g. 'lora-r16-all-lr5e-3-s0' or 'full-lr5e-4-wd0.1-s0'."""
    return "-".join(part for parts in name_parts(arm).values() for part in parts)


def configuration_label(arm: dict) -> str:
    """The name of an arm's seed group: its name without the seed part."""
    return _label_without(arm, {"seed"})


def sweep_label(arm: dict) -> str:
    """The name of an arm's learning-rate sweep: its name without the seed and the learning rate."""
    return _label_without(arm, {"seed", "learning_rate"})


def _label_without(arm: dict, left_out: set[str]) -> str:
    if isinstance(method_of(arm), Base):
        return "base"
    return "-".join(part for kind, parts in name_parts(arm).items() if kind not in left_out for part in parts)


def _peft_arms(spec: ArmSpec) -> list[dict]:
    """The peft part of a spec's grid: {method (family), rank, alpha, peft} per keyword combination."""

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
        for method in as_list(spec.method):
            if method == "peft":
                variants = _peft_arms(spec)
            else:
                variants = [
                    dict(method=method, rank=rank, alpha=(spec.alpha if spec.alpha is not None else 2 * rank) if rank else None)
                    for rank in (as_list(spec.rank) if method == "lora" else [None])
                ]  # fmt: skip
            targets = [
                t.label() if isinstance(t, ExplicitModules) else t for t in as_list(spec.target_modules)
            ]
            targets = targets if method != "full" else ["all"]
            for variant, target, lr, wd, dropout, optimizer, seed in itertools.product(
                variants,
                targets,
                as_list(spec.learning_rate),
                as_list(spec.weight_decay),
                as_list(spec.dropout),
                as_list(spec.optimizer),
                as_list(spec.seed),
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
