"""What an arm tells the study's display while it runs: typed events, put on a queue by worker processes
(or handed straight to the display when the arm runs in the study's own process)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class Step:
    """An optimizer step finished (`step` counts from 1)."""

    arm: str
    step: int
    total: int
    loss: float


@dataclass(frozen=True)
class Milestone:
    """A milestone was measured and recorded."""

    arm: str
    step: int
    tokens: int
    metrics: dict[str, float] = field(hash=False)


@dataclass(frozen=True)
class Spectra:
    """ΔW spectra at a milestone: `done` of `total` matrices."""

    arm: str
    done: int
    total: int


@dataclass(frozen=True)
class Ended:
    """The arm stopped: trained to the end, failed (its error) or diverged (why)."""

    arm: str
    status: Literal["done", "failed", "diverged"]
    reason: str | None = None


Event = Step | Milestone | Spectra | Ended
