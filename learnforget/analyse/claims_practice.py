"""The paper's claims on regularization, diversity, ΔW spectra and practice (§4.4–§4.6), judged on a
study's seed-averaged points.

- §4.4: LoRA keeps the source domain better than full finetuning with weight decay or dropout; it keeps
  generations more diverse.
- §4.5: full finetuning's ΔW needs a far higher rank than LoRA's, and its rank grows with training.
- §4.6: LoRA is more sensitive to the learning rate and its best LR is higher; target modules rank
  All > MLP > Attention; α = 2r is a good scaling.

Conventions and the verdict rule: `learnforget.analyse.claims`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from itertools import pairwise
from statistics import mean

from learnforget.analyse.frontier import lr_sensitivity
from learnforget.analyse.points import is_adapter, is_full, score
from learnforget.analyse.verdicts import (
    DELTA_FRACTION,
    FACTOR,
    RANDOM_FRACTION,
    StudyPoints,
    best_per,
    combine,
    missing,
    part,
    show,
)

# The paper's ranking of LoRA target modules, best first: its "MLP" is up_proj + down_proj (no gate_proj)
# and "All" is attention + that MLP set. The gate-including groups stand in when a study lacks these.
PAPER_TARGETS = ("paper-all", "paper-mlp", "attention")
GATE_TARGETS = ("all", "mlp", "attention")


# ---------------------------------------------------------------------------------------------------
# §4.4 regularization and diversity


def regularized_full(s: StudyPoints) -> list[dict]:
    """Full finetuning's weight-decay / dropout arms at the final milestone: the §4.4 baselines."""
    return [p for p in s.full(regularized=True) if p["weight_decay"] or p["dropout"]]


def claim_regularizers(s: StudyPoints) -> dict:
    lora, regularized = s.adapters(), regularized_full(s)
    if not lora:
        return missing("no LoRA arms in this study")
    if not regularized:
        return missing("no regularized full-finetuning arms (weight_decay > 0 or dropout > 0) in this study")
    bl = s.best(lora)
    advantages = {p["configuration"]: s.keeps(bl) - s.keeps(p) for p in regularized}
    weakest = min(regularized, key=lambda p: advantages[p["configuration"]])  # LoRA must beat each one
    listing = ", ".join(f"`{name}` {a:+.4f}" for name, a in advantages.items())
    evidence = (
        f"same budget ({bl['milestone']:,} tokens), {s.forgetting[0]}: best LoRA {show(bl, 'forgetting')} "
        f"keeps more than {listing}; smallest advantage vs {show(weakest, 'forgetting')}"
    )
    return part(advantages[weakest["configuration"]], s.noise([bl, weakest], "forgetting"), evidence)


def claim_diversity(s: StudyPoints, metric: str | None) -> dict:
    measured = [p for p in s.final if metric and metric in p["metrics"]]
    full = [p for p in measured if is_full(p)]
    lora = [p for p in measured if is_adapter(p)]
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
        f"{metric} (higher = more diverse): best LoRA {show(bl, metric)} vs best full {show(bf, metric)}; "
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


def claim_spectrum(s: StudyPoints) -> dict:
    full = [p for p in s.full() if DELTA_FRACTION in p["metrics"]]
    lora = [p for p in s.adapters() if DELTA_FRACTION in p["metrics"]]
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
        f"median rank-for-90% / min dim at {bf['milestone']:,} tokens: full {show(bf, DELTA_FRACTION)} vs "
        f"LoRA r{top_rank} {show(bl, DELTA_FRACTION)} ({ratio}; paper: 10–100×)",
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
    for configs in (s.full(), s.adapters()):
        found.append(rows.get(s.best(configs)["sweep"]) if configs else None)
    return found[0], found[1]


def _sweep_points(s: StudyPoints, row: dict, rates: list[float]) -> list[dict]:
    return [
        p
        for p in s.trained
        if p["sweep"] == row["sweep"] and p["milestone"] == row["milestone"] and p["learning_rate"] in rates
    ]


def _neighbours(row: dict) -> list[float]:
    lrs, i = row["learning_rates"], row["learning_rates"].index(row["best_learning_rate"])
    return [lrs[j] for j in (i - 1, i, i + 1) if 0 <= j < len(lrs)]


def claim_lr_sensitivity(s: StudyPoints) -> dict:
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


def claim_best_lr(s: StudyPoints) -> dict:
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


def claim_targets(s: StudyPoints) -> dict:
    table = best_per(s, s.adapters(), "rank", "target_modules")
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


def claim_alpha(s: StudyPoints) -> dict:
    lora = s.adapters()
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
