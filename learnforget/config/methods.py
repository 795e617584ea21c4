"""A finetuning method is a type: `Full`, `Lora` (the paper's), `Peft` (any peft method), and `Base`, the
untouched model every study measures first.

Each type knows its family (the `method` the store records: 'full', 'lora', 'dora', 'vera', ...), its
label for people, whether it adapts a frozen base, the parts it adds to an arm's name, and the peft
settings its model is built from (`arms/build.py` hands them to peft: the paper's LoRA goes through the
same builder as every other peft method). `method_of` gives the type of an arm, or of a store row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from learnforget.config.peft import method_family

LABELS = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "pissa": "PiSSA", "olora": "OLoRA",
          "vera": "VeRA", "ia3": "IA³", "loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "boft": "BOFT",
          "adalora": "AdaLoRA"}  # fmt: skip
# Keywords a peft arm's name already says through its family (dora, rslora, pissa, ...) or its rank.
_NAMED_BY_FAMILY = {"type", "r", "use_dora", "use_rslora", "init_lora_weights"}
# Module-set keywords: a peft arm that names its own modules is 'custom' (its settings show which).
_MODULE_KEYWORDS = {"target_modules", "feedforward_modules", "exclude_modules"}
_SHORT_KEYWORDS = {"lora_alpha": "a", "alpha": "a", "lora_dropout": "do"}
MODULE_SEPARATOR = "+"  # joins an explicit module list into one string: 'q_proj+v_proj'


def short_number(value: float) -> str:
    """Short when exact (0.1, 1), else every digit: distinct values get distinct names."""
    text = f"{value:g}"
    return text if float(text) == value else repr(float(value))


def family_label(family: str) -> str:
    """'LoRA', 'DoRA', 'IA³', ... for a family name; other names as they are."""
    return LABELS.get(family, family)


class MethodKind:
    """What every method type answers (the defaults are those of methods that train the base's own weights)."""

    family = ""
    adapts_frozen_base = False
    trains = True

    @property
    def label(self) -> str:
        return family_label(self.family)

    def name_parts(self) -> list[str]:
        return []

    def peft_settings(self) -> dict | None:
        """peft's config keywords for this method ('type' and its keywords), or None: no adapter."""
        return None


@dataclass(frozen=True)
class Base(MethodKind):
    """The base model itself: measured at 0 tokens, trains nothing."""

    family = "base"
    trains = False


@dataclass(frozen=True)
class Full(MethodKind):
    """Full finetuning: every weight of the base trains (the embeddings too, unless frozen)."""

    family = "full"


@dataclass(frozen=True)
class Lora(MethodKind):
    """The paper's LoRA: rank r, alpha (2r by default), dropout, on a named set of linear layers."""

    rank: int
    alpha: float
    target_modules: str
    dropout: float = 0.0
    family = "lora"
    adapts_frozen_base = True

    def name_parts(self) -> list[str]:
        parts = [f"r{self.rank}", self.target_modules]
        return parts + ([f"a{short_number(self.alpha)}"] if self.alpha != 2 * self.rank else [])

    def peft_settings(self) -> dict:
        """peft's LoraConfig keywords (bias 'none' and the targets are added by the builder)."""
        return {"type": "LORA", "r": self.rank, "lora_alpha": self.alpha, "lora_dropout": self.dropout}


@dataclass(frozen=True)
class Peft(MethodKind):
    """Any peft method, from its type and keywords as the study gives them ({type: VERA, r: 256})."""

    settings: dict[str, Any] = field(hash=False)
    target_modules: str = "all"
    adapts_frozen_base = True

    @property
    def family(self) -> str:  # type: ignore[override]  (a peft method's family depends on its settings)
        return method_family(self.settings)

    def name_parts(self) -> list[str]:
        """'r16', the target set unless 'all', then every other keyword: 'a32', 'do0.05', 'd_initial0.1'."""
        peft = self.settings
        parts = [f"r{peft['r']}"] if "r" in peft else []
        if _MODULE_KEYWORDS & set(peft):
            parts.append("custom")
        elif self.target_modules != "all":
            parts.append(self.target_modules)
        for key in sorted(set(peft) - _NAMED_BY_FAMILY - _MODULE_KEYWORDS):
            value = peft[key]
            if isinstance(value, list):
                text = MODULE_SEPARATOR.join(str(v) for v in value)
            else:
                text = (
                    short_number(value) if isinstance(value, float) else str(value).lower().replace(" ", "")
                )
            parts.append(f"{_SHORT_KEYWORDS.get(key, key)}{text}")
        return parts

    def peft_settings(self) -> dict:
        return self.settings


MethodType = Base | Full | Lora | Peft


def method_of(settings: dict) -> MethodType:
    """The method of an arm's settings (an `Arm.model_dump()`, or a row of the store, whose `peft` may be
    JSON text)."""
    method, peft = settings.get("method"), settings.get("peft")
    if method == "base":
        return Base()
    if method == "full":
        return Full()
    if peft:
        if isinstance(peft, str):  # a row of the store
            peft = json.loads(peft)
        return Peft(peft, settings.get("target_modules") or "all")
    return Lora(
        settings["rank"],
        settings["alpha"],
        settings.get("target_modules") or "all",
        settings.get("dropout") or 0.0,
    )
