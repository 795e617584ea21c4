"""Beyond the paper (ours): LoRA forgets less than full finetuning *at matched learning*.

The paper compares forgetting at the same budget and at each method's peak; this stricter test reads each
configuration's learning–forgetting curve (the base model, then its milestones) where both compared
configurations first reach the same learning levels (`matched_forgetting`), and compares what they kept.
A contradiction here does not contradict the paper.
"""

from __future__ import annotations

from itertools import pairwise
from statistics import mean

from learnforget.analyse.claims_practice import regularized_full
from learnforget.analyse.points import score
from learnforget.analyse.verdicts import StudyPoints, both, missing, part
from learnforget.config.methods import Lora, family_label

MATCHED_LEVELS = 5  # learning levels at which forgetting is compared (our matched-learning test)


def _curve_scores(s: StudyPoints, configuration: str) -> list:
    """(learning score, kept score, milestone) along training, starting at the base model."""
    milestones = ([s.base] if s.base is not None else []) + s.curve(configuration)
    return [(s.learns(p), s.keeps(p), p["milestone"]) for p in milestones]


def _at_level(curve: list, level: float) -> float | None:
    """Kept score where the curve first reaches a learning level (linear between milestones)."""
    if len(curve) == 1:
        return curve[0][1] if curve[0][0] == level else None
    for (x0, y0, _), (x1, y1, _) in pairwise(curve):
        if min(x0, x1) <= level <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (level - x0) / (x1 - x0) * (y1 - y0)
    return None


def matched_forgetting(curve_a: list, curve_b: list) -> list[tuple[float, float, float]] | None:
    """(learning level, kept score of a, of b) at MATCHED_LEVELS levels evenly spread over the part of
    the learning range that both curves reach, above its lower end (where both start, at the base); None
    when the ranges do not overlap. The curves are polylines through their milestones in training order;
    at a level, each curve is read where it first reaches it."""
    low = max(min(x for x, _, _ in c) for c in (curve_a, curve_b))
    high = min(max(x for x, _, _ in c) for c in (curve_a, curve_b))
    if high <= low:
        return None
    levels = [low + (high - low) * k / MATCHED_LEVELS for k in range(1, MATCHED_LEVELS + 1)]
    return [(level, _at_level(curve_a, level), _at_level(curve_b, level)) for level in levels]


def _matched(s: StudyPoints, lora: dict, other: dict, label: str = "LoRA") -> dict | None:
    """LoRA's forgetting advantage over another configuration at matched learning (None: no overlap).
    Adds `levels`: (learning value, LoRA's forgetting value, the other's) at each matched level."""
    matched = matched_forgetting(
        _curve_scores(s, lora["configuration"]), _curve_scores(s, other["configuration"])
    )
    if matched is None:
        return None
    effect = mean(a - b for _, a, b in matched)
    used = s.curve(lora["configuration"]) + s.curve(other["configuration"])
    back = (s.learning[1], s.forgetting[1])  # back to the metrics' own values (score is its own inverse)
    levels = [(score(x, back[0]), score(a, back[1]), score(b, back[1])) for x, a, b in matched]
    evidence = (
        f"{label} `{lora['configuration']}` keeps {s.forgetting[0]} better than `{other['configuration']}` "
        f"by {effect:+.4f} on average"
    )
    return {**part(effect, s.noise(used, "forgetting"), evidence), "levels": levels}


def claim_matched(s: StudyPoints, family: str = Lora.family) -> dict:
    """LoRA (or another peft `family`) forgets less than full finetuning at matched learning: their best
    configurations' curves compared where both reach the same learning."""
    full, lora, absent = both(s, family=family)
    if absent:
        return absent
    bf, bl = s.best(full), s.best(lora)
    result = _matched(s, bl, bf, family_label(family))
    if result is None:
        return missing(
            f"learning ranges of `{bl['configuration']}` and `{bf['configuration']}` do not overlap"
        )
    levels = ", ".join(f"{x:.3f}: {a:.3f} vs {b:.3f}" for x, a, b in result.pop("levels"))
    detail = f"{s.forgetting[0]} of {family_label(family)} vs full where both first reach {s.learning[0]} = {levels}"
    return {**result, "evidence": f"{detail}; {result['evidence']}"}


def claim_matched_regularizers(s: StudyPoints) -> dict:
    """LoRA forgets less than each regularized full-finetuning arm at matched learning."""
    lora, regularized = s.adapters(), regularized_full(s)
    if not lora or not regularized:
        return missing("needs LoRA arms and regularized full-finetuning arms (weight_decay or dropout > 0)")
    bl = s.best(lora)
    results = [r for p in regularized if (r := _matched(s, bl, p)) is not None]
    if not results:
        return missing(f"learning ranges of `{bl['configuration']}` and the regularized arms do not overlap")
    weakest = min(results, key=lambda r: r["effect"])  # LoRA must beat the strongest regularizer
    levels = results[0]["levels"]
    evidence = (
        f"mean over {len(levels)} matched {s.learning[0]} levels {levels[0][0]:.3f}..{levels[-1][0]:.3f}: "
        + ", ".join(r["evidence"].split(";")[0] for r in results)
    )
    return part(
        weakest["effect"], weakest["noise"], f"{evidence}; smallest LoRA advantage {weakest['effect']:+.4f}"
    )
