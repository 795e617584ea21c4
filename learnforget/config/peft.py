"""Any peft method as an arm: `method: peft` with `peft: {type: LORA, r: 16, use_dora: true, ...}`.

- `method_family`: the readable method name an arm goes by ('dora', 'rslora', 'pissa', 'vera', 'ia3', ...).
- `check_peft_settings`: the type and keywords checked against peft's own config classes (a UserError).
- `peft_config`: the peft config object for one arm, with target modules from our `targets` resolution
  unless the arm gives its own.

The keywords go straight to peft's config class of the type (`LoraConfig`, `VeraConfig`, `IA3Config`, ...),
so every option peft has is available and nothing is re-implemented here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from learnforget.errors import UserError

# Keywords peft sets itself, or that learnforget sets for every arm (the model, the task, inference).
RESERVED = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode"}  # fmt: skip
# LoRA initialisations that rewrite the base weights (ΔW is relative to the original base, not peft's residual).
REWRITING_INITS = ("pissa", "olora", "corda", "eva", "loftq")
# peft methods that train prompts / tokens rather than weights: no ΔW, not a finetuning arm here.
PROMPT_TYPES = {"PROMPT_TUNING", "MULTITASK_PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "ADAPTION_PROMPT",
                "CPT", "CARTRIDGE", "TRAINABLE_TOKENS", "XLORA", "POLY"}  # fmt: skip


def config_classes() -> dict[str, type]:
    """PeftType name -> peft config class, for the weight-adapting methods."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING  # heavy or optional: only this path needs it

    return {
        str(t.value): c for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if str(t.value) not in PROMPT_TYPES
    }


def normalized_type(value: Any) -> str:
    """'lora' / 'LoRA' -> 'LORA' (peft's PeftType name)."""
    return str(value).upper().replace("-", "_")


def keyword_fields(peft_type: str) -> dict[str, dataclasses.Field]:
    """The keywords the type's config class takes (without the reserved ones)."""
    cls = config_classes()[peft_type]
    return {f.name: f for f in dataclasses.fields(cls) if f.name not in RESERVED}


def takes_list(peft_type: str, keyword: str) -> bool:
    """Whether a keyword's own value may be a list (then a list of lists sweeps it)."""
    field = keyword_fields(peft_type).get(keyword)
    return field is not None and "list" in str(field.type).lower()


def check_peft_settings(settings: dict) -> None:
    """A UserError-worthy ValueError for an unknown type or keyword (config loading names the field)."""
    if "type" not in settings:
        raise ValueError(f"peft: needs a type (one of {', '.join(sorted(config_classes()))})")
    peft_type = normalized_type(settings["type"])
    classes = config_classes()
    if peft_type not in classes:
        raise ValueError(
            f"peft.type: unknown peft method {settings['type']!r}; valid: {', '.join(sorted(classes))}"
        )
    known = keyword_fields(peft_type)
    for key in settings:
        if key != "type" and key not in known:
            raise ValueError(
                f"peft.{key}: not a keyword of peft's {classes[peft_type].__name__}; valid: {', '.join(sorted(known))}"
            )


def build_config(settings: dict, target_modules: list[str] | None = None, fan_in_fan_out: bool = False):
    """peft's config object for these settings; `target_modules` (resolved by us) unless the settings name theirs."""
    peft_type = normalized_type(settings["type"])
    cls = config_classes()[peft_type]
    known = keyword_fields(peft_type)
    kwargs = {k: v for k, v in settings.items() if k != "type"}
    if "target_modules" not in kwargs and target_modules is not None:
        kwargs["target_modules"] = target_modules
    if fan_in_fan_out and "fan_in_fan_out" in known and "fan_in_fan_out" not in kwargs:
        kwargs["fan_in_fan_out"] = True
    if "bias" in known and "bias" not in kwargs:
        kwargs["bias"] = "none"
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"peft {peft_type}: {str(e).splitlines()[0]}") from None


def method_family(settings: dict) -> str:
    """The readable name of the method: 'lora', 'dora', 'rslora', 'pissa', 'olora', 'vera', 'ia3', 'loha'...
    LoRA variants are named by what they change (DoRA's magnitude, rsLoRA's scaling, the initialisation)."""
    peft_type = normalized_type(settings["type"])
    if peft_type != "LORA":
        return peft_type.lower().replace("_", "")
    init = settings.get("init_lora_weights", True)
    variants = [str(init).split("_")[0].lower()] if isinstance(init, str) and init != "gaussian" else []
    variants += ["rslora"] * bool(settings.get("use_rslora")) + ["dora"] * bool(settings.get("use_dora"))
    return "-".join(variants) or "lora"


def rewrites_base(settings: dict | None) -> bool:
    """Whether the method's initialisation changes the base weights (PiSSA, OLoRA, ...)."""
    if not settings:
        return False
    init = settings.get("init_lora_weights")
    return isinstance(init, str) and init.lower().startswith(REWRITING_INITS)


def rank_of(settings: dict) -> int | None:
    """The method's rank keyword (r), when it has one and it is a number."""
    r = settings.get("r")
    return r if isinstance(r, int) and not isinstance(r, bool) else None


def alpha_of(settings: dict) -> float | None:
    alpha = settings.get("lora_alpha", settings.get("alpha"))
    return float(alpha) if isinstance(alpha, int | float) and not isinstance(alpha, bool) else None


def check_quantization(arms) -> None:
    """QLoRA arms need bitsandbytes and a CUDA GPU: refused up front (one line) where either is missing."""
    quantized = [a for a in arms if a.quantization]
    if not quantized:
        return
    import importlib.util  # only this path needs it

    import torch  # heavy or optional: only this path needs it

    missing = [what for what, ok in (("a CUDA GPU", torch.cuda.is_available()),
               ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None)) if not ok]  # fmt: skip
    if missing:
        arm = quantized[0]
        raise UserError(
            f"arm {arm.name}: quantization {arm.quantization} (QLoRA) needs bitsandbytes on a CUDA GPU, and this "
            f"machine lacks {' and '.join(missing)}; drop `quantization` or run the study on a GPU machine"
        )
