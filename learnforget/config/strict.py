"""What every config model shares: strict validation (unknown keys and loose types are errors)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never silently fall back to a default. Types are strict: a
    quoted '1e-3' is text, not a learning rate (YAML numbers such as 1e-3 load as numbers, `_Loader`)."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_default=True, allow_inf_nan=False, strict=True
    )
