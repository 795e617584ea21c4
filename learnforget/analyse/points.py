"""A study's numbers as points: one per (arm, milestone), then one per (configuration, milestone).

Pure functions over plain rows (`Store.metric_rows()`: each metric joined with its arm's settings), so
they run without torch or a store:

- `points`: one point per (arm, milestone) with the arm's settings, its configuration and sweep, its
  learning and forgetting values and every other metric measured there.
- `seed_average`: one point per (configuration, milestone), seeds averaged, with each metric's seed spread.
- `is_base` / `is_full` / `is_adapter` / `is_paper_method`: which method a point's arm trains, from its
  type (`method_of`).

An axis is a `(metric name, higher is better)` pair, e.g. `("code/loss", False)`. A *score* is a value
oriented so that higher is better (negated when lower is better).

A configuration (an arm without its seed) and a sweep (a configuration without its learning rate) are
named from the arm's settings (`configuration_label`, `sweep_label`), never parsed from its name; two
different configurations that would share a label each get `-` and 6 hex digits of their settings' hash.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from statistics import mean

from learnforget.config.arms import (
    ARM_SETTINGS,
    CONFIGURATION_SETTINGS,
    SWEEP_SETTINGS,
    arm_id,
    configuration_label,
    sweep_label,
)
from learnforget.config.methods import Base, Full, Lora, MethodType, method_of

Axis = tuple[str, bool]
# The settings a point carries: the arm's, but the seed (a seed-averaged point has many).
SETTINGS = CONFIGURATION_SETTINGS
# Settings a store written before they existed lacks: read as their defaults.
DEFAULT_SETTINGS = {"optimizer": "adamw", "quantization": None}


def score(value: float, higher_is_better: bool) -> float:
    """The value oriented so that higher is better."""
    return value if higher_is_better else -value


def degradation(value: float, base_value: float, higher_is_better: bool) -> float:
    """How much worse than the base a forgetting value is (positive = forgot: loss rise, accuracy drop)."""
    return score(base_value, higher_is_better) - score(value, higher_is_better)


def half_range(values: list[float]) -> float | None:
    """Seed spread: (max - min) / 2 over seeds; None (unknown) with fewer than two seeds."""
    return (max(values) - min(values)) / 2 if len(values) >= 2 else None


# ---------------------------------------------------------------------------------------------------
# Methods


def is_base(p: dict) -> bool:
    """The base model's point (or row)."""
    return isinstance(method_of(p), Base)


def is_full(p: dict) -> bool:
    """A full-finetuning point (or row)."""
    return isinstance(method_of(p), Full)


def is_adapter(p: dict, family: str = Lora.family) -> bool:
    """An adapter point of a family: the paper's LoRA by default (a peft arm of plain LoRA too, whose
    family is 'lora'), else 'dora', 'vera', ..."""
    kind = method_of(p)
    return kind.adapts_frozen_base and kind.family == family


def is_paper_kind(kind: MethodType) -> bool:
    """Full finetuning or the paper's LoRA (a peft arm of plain LoRA included)."""
    return isinstance(kind, Full) or (kind.adapts_frozen_base and kind.family == Lora.family)


def is_paper_method(p: dict) -> bool:
    """A point (or row) of full finetuning or of the paper's LoRA."""
    return is_paper_kind(method_of(p))


# ---------------------------------------------------------------------------------------------------
# Configurations and sweeps


def arm_settings(row: dict) -> dict:
    """An arm's settings (ARM_SETTINGS) from a store row; settings the row lacks (or leaves empty) read as
    their defaults (DEFAULT_SETTINGS)."""
    settings = {k: row.get(k) for k in ARM_SETTINGS}
    return {k: DEFAULT_SETTINGS.get(k) if v is None else v for k, v in settings.items()}


def _identity(settings: dict, keys: tuple[str, ...]) -> str:
    """A hash of the settings `keys`, the same whatever form a store row gives them (JSON text, 0/1)."""
    canonical = {}
    for key in keys:
        value = settings.get(key)
        if key == "peft" and isinstance(value, str):
            value = json.loads(value)
        elif value is not None and ARM_SETTINGS[key] == "REAL":
            value = float(value)
        elif value is not None and ARM_SETTINGS[key] == "INTEGER":
            value = int(value)
        canonical[key] = value
    return arm_id(canonical)


def distinct_labels(
    settings: dict[str, dict], label: Callable[[dict], str], keys: tuple[str, ...]
) -> dict[str, str]:
    """arm -> label of its settings; where arms that differ in `keys` share a label, each gets `-` and 6
    hex digits of its settings' hash, so that different configurations never merge."""
    labels = {arm: label(s) for arm, s in settings.items()}
    identities = {arm: _identity(s, keys) for arm, s in settings.items()}
    shared: dict[str, set[str]] = defaultdict(set)
    for arm, text in labels.items():
        shared[text].add(identities[arm])
    return {
        arm: text if len(shared[text]) == 1 else f"{text}-{identities[arm][:6]}"
        for arm, text in labels.items()
    }


def arm_labels(rows: list[dict]) -> dict[str, tuple[str, str]]:
    """arm -> (configuration, sweep) of every arm in the rows, from its settings."""
    settings: dict[str, dict] = {}
    for row in rows:
        if row["arm"] not in settings:
            settings[row["arm"]] = arm_settings(row)
    configurations = distinct_labels(settings, configuration_label, CONFIGURATION_SETTINGS)
    sweeps = distinct_labels(settings, sweep_label, SWEEP_SETTINGS)
    return {arm: (configurations[arm], sweeps[arm]) for arm in settings}


# ---------------------------------------------------------------------------------------------------
# Points


def points(rows: list[dict], learning: Axis, forgetting: Axis) -> list[dict]:
    """One point per (arm, milestone) that has both axes' values, in row order.

    Each point: the arm's settings (SETTINGS, seed, step, milestone), `arm`, `configuration`, `sweep`,
    `learning` and `forgetting` values, and `metrics` (every metric measured at that milestone).
    Non-finite values are dropped. The base model is a point with method 'base' (milestone 0).
    """
    labels = arm_labels(rows)
    grouped: dict[tuple[str, int], dict] = {}
    for row in rows:
        key = (row["arm"], row["milestone"])
        if key not in grouped:
            settings = arm_settings(row)
            grouped[key] = {k: settings[k] for k in SETTINGS}
            grouped[key].update({k: row.get(k) for k in ("seed", "step", "milestone")})
            configuration, sweep = labels[row["arm"]]
            grouped[key].update(arm=row["arm"], configuration=configuration, sweep=sweep, metrics={})
        if row["value"] is not None and math.isfinite(row["value"]):
            grouped[key]["metrics"][row["metric"]] = float(row["value"])
    result = []
    for point in grouped.values():
        if learning[0] in point["metrics"] and forgetting[0] in point["metrics"]:
            point.update(learning=point["metrics"][learning[0]], forgetting=point["metrics"][forgetting[0]])
            result.append(point)
    return result


def seed_average(pts: list[dict]) -> list[dict]:
    """One point per (configuration, milestone): means over seeds, with each metric's seed spread.

    Adds `arms` (the seeds' arm names), `seeds` (count), `learning_spread`, `forgetting_spread` and
    `spreads` (metric -> half-range over seeds, None with one seed).
    """
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for p in pts:
        groups[(p["configuration"], p["milestone"])].append(p)
    averaged = []
    for (configuration, milestone), group in groups.items():
        point = {k: group[0][k] for k in (*SETTINGS, "sweep", "step")}
        names = {m for p in group for m in p["metrics"]}
        per_metric = {m: [p["metrics"][m] for p in group if m in p["metrics"]] for m in names}
        point.update(
            configuration=configuration,
            milestone=milestone,
            arms=sorted(p["arm"] for p in group),
            seeds=len(group),
            learning=mean(p["learning"] for p in group),
            forgetting=mean(p["forgetting"] for p in group),
            learning_spread=half_range([p["learning"] for p in group]),
            forgetting_spread=half_range([p["forgetting"] for p in group]),
            metrics={m: mean(v) for m, v in per_metric.items()},
            spreads={m: half_range(v) for m, v in per_metric.items()},
        )
        averaged.append(point)
    return averaged


def base_point(pts: list[dict]) -> dict | None:
    """The base model's point (seed-averaged if it appears more than once), or None."""
    base = [p for p in seed_average(pts) if is_base(p)]
    return base[0] if base else None
