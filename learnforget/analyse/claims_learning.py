"""The paper's claims on learning and forgetting (§4.1–§4.3), judged on a study's seed-averaged points.

- §4.1: LoRA learns less than full finetuning, at the same budget and at each method's peak
  (`budget_and_peak`, also run with another peft method in LoRA's place); higher rank narrows the gap.
- §4.2: LoRA forgets less (`budget_and_peak` on the forgetting axis); forgetting grows with data.
- §4.3: LoRA and full finetuning lie on one learning–forgetting curve (`claim_tradeoff`).

Conventions and the verdict rule: `learnforget.analyse.claims`.
"""

from __future__ import annotations

from itertools import pairwise
from statistics import mean

from learnforget.analyse.frontier import pareto_frontier
from learnforget.analyse.verdicts import (
    FACTOR,
    StudyPoints,
    best_per,
    both,
    combine,
    missing,
    part,
    show,
    verdict,
)
from learnforget.config.methods import Full, Lora, family_label

# ---------------------------------------------------------------------------------------------------
# §4.1 learning


def budget_and_peak(s: StudyPoints, metric: str, family: str = Lora.family) -> dict:
    """Full finetuning vs LoRA (or another peft `family`) on `metric` ('learning': full learns more;
    'forgetting': the method keeps more), (a) at the same budget: the best configuration of each at the
    final milestone; (b) at each method's peak learning: its best (configuration, milestone)."""
    full, lora, absent = both(s, family=family)
    if absent:
        return absent
    label = family_label(family)
    learning = metric == "learning"
    oriented, sign = (s.learns, 1) if learning else (s.keeps, -1)  # full − LoRA, or LoRA − full
    name, winner = (
        (s.learning[0], "full learns more") if learning else (s.forgetting[0], f"{label} keeps more")
    )
    parts = []
    peaks = (s.peak(s.full(final=False)), s.peak(s.adapters(family, final=False)))
    for at, (f, lo) in ((False, (s.best(full), s.best(lora))), (True, peaks)):
        effect = sign * (oriented(f) - oriented(lo))
        where = "at each method's peak learning" if at else f"same budget ({f['milestone']:,} tokens)"
        evidence = (
            f"{where}, {name}: full {show(f, metric, at)} vs {label} {show(lo, metric, at)}; "
            f"{winner} by {effect:+.4f}"
        )
        parts.append(part(effect, s.noise([f, lo], metric), evidence))
    return combine(parts)


def claim_rank(s: StudyPoints) -> dict:
    """Higher rank narrows the gap: the best learning per rank at each target set, highest − lowest rank."""
    table = best_per(s, s.adapters(), "target_modules", "rank")
    sweeps = {target: [ranks[r] for r in sorted(ranks)] for target, ranks in table.items() if len(ranks) >= 2}
    if not sweeps:
        return missing("no LoRA arms with two or more ranks at the same target modules in this study")
    gains = [s.learns(sw[-1]) - s.learns(sw[0]) for sw in sweeps.values()]
    steps = [s.learns(b) - s.learns(a) for sw in sweeps.values() for a, b in pairwise(sw)]
    full = s.full()
    reference = f" (best full {s.best(full)['learning']:.4f})" if full else ""
    listing = "; ".join(
        f"{t}: " + ", ".join(f"r{p['rank']} {p['learning']:.4f}" for p in sw) for t, sw in sweeps.items()
    )
    evidence = (
        f"best {s.learning[0]} per rank{reference}: {listing}; highest − lowest rank gains {mean(gains):+.4f}"
    )
    noise = s.noise([p for sw in sweeps.values() for p in sw], "learning")
    result = part(mean(gains), noise, evidence)
    worst_drop = -min(steps)
    if result["verdict"] == "supported" and worst_drop > 0 and worst_drop >= FACTOR * noise:
        result["verdict"] = "inconclusive"
        result["evidence"] = f"{evidence}; not monotone: a higher rank learns less by {worst_drop:.4f}"
    return result


# ---------------------------------------------------------------------------------------------------
# §4.2 forgetting


def claim_forgetting_grows(s: StudyPoints) -> dict:
    """Mean over the best configuration of each method of (first milestone − last milestone) kept."""
    growths, compared, listing = [], [], []
    for method, configs in ((Full.family, s.full()), (Lora.family, s.adapters())):
        if not configs:
            continue
        curve = s.curve(s.best(configs)["configuration"])
        if len(curve) < 2:
            continue
        first, last = curve[0], curve[-1]
        growths.append(s.keeps(first) - s.keeps(last))
        compared += [first, last]
        listing.append(
            f"{method} `{first['configuration']}` {first['forgetting']:.4f} at {first['milestone']:,} → "
            f"{last['forgetting']:.4f} at {last['milestone']:,} tokens"
        )
    if not growths:
        return missing("needs ≥2 milestones of a full-finetuning or LoRA configuration")
    effect = mean(growths)
    evidence = f"{s.forgetting[0]} along training: {'; '.join(listing)}; mean extra forgetting {effect:+.4f}"
    return part(effect, s.noise(compared, "forgetting"), evidence)


# ---------------------------------------------------------------------------------------------------
# §4.3 the trade-off curve


def _frontier_line(s: StudyPoints, pts: list[dict]) -> list[tuple[float, float, dict]]:
    """(learning score, kept score, point) of the Pareto frontier of `pts`, by increasing learning."""
    front = pareto_frontier(pts, s.learning, s.forgetting)
    return sorted(((s.learns(p), s.keeps(p), p) for p in front), key=lambda t: t[0])


def frontier_gap(
    line: list[tuple[float, float, dict]], x: float, y: float
) -> tuple[float, list[dict]] | None:
    """(y − the frontier's kept score at learning x, the frontier points used), linear between frontier
    points; None when x lies outside the frontier's learning range."""
    for (x0, y0, p0), (x1, y1, p1) in pairwise(line):
        if x0 <= x <= x1:
            at = y0 if x1 == x0 else y0 + (x - x0) / (x1 - x0) * (y1 - y0)
            return y - at, [p0, p1]
    if len(line) == 1 and line[0][0] == x:
        return y - line[0][1], [line[0][2]]
    return None


def claim_tradeoff(s: StudyPoints) -> dict:
    """LoRA's frontier points vs full finetuning's frontier (the base model included as its no-training
    end): the kept-score gap at the LoRA point's learning level, interpolated on full's frontier. LoRA points
    outside full's learning range are excluded (nothing to compare with). Mean gap ≥ 3× noise: supported,
    better trade-off; ≤ −3× noise: contradicted (LoRA lies behind); within: supported, same curve, unless
    3× noise covers the whole kept range of full's frontier (then nothing could be told apart)."""
    full, lora, absent = both(s, final=False)
    if absent:
        return absent
    full_line = _frontier_line(s, full + ([s.base] if s.base else []))
    lora_line = _frontier_line(s, lora)
    gaps, compared, outside = [], [], 0
    for x, y, p in lora_line:
        found = frontier_gap(full_line, x, y)
        if found is None:
            outside += 1
            continue
        gaps.append(found[0])
        compared += [p, *found[1]]
    if not gaps:
        return missing(f"no LoRA frontier point within full finetuning's {s.learning[0]} range")
    effect, noise = mean(gaps), s.noise(compared, "forgetting")
    span = max(y for _, y, _ in full_line) - min(y for _, y, _ in full_line)
    lora_end = max(x for x, _, _ in lora_line) < max(x for x, _, _ in full_line)
    evidence = (
        f"{len(gaps)} LoRA frontier points within full's {s.learning[0]} range ({outside} outside, excluded): "
        f"{s.forgetting[0]} kept vs full's frontier at the same learning "
        + ", ".join(f"{g:+.4f}" for g in gaps)
        + f", mean {effect:+.4f}; LoRA's frontier ends {'below' if lora_end else 'at or above'} full's "
        "highest learning"
    )
    judged, reason = verdict(effect, noise)
    qualifier = None
    if judged == "supported":
        qualifier = "better trade-off"
    elif judged == "inconclusive" and noise is not None:
        if FACTOR * noise >= span:
            reason = f"3× seed spread ({FACTOR * noise:.4g}) covers full's whole frontier ({span:.4g})"
        else:
            judged, qualifier = "supported", "same curve"
            reason = f"gap within 3× seed spread ({FACTOR * noise:.4g}): the same curve"
    result = {"verdict": judged, "effect": effect, "noise": noise, "evidence": f"{evidence}; {reason}"}
    return {**result, "qualifier": qualifier} if qualifier else result
