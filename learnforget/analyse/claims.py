"""The claim judge: each finding of "LoRA Learns Less and Forgets Less" checked against a study's own numbers.

`judge_claims` returns one verdict per claim (supported, contradicted or inconclusive) with its numbers.
The paper's claims (`PAPER_CLAIMS`, one per finding of §4.1–§4.6) measure the paper's own comparisons:
the same training budget (final milestone) and each method's peak. Our stricter tests (`OUR_CLAIMS`,
"beyond the paper") compare forgetting at matched learning; they are judged and shown apart.
`learnforget.analyse.suite_claims` judges the findings that compare settings (IFT vs CPT, code vs math);
`learnforget.analyse.verdicts` holds the verdict rule and the noise estimate.

Conventions (the same for every claim):
- Only the paper's arms are judged: full finetuning trains embeddings and LM head, LoRA does not.
- Seeds of a configuration (an arm without its seed suffix) are averaged at each milestone.
- "Best" configuration of a method = the best seed-averaged learning metric at the final milestone (the
  same budget); a method's "peak" = its best (configuration, milestone) over all milestones. Full
  finetuning there means its plain arms; the weight-decay / dropout ones are the §4.4 baselines.
- `effect` is oriented so that positive points in the claim's direction, in the metric's own units
  (a loss difference in nats, an accuracy difference, a rank fraction).
- Noise of a compared point = the seed spread (half-range (max − min)/2 across seeds) of the compared
  metric at that point when it ran ≥2 seeds; otherwise the pooled spread of comparable configurations:
  the root mean square of the spreads of every *replicated, stable* configuration of the same method
  family at the same milestone. Method family = the method, and whether dropout is on (the seed sets
  LoRA's initialisation and dropout masks, the only sources of seed noise). Stable = its seed-averaged
  learning metric is at least the base model's at that milestone (a diverging learning rate, which makes
  the target domain worse than before training, says nothing about the noise of arms that learn). A
  comparison's noise is the largest over its compared points; unknown when none of them has one.
- Verdict: supported when effect ≥ 3 × noise (and > 0); contradicted when −effect ≥ 3 × noise;
  inconclusive otherwise. With unknown noise the verdict is inconclusive ("needs ≥2 seeds"): a single
  run cannot tell an effect from seed luck, however large it looks. Missing arms → inconclusive.
- Claims with two parts are supported only when both parts are; contradicted when either part is.
- §4.3 (the same trade-off curve) is the one claim whose "within noise" outcome supports it; see
  `_claim_tradeoff`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from statistics import mean

from learnforget.analyse.frontier import Axis, lr_sensitivity, pareto_frontier, score, study_axes, sweep_name
from learnforget.analyse.verdicts import (
    DELTA_FRACTION,
    FACTOR,
    RANDOM_FRACTION,
    StudyPoints,
    combine,
    missing,
    part,
    spread,
    study_points,
    verdict,
)

MATCHED_LEVELS = 5  # learning levels at which forgetting is compared (our matched-learning test)
# The paper's ranking of LoRA target modules, best first: its "MLP" is up_proj + down_proj (no gate_proj)
# and "All" is attention + that MLP set. The gate-including groups stand in when a study lacks these.
PAPER_TARGETS = ("paper-all", "paper-mlp", "attention")
GATE_TARGETS = ("all", "mlp", "attention")

# id -> (section of the paper, statement). The paper's findings as it states them.
PAPER_CLAIMS = {
    "4.1": ("§4.1", "LoRA learns less than full finetuning, at the same training budget and at each method's peak."),
    "4.1-rank": ("§4.1", "Higher LoRA rank narrows the learning gap to full finetuning."),
    "4.2": ("§4.2", "LoRA forgets less than full finetuning, at the same training budget and at each method's peak learning."),
    "4.2-data": ("§4.2", "Forgetting grows with training data."),
    "4.3": ("§4.3", "LoRA and full finetuning lie on one learning–forgetting curve (LoRA learns less, forgets less); "
             "a better LoRA trade-off is the paper's occasional case."),
    "4.4": ("§4.4", "LoRA keeps source-domain performance better than full finetuning with weight decay or attention dropout."),
    "4.4-diversity": ("§4.4", "LoRA keeps generations more diverse than full finetuning."),
    "4.5": ("§4.5", "Full finetuning's ΔW needs a far higher rank for 90% of its variance than LoRA's, "
             "and its rank grows with training."),
    "4.6-lr": ("§4.6", "LoRA is more sensitive to the learning rate than full finetuning."),
    "4.6-best-lr": ("§4.6", "LoRA's best learning rate is higher than full finetuning's (paper: about 10×)."),
    "4.6-targets": ("§4.6", "LoRA target modules rank All > MLP > Attention."),
    "4.6-alpha": ("§4.6", "α = 2r is a good LoRA scaling (judged only where the study sweeps α)."),
}  # fmt: skip
# Stricter than the paper: forgetting compared where both methods reach the same learning.
OUR_CLAIMS = {
    "ours-matched": ("ours", "LoRA forgets less than full finetuning at matched learning."),
    "ours-matched-reg": ("ours", "LoRA forgets less than weight-decay / dropout full finetuning at matched learning."),
}  # fmt: skip
# Shuttleworth et al. (2024): LoRA's intruder dimensions go with forgetting (judged in peft_claims).
INTRUDER_CLAIM = (
    "Shuttleworth",
    "Across adapter arms, more intruder dimensions in ΔW go with more forgetting.",
)


def _value(p: dict, metric: str) -> float | None:
    return p[metric] if metric in ("learning", "forgetting") else p["metrics"].get(metric)


def _show(p: dict, metric: str, at: bool = False) -> str:
    half_range = spread(p, metric)
    text = f"{_value(p, metric):.4f}" + ("" if half_range is None else f" ± {half_range:.4f}")
    where = f" at {p['milestone']:,} tokens" if at else ""
    return f"`{p['configuration']}`{where} {text} (n={p['seeds']})"


def _both(
    s: StudyPoints, final: bool = True, method: str = "lora"
) -> tuple[list[dict], list[dict], dict | None]:
    """(full points, the method's points (LoRA's by default), the 'missing' verdict when either is absent)."""
    full, lora = s.of("full", final), s.of(method, final)
    if full and lora:
        return full, lora, None
    return (
        full,
        lora,
        missing(f"no {'full-finetuning' if not full else method_label(method)} arms in this study"),
    )


# Display names of peft methods by family (learnforget.config.peft.method_family); others show as named.
METHOD_LABELS = {"lora": "LoRA", "rslora": "rsLoRA", "dora": "DoRA", "pissa": "PiSSA", "olora": "OLoRA",
                 "vera": "VeRA", "ia3": "IA³", "loha": "LoHa", "lokr": "LoKr", "oft": "OFT", "boft": "BOFT",
                 "adalora": "AdaLoRA"}  # fmt: skip


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


# ---------------------------------------------------------------------------------------------------
# §4.1 learning


def _budget_and_peak(s: StudyPoints, metric: str, method: str = "lora") -> dict:
    """Full finetuning vs LoRA (or another peft `method`) on `metric` ('learning': full learns more;
    'forgetting': the method keeps more), (a) at the same budget: the best configuration of each at the
    final milestone; (b) at each method's peak learning: its best (configuration, milestone)."""
    full, lora, absent = _both(s, method=method)
    if absent:
        return absent
    label = method_label(method)
    learning = metric == "learning"
    oriented, sign = (s.learns, 1) if learning else (s.keeps, -1)  # full − LoRA, or LoRA − full
    name, winner = (
        (s.learning[0], "full learns more") if learning else (s.forgetting[0], f"{label} keeps more")
    )
    parts = []
    for at, (f, lo) in ((False, (s.best(full), s.best(lora))), (True, (s.peak("full"), s.peak(method)))):
        effect = sign * (oriented(f) - oriented(lo))
        where = "at each method's peak learning" if at else f"same budget ({f['milestone']:,} tokens)"
        evidence = (
            f"{where}, {name}: full {_show(f, metric, at)} vs {label} {_show(lo, metric, at)}; "
            f"{winner} by {effect:+.4f}"
        )
        parts.append(part(effect, s.noise([f, lo], metric), evidence))
    return combine(parts)


def _best_per(s: StudyPoints, configs: list[dict], outer: str, inner: str) -> dict:
    """{outer value: {inner value: best-learning configuration}}, e.g. per target modules, per rank."""
    table: dict = defaultdict(dict)
    for p in configs:
        cell = table[p[outer]]
        if p[inner] not in cell or s.learns(p) > s.learns(cell[p[inner]]):
            cell[p[inner]] = p
    return table


def _claim_rank(s: StudyPoints) -> dict:
    table = _best_per(s, s.of("lora"), "target_modules", "rank")
    sweeps = {target: [ranks[r] for r in sorted(ranks)] for target, ranks in table.items() if len(ranks) >= 2}
    if not sweeps:
        return missing("no LoRA arms with two or more ranks at the same target modules in this study")
    gains = [s.learns(sw[-1]) - s.learns(sw[0]) for sw in sweeps.values()]
    steps = [s.learns(b) - s.learns(a) for sw in sweeps.values() for a, b in pairwise(sw)]
    full = s.of("full")
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


def _claim_forgetting_grows(s: StudyPoints) -> dict:
    """Mean over the best configuration of each method of (first milestone − last milestone) kept."""
    growths, compared, listing = [], [], []
    for method in ("full", "lora"):
        if not (configs := s.of(method)):
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


def _claim_tradeoff(s: StudyPoints) -> dict:
    """LoRA's frontier points vs full finetuning's frontier (the base model included as its no-training
    end): the kept-score gap at the LoRA point's learning level, interpolated on full's frontier. LoRA points
    outside full's learning range are excluded (nothing to compare with). Mean gap ≥ 3× noise: supported,
    better trade-off; ≤ −3× noise: contradicted (LoRA lies behind); within: supported, same curve, unless
    3× noise covers the whole kept range of full's frontier (then nothing could be told apart)."""
    full, lora, absent = _both(s, final=False)
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


# ---------------------------------------------------------------------------------------------------
# §4.4 regularization and diversity


def _regularized(s: StudyPoints) -> list[dict]:
    return [p for p in s.of("full", regularized=True) if p["weight_decay"] or p["dropout"]]


def _claim_regularizers(s: StudyPoints) -> dict:
    lora, regularized = s.of("lora"), _regularized(s)
    if not lora:
        return missing("no LoRA arms in this study")
    if not regularized:
        return missing("no regularized full-finetuning arms (weight_decay > 0 or dropout > 0) in this study")
    bl = s.best(lora)
    advantages = {p["configuration"]: s.keeps(bl) - s.keeps(p) for p in regularized}
    weakest = min(regularized, key=lambda p: advantages[p["configuration"]])  # LoRA must beat each one
    listing = ", ".join(f"`{name}` {a:+.4f}" for name, a in advantages.items())
    evidence = (
        f"same budget ({bl['milestone']:,} tokens), {s.forgetting[0]}: best LoRA {_show(bl, 'forgetting')} "
        f"keeps more than {listing}; smallest advantage vs {_show(weakest, 'forgetting')}"
    )
    return part(advantages[weakest["configuration"]], s.noise([bl, weakest], "forgetting"), evidence)


def _claim_diversity(s: StudyPoints, metric: str | None) -> dict:
    measured = [p for p in s.final if metric and metric in p["metrics"]]
    full = [p for p in measured if p["method"] == "full"]
    lora = [p for p in measured if p["method"] == "lora"]
    if not full or not lora:
        what = (
            "no diversity metric"
            if not metric
            else f"no {'full-finetuning' if not full else 'LoRA'} arms with `{metric}`"
        )
        return missing(f"{what} in this study")
    bf, bl = s.best(full), s.best(lora)
    effect = bl["metrics"][metric] - bf["metrics"][metric]
    evidence = (
        f"{metric} (higher = more diverse): best LoRA {_show(bl, metric)} vs best full {_show(bf, metric)}; "
        f"LoRA more diverse by {effect:+.4f}"
    )
    return part(effect, s.noise([bf, bl], metric), evidence)


# ---------------------------------------------------------------------------------------------------
# §4.5 ΔW spectra


def _spectrum_noise(s: StudyPoints, compared: list[dict]) -> float | None:
    """Seed spread of the rank fraction, but never below its resolution: ranks are integers, so a fraction
    of min(m, n) moves in steps of 1/min(m, n) and identical seeds say nothing about smaller effects."""
    noise = s.noise(compared, DELTA_FRACTION)
    return None if noise is None else max(noise, s.resolution)


def _claim_spectrum(s: StudyPoints) -> dict:
    full = [p for p in s.of("full") if DELTA_FRACTION in p["metrics"]]
    lora = [p for p in s.of("lora") if DELTA_FRACTION in p["metrics"]]
    if not full or not lora:
        return missing(f"no {'full-finetuning' if not full else 'LoRA'} arms with ΔW spectra in this study")
    bf = s.best(full)
    top_rank = max(p["rank"] for p in lora)
    bl = s.best([p for p in lora if p["rank"] == top_rank])
    f_full, f_lora = bf["metrics"][DELTA_FRACTION], bl["metrics"][DELTA_FRACTION]
    ratio = f"{f_full / f_lora:.1f}×" if f_lora else "∞×"
    higher = part(
        f_full - f_lora,
        _spectrum_noise(s, [bf, bl]),
        f"median rank-for-90% / min dim at {bf['milestone']:,} tokens: full {_show(bf, DELTA_FRACTION)} vs "
        f"LoRA r{top_rank} {_show(bl, DELTA_FRACTION)} ({ratio}; paper: 10–100×)",
    )
    curve = [p for p in s.curve(bf["configuration"]) if DELTA_FRACTION in p["metrics"]]
    if len(curve) < 2:
        return combine([higher, missing("full finetuning's spectrum needs ≥2 milestones to show a trend")])
    first, last = curve[0], curve[-1]
    growth = last["metrics"][DELTA_FRACTION] - first["metrics"][DELTA_FRACTION]
    evidence = (
        f"full `{bf['configuration']}` fraction {first['metrics'][DELTA_FRACTION]:.4f} at "
        f"{first['milestone']:,} → {last['metrics'][DELTA_FRACTION]:.4f} at {last['milestone']:,} tokens "
        f"(growth {growth:+.4f})"
    )
    if all(RANDOM_FRACTION in p["metrics"] for p in (first, last)):  # shown, not judged
        gap = [abs(p["metrics"][RANDOM_FRACTION] - p["metrics"][DELTA_FRACTION]) for p in (first, last)]
        evidence += f"; gap to a random matrix's fraction {gap[0]:.4f} → {gap[1]:.4f}"
    return combine([higher, part(growth, _spectrum_noise(s, [first, last]), evidence)])


# ---------------------------------------------------------------------------------------------------
# §4.6 practice


def _sweeps(s: StudyPoints) -> tuple[dict | None, dict | None]:
    """LR-sweep rows (`lr_sensitivity`) of the best full and the best LoRA configuration's sweeps."""
    rows = {r["sweep"]: r for r in lr_sensitivity(s.pts, s.learning)}
    found = []
    for method in ("full", "lora"):
        configs = s.of(method)
        found.append(rows.get(sweep_name(s.best(configs)["configuration"])) if configs else None)
    return found[0], found[1]


def _sweep_points(s: StudyPoints, row: dict, rates: list[float]) -> list[dict]:
    return [
        p
        for p in s.trained
        if sweep_name(p["configuration"]) == row["sweep"]
        and p["milestone"] == row["milestone"]
        and p["learning_rate"] in rates
    ]


def _neighbours(row: dict) -> list[float]:
    lrs, i = row["learning_rates"], row["learning_rates"].index(row["best_learning_rate"])
    return [lrs[j] for j in (i - 1, i, i + 1) if 0 <= j < len(lrs)]


def _claim_lr_sensitivity(s: StudyPoints) -> dict:
    rf, rl = _sweeps(s)
    if any(r is None or r["per_decade"] is None for r in (rf, rl)):
        return missing(
            "needs an LR sweep (≥2 learning rates) of both the best full and the best LoRA configuration"
        )
    # per_decade reads the best LR and its neighbours: their seed spreads, per decade of LR, are its noise
    spreads = [s.noise(_sweep_points(s, r, _neighbours(r)), "learning") for r in (rf, rl)]
    spreads = [n for n in spreads if n is not None]
    noise = max(spreads) / min(r["min_decade_step"] for r in (rf, rl)) if spreads else None
    evidence = (
        f"{s.learning[0]} change per decade of LR around the best LR: LoRA `{rl['sweep']}` "
        f"{rl['per_decade']:.4f} (best LR {rl['best_learning_rate']:g}) vs full `{rf['sweep']}` "
        f"{rf['per_decade']:.4f} (best LR {rf['best_learning_rate']:g})"
    )
    return part(rl["per_decade"] - rf["per_decade"], noise, evidence)


def _claim_best_lr(s: StudyPoints) -> dict:
    """Each method's plausible best LRs: those whose learning is within 3× noise of its best. Supported when
    every plausible LoRA LR is above every plausible full LR; contradicted when every one is below."""
    rf, rl = _sweeps(s)
    if any(r is None or len(r["learning_rates"]) < 2 for r in (rf, rl)):
        return missing(
            "needs an LR sweep (≥2 learning rates) of both the best full and the best LoRA configuration"
        )
    plausible, noises = [], []
    for r in (rf, rl):
        noise = s.noise(_sweep_points(s, r, r["learning_rates"]), "learning")
        if noise is None:
            return missing("seed spread unknown: needs ≥2 seeds of a swept configuration")
        noises.append(noise)
        top = score(r["best_value"], s.learning[1])
        plausible.append(
            [lr for lr, v in zip(r["learning_rates"], r["values"], strict=True)
             if score(v, s.learning[1]) >= top - FACTOR * noise * (1 + 1e-9)]
        )  # fmt: skip
    (pf, pl), decades = plausible, math.log10(rl["best_learning_rate"] / rf["best_learning_rate"])
    if min(pl) > max(pf):
        judged = "supported"
    elif max(pl) < min(pf):
        judged = "contradicted"
    else:
        judged = "inconclusive"
    evidence = (
        f"best LR: LoRA `{rl['sweep']}` {rl['best_learning_rate']:g} vs full `{rf['sweep']}` "
        f"{rf['best_learning_rate']:g} ({10**decades:.3g}×, effect {decades:+.2f} decades; paper ≈10×); LRs "
        f"as good as the best within 3× seed spread: LoRA {', '.join(f'{lr:g}' for lr in pl)} (3× spread "
        f"{FACTOR * noises[1]:.4g}), full {', '.join(f'{lr:g}' for lr in pf)} (3× spread {FACTOR * noises[0]:.4g})"
    )
    # effect in decades of LR; the noise lives in the learning metric, so it is shown in the evidence
    return {"verdict": judged, "effect": decades, "noise": None, "evidence": evidence}


def _claim_targets(s: StudyPoints) -> dict:
    table = _best_per(s, s.of("lora"), "rank", "target_modules")
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    listing, labels = [], set()
    for rank, targets in sorted(table.items()):
        order = PAPER_TARGETS if any(t in targets for t in PAPER_TARGETS[:2]) else GATE_TARGETS
        present = [t for t in order if t in targets]
        if len(present) < 2:
            continue
        labels.add(order)
        for a, b in pairwise(present):
            gaps[(a, b)].append(s.learns(targets[a]) - s.learns(targets[b]))
        listing.append(f"r{rank}: " + ", ".join(f"{t} {targets[t]['learning']:.4f}" for t in present))
    if not gaps:
        return missing("no LoRA arms with different target modules at the same rank in this study")
    means = {pair: mean(v) for pair, v in gaps.items()}
    pairs = ", ".join(f"{a} − {b} {g:+.4f}" for (a, b), g in means.items())
    compared = [
        targets[t] for targets in table.values() for t in targets if t in PAPER_TARGETS + GATE_TARGETS
    ]
    label = (
        ""
        if GATE_TARGETS not in labels
        else " (`all`/`mlp` include gate_proj; the paper's MLP set leaves it out)"
    )
    evidence = f"best {s.learning[0]} per target{label}: {'; '.join(listing)}; learning advantage {pairs}"
    return part(min(means.values()), s.noise(compared, "learning"), evidence)


def _claim_alpha(s: StudyPoints) -> dict:
    lora = s.of("lora")
    if not lora:
        return missing("no LoRA arms in this study")
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in lora:
        groups[(p["rank"], p["target_modules"], p["learning_rate"], p["weight_decay"], p["dropout"])].append(
            p
        )
    effects, compared, listing = [], [], []
    for (rank, targets, lr, *_), group in groups.items():
        paper = [p for p in group if p["alpha"] == 2 * rank]
        others = [p for p in group if p["alpha"] != 2 * rank]
        if paper and others:
            best_other = s.best(others)
            effects.append(s.learns(paper[0]) - s.learns(best_other))
            compared += [paper[0], best_other]
            listing.append(f"r{rank} {targets} lr {lr:g}: α={2 * rank} {paper[0]['learning']:.4f} vs "
                           f"α={best_other['alpha']:g} {best_other['learning']:.4f}")  # fmt: skip
    if not effects:
        alphas = sorted({f"α={p['alpha']:g} at r{p['rank']}" for p in lora if p["alpha"] is not None})
        return missing(f"report only: the study does not sweep α ({', '.join(alphas) or 'α not recorded'})")
    evidence = f"{s.learning[0]}: {'; '.join(listing)}; α = 2r learns more by {mean(effects):+.4f}"
    return part(mean(effects), s.noise(compared, "learning"), evidence)


# ---------------------------------------------------------------------------------------------------
# Ours: forgetting at matched learning


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


def _claim_matched(s: StudyPoints, method: str = "lora") -> dict:
    full, lora, absent = _both(s, method=method)
    if absent:
        return absent
    bf, bl = s.best(full), s.best(lora)
    result = _matched(s, bl, bf, method_label(method))
    if result is None:
        return missing(
            f"learning ranges of `{bl['configuration']}` and `{bf['configuration']}` do not overlap"
        )
    levels = ", ".join(f"{x:.3f}: {a:.3f} vs {b:.3f}" for x, a, b in result.pop("levels"))
    detail = f"{s.forgetting[0]} of {method_label(method)} vs full where both first reach {s.learning[0]} = {levels}"
    return {**result, "evidence": f"{detail}; {result['evidence']}"}


def _claim_matched_regularizers(s: StudyPoints) -> dict:
    lora, regularized = s.of("lora"), _regularized(s)
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


# ---------------------------------------------------------------------------------------------------
# Entry points


def judge_claims(
    rows: list[dict], matrices: list[dict], learning: Axis, forgetting: Axis, diversity_metric: str | None
) -> list[dict]:
    """Verdicts from metric rows (`Store.metric_rows()`) and matrix rows (`Store.matrices()`): the paper's
    claims (PAPER_CLAIMS), then ours (OUR_CLAIMS).

    Each: {"id", "section", "claim", "source": "paper"|"ours", "verdict": "supported"|"contradicted"|
    "inconclusive", "evidence", "effect", "noise"} and, for §4.3 when supported, "qualifier"
    ("same curve" or "better trade-off").
    """
    s = study_points(rows, matrices, learning, forgetting)
    judged = {
        "4.1": _budget_and_peak(s, "learning"),
        "4.1-rank": _claim_rank(s),
        "4.2": _budget_and_peak(s, "forgetting"),
        "4.2-data": _claim_forgetting_grows(s),
        "4.3": _claim_tradeoff(s),
        "4.4": _claim_regularizers(s),
        "4.4-diversity": _claim_diversity(s, diversity_metric),
        "4.5": _claim_spectrum(s),
        "4.6-lr": _claim_lr_sensitivity(s),
        "4.6-best-lr": _claim_best_lr(s),
        "4.6-targets": _claim_targets(s),
        "4.6-alpha": _claim_alpha(s),
        "ours-matched": _claim_matched(s),
        "ours-matched-reg": _claim_matched_regularizers(s),
    }
    from learnforget.analyse.peft_claims import intruder_claim, method_claims

    beyond = [labelled(i, section, claim, "beyond", result) for i, section, claim, result in method_claims(s)]
    beyond.append(labelled("intruders", *INTRUDER_CLAIM, "beyond", intruder_claim(s)))
    return (
        [labelled(i, *PAPER_CLAIMS[i], "paper", judged[i]) for i in PAPER_CLAIMS]
        + [labelled(i, *OUR_CLAIMS[i], "ours", judged[i]) for i in OUR_CLAIMS]
        + beyond
    )


def claims_side_by_side(judged: dict[str, list[dict]]) -> list[tuple[dict, dict[str, dict | None]]]:
    """(claim, {setting: that setting's verdict or None}) for every claim id of any setting, in order: the
    per-method claims differ between settings that train different methods."""
    rows: dict[str, tuple[dict, dict]] = {}
    for key, claims in judged.items():
        for c in claims:
            rows.setdefault(c["id"], (c, dict.fromkeys(judged)))[1][key] = c
    return list(rows.values())


def labelled(claim_id: str, section: str, statement: str, source: str, result: dict) -> dict:
    """A verdict with its claim's id, section, statement and source ('paper' or 'ours')."""
    return {"id": claim_id, "section": section, "claim": statement, "source": source, **result}


def verdict_label(claim: dict) -> str:
    """'**supported** (same curve)' etc."""
    qualifier = claim.get("qualifier")
    return f"**{claim['verdict']}**" + (f" ({qualifier})" if qualifier else "")


STUDY_INTRO = (
    "Each finding of Biderman et al. (2024) judged from this study's own numbers, as the paper states it "
    "(§ = the paper's section). `effect` is in the metric's units, positive in the claim's direction; "
    "`3× spread` is three times the seed noise (half-range across seeds of the compared configurations; "
    "for one that ran one seed, the pooled spread of replicated, stable configurations of the same method "
    "at the same milestone). A claim is *supported* only when effect ≥ 3× spread, *contradicted* when the "
    "opposite effect is, *inconclusive* otherwise or when the spread is unknown. §4.3 is supported as "
    "*same curve* when LoRA's frontier lies within noise of full finetuning's, as *better trade-off* "
    "when it lies ahead."
)


def claims_markdown(claims: list[dict], heading: str = "## Claims", intro: str = STUDY_INTRO) -> str:
    """The claims section of summary.md: the paper's claims, then ours, each row citing its section."""

    def cell(value: float | None, sign: str = "+") -> str:
        return "–" if value is None else f"{value:{sign}.4g}"

    def table(rows: list[dict]) -> list[str]:
        lines = [
            "| id | § | claim | verdict | effect | 3× spread | evidence |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in rows:
            noise = None if c["noise"] is None else FACTOR * c["noise"]
            evidence = c["evidence"].replace("|", "\\|")
            cells = [
                c["id"],
                c["section"],
                c["claim"],
                verdict_label(c),
                cell(c["effect"]),
                cell(noise, ""),
                evidence,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return lines

    lines = [heading, "", intro, ""]
    paper = [c for c in claims if c.get("source", "paper") == "paper"]
    ours = [c for c in claims if c.get("source") == "ours"]
    beyond = [c for c in claims if c.get("source") == "beyond"]
    if paper:
        lines += ["**The paper's claims**", "", *table(paper), ""]
    if ours:
        lines += [
            "**Beyond the paper (ours)**: stricter tests the paper does not claim; a contradiction here does "
            "not contradict the paper.",
            "",
            *table(ours),
            "",
        ]
    if beyond:
        lines += [
            "**Beyond the paper: other PEFT methods and intruder dimensions**: the paper's comparisons with "
            "each other PEFT method in LoRA's place, and Shuttleworth et al.'s intruder dimensions vs "
            "forgetting (Spearman ρ across adapter configurations; 3× spread = 3/√(n−1)). The paper tested "
            "neither: these verdicts neither support nor contradict it.",
            "",
            *table(beyond),
            "",
        ]
    return "\n".join(lines)


def _diversity_metric(rows: list[dict], domain: str) -> str | None:
    names = {r["metric"] for r in rows if r["metric"].endswith("distinct_fraction")}
    preferred = f"{domain}/distinct_fraction"
    return preferred if preferred in names else (sorted(names)[0] if names else None)


def claims_for_study_dir(study_dir: str | Path) -> list[dict]:
    """`judge_claims` on a study directory, with the study's learning, forgetting and diversity metrics."""
    rows, matrices, learning, forgetting, study = study_axes(study_dir)
    return judge_claims(rows, matrices, learning, forgetting, _diversity_metric(rows, study.domain))
