"""The claim judge: each finding of "LoRA Learns Less and Forgets Less" checked against a study's own numbers.

`judge_claims` returns one verdict per claim: supported, contradicted or inconclusive, with the numbers.

Conventions (the same for every claim):
- Seeds of a configuration (an arm without its seed suffix) are averaged at each milestone.
- "Best" configuration of a method = the best seed-averaged learning metric at the final milestone.
- `effect` is oriented so that positive points in the claim's direction, in the metric's own units
  (a loss difference in nats, an accuracy difference, a rank fraction).
- `noise` is the seed spread: the half-range (max − min)/2 across seeds of the compared metric, for each
  compared configuration with ≥2 seeds, the largest of them. When no compared configuration has ≥2 seeds,
  the study-wide spread stands in: the largest half-range of that metric over every replicated
  configuration and milestone of the study (a conservative estimate of seed noise from the same setup).
  With one seed everywhere it is unknown.
- Verdict: supported when effect ≥ 3 × noise (and > 0); contradicted when −effect ≥ 3 × noise;
  inconclusive otherwise. With unknown noise the verdict is inconclusive ("needs ≥2 seeds"): a single
  run cannot tell an effect from seed luck, however large it looks. Missing arms → inconclusive.
- Claims with two parts are supported only when both parts are; contradicted when either part is.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from statistics import mean, median

from learnforget.analysis.frontier import (
    Axis,
    lr_sensitivity,
    points,
    score,
    seed_average,
    study_axes,
    sweep_name,
)

FACTOR = 3.0  # an effect must be this many seed spreads large to count
MATCHED_LEVELS = 5  # learning levels at which forgetting is compared
DELTA_FRACTION = "spectrum/rank_delta_fraction"
RANDOM_FRACTION = "spectrum/rank_random_fraction"
TARGET_ORDER = ("all", "mlp", "attention")  # the paper's ranking of LoRA target modules, best first
CLAIMS = {
    1: "LoRA learns less than full finetuning (best configuration of each, same token budget).",
    2: "LoRA forgets less than full finetuning at matched learning.",
    3: "Higher LoRA rank narrows the learning gap to full finetuning.",
    4: "LoRA regularizes better than weight decay and dropout (less forgetting at matched learning).",
    5: "Full finetuning's ΔW needs a far higher rank for 90% of its variance than LoRA's, "
    "and approaches a random matrix's rank as training goes on.",
    6: "LoRA keeps generations more diverse than full finetuning.",
    7: "LoRA is more sensitive to the learning rate; target modules rank all > mlp > attention.",
}


# ---------------------------------------------------------------------------------------------------
# Verdicts


def verdict(effect: float | None, noise: float | None) -> tuple[str, str]:
    """(verdict, reason) from an oriented effect and the seed spread."""
    if effect is None:
        return "inconclusive", "no effect measurable"
    if noise is None:
        return "inconclusive", "seed spread unknown: needs ≥2 seeds of a compared configuration"
    threshold = FACTOR * noise * (1 - 1e-9)  # exactly 3x counts, whatever the float rounding
    if effect > 0 and effect >= threshold:
        return "supported", f"effect ≥ 3× seed spread ({FACTOR * noise:.4g})"
    if effect < 0 and -effect >= threshold:
        return "contradicted", f"opposite effect ≥ 3× seed spread ({FACTOR * noise:.4g})"
    return "inconclusive", f"effect within 3× seed spread ({FACTOR * noise:.4g})"


def _part(effect: float | None, noise: float | None, evidence: str) -> dict:
    judged, reason = verdict(effect, noise)
    return {"verdict": judged, "effect": effect, "noise": noise, "evidence": f"{evidence}; {reason}"}


def _missing(evidence: str) -> dict:
    return {"verdict": "inconclusive", "effect": None, "noise": None, "evidence": evidence}


def _combine(parts: list[dict]) -> dict:
    """All parts supported → supported; any contradicted → contradicted; else inconclusive.
    Effect and noise are those of the part that decided the verdict."""
    verdicts = [p["verdict"] for p in parts]
    if all(v == "supported" for v in verdicts):
        judged, decider = "supported", parts[0]
    elif "contradicted" in verdicts:
        judged, decider = "contradicted", parts[verdicts.index("contradicted")]
    else:
        judged = "inconclusive"
        decider = next(p for p in parts if p["verdict"] != "supported")
    evidence = " · ".join(f"({chr(97 + i)}) {p['evidence']}" for i, p in enumerate(parts))
    return {"verdict": judged, "effect": decider["effect"], "noise": decider["noise"], "evidence": evidence}


# ---------------------------------------------------------------------------------------------------
# Helpers over seed-averaged points


def _spread(p: dict, metric: str) -> float | None:
    return {"learning": p["learning_spread"], "forgetting": p["forgetting_spread"]}.get(
        metric, p["spreads"].get(metric)
    )


def _value(p: dict, metric: str) -> float | None:
    return p[metric] if metric in ("learning", "forgetting") else p["metrics"].get(metric)


def _arms(rows: list[dict]) -> dict[str, dict]:
    return {r["arm"]: r for r in rows}


# Study-wide seed spread per metric (largest over replicated configurations), set by `judge_claims`.
_STUDY_SPREAD: dict[str, float] = {}


def _noise(configs: list[dict], metric: str) -> float | None:
    """Largest known seed spread of `metric` among the configurations; the study-wide spread when none of
    them has ≥2 seeds; None when no configuration of the study has."""
    known = [s for p in configs if (s := _spread(p, metric)) is not None]
    return max(known) if known else _STUDY_SPREAD.get(metric)


def _study_spread(avg: list[dict]) -> dict[str, float]:
    spreads: dict[str, float] = {}
    for p in avg:
        for metric in ("learning", "forgetting", *p["spreads"]):
            s = _spread(p, metric)
            if s is not None:
                spreads[metric] = max(spreads.get(metric, 0.0), s)
    return spreads


def _show(p: dict, metric: str) -> str:
    spread = _spread(p, metric)
    text = f"{_value(p, metric):.4f}" + ("" if spread is None else f" ± {spread:.4f}")
    return f"`{p['configuration']}` {text} (n={p['seeds']})"


def _learns(p: dict, learning: Axis) -> float:
    return score(p["learning"], learning[1])


def _best(configs: list[dict], learning: Axis) -> dict:
    return max(configs, key=lambda p: _learns(p, learning))


def _best_per(configs: list[dict], learning: Axis, outer: str, inner: str) -> dict:
    """{outer value: {inner value: best-learning configuration}}, e.g. per target modules, per rank."""
    table: dict = defaultdict(dict)
    for p in configs:
        cell = table[p[outer]]
        if p[inner] not in cell or _learns(p, learning) > _learns(cell[p[inner]], learning):
            cell[p[inner]] = p
    return table


def _curve(avg: list[dict], configuration: str, base: dict | None, learning: Axis, forgetting: Axis) -> list:
    """(learning score, forgetting score, milestone) along training, starting at the base model."""
    milestones = sorted((p for p in avg if p["configuration"] == configuration), key=lambda p: p["milestone"])
    if base is not None:
        milestones = [base] + milestones
    return [
        (score(p["learning"], learning[1]), score(p["forgetting"], forgetting[1]), p["milestone"])
        for p in milestones
    ]


def _at_level(curve: list, level: float) -> float | None:
    """Forgetting score where the curve first reaches a learning level (linear between milestones)."""
    if len(curve) == 1:
        return curve[0][1] if curve[0][0] == level else None
    for (x0, y0, _), (x1, y1, _) in pairwise(curve):
        if min(x0, x1) <= level <= max(x0, x1):
            return y0 if x1 == x0 else y0 + (level - x0) / (x1 - x0) * (y1 - y0)
    return None


def matched_forgetting(curve_a: list, curve_b: list) -> list[tuple[float, float, float]] | None:
    """(learning level, forgetting score of a, of b) at MATCHED_LEVELS levels evenly spread over the part of
    the learning range that both curves reach, above its lower end (where both start, at the base); None
    when the ranges do not overlap. The curves are polylines through their milestones in training order;
    at a level, each curve is read where it first reaches it."""
    low = max(min(x for x, _, _ in c) for c in (curve_a, curve_b))
    high = min(max(x for x, _, _ in c) for c in (curve_a, curve_b))
    if high <= low:
        return None
    levels = [low + (high - low) * k / MATCHED_LEVELS for k in range(1, MATCHED_LEVELS + 1)]
    return [(level, _at_level(curve_a, level), _at_level(curve_b, level)) for level in levels]


def _add_spectrum(pts: list[dict], matrices: list[dict]) -> None:
    """Fill the rank fractions (median over matrices) from matrix rows where the metric rows lack them."""
    by_point: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for m in matrices:
        if m.get("min_dim"):
            by_point[(m["arm"], m["tokens"])].append(m)
    for p in pts:
        group = by_point.get((p["arm"], p["milestone"]))
        if group and DELTA_FRACTION not in p["metrics"]:
            p["metrics"][DELTA_FRACTION] = median(m["rank_delta"] / m["min_dim"] for m in group)
            p["metrics"][RANDOM_FRACTION] = median(m["rank_random"] / m["min_dim"] for m in group)


# ---------------------------------------------------------------------------------------------------
# The claims


def _claim_learns_less(final: list[dict], learning: Axis) -> dict:
    full = [p for p in final if p["method"] == "full"]
    lora = [p for p in final if p["method"] == "lora"]
    if not full or not lora:
        return _missing(f"no {'full-finetuning' if not full else 'LoRA'} arms in this study")
    bf, bl = _best(full, learning), _best(lora, learning)
    effect = _learns(bf, learning) - _learns(bl, learning)
    evidence = (
        f"at {bf['milestone']:,} tokens, {learning[0]}: best full {_show(bf, 'learning')} vs best LoRA "
        f"{_show(bl, 'learning')}; full learns more by {effect:+.4f}"
    )
    return _part(effect, _noise([bf, bl], "learning"), evidence)


def _forgets_less(lora: dict, other: dict, avg, base, learning: Axis, forgetting: Axis) -> dict | None:
    """LoRA's forgetting advantage over another configuration at matched learning (None: no overlap).

    The part's `levels` lists (learning value, LoRA's forgetting value, the other's) at each matched level."""
    matched = matched_forgetting(
        _curve(avg, lora["configuration"], base, learning, forgetting),
        _curve(avg, other["configuration"], base, learning, forgetting),
    )
    if matched is None:
        return None
    effect = mean(a - b for _, a, b in matched)
    used = [p for p in avg if p["configuration"] in (lora["configuration"], other["configuration"])]
    levels = [  # back to the metrics' own values (score is its own inverse)
        (score(x, learning[1]), score(a, forgetting[1]), score(b, forgetting[1])) for x, a, b in matched
    ]
    evidence = (
        f"LoRA `{lora['configuration']}` keeps {forgetting[0]} better than `{other['configuration']}` "
        f"by {effect:+.4f} on average"
    )
    return {**_part(effect, _noise(used, "forgetting"), evidence), "levels": levels}


def _claim_forgets_less(final, avg, base, learning: Axis, forgetting: Axis) -> dict:
    full = [p for p in final if p["method"] == "full"]
    lora = [p for p in final if p["method"] == "lora"]
    if not full or not lora:
        return _missing(f"no {'full-finetuning' if not full else 'LoRA'} arms in this study")
    bf, bl = _best(full, learning), _best(lora, learning)
    result = _forgets_less(bl, bf, avg, base, learning, forgetting)
    if result is None:
        return _missing(
            f"learning ranges of `{bl['configuration']}` and `{bf['configuration']}` do not overlap"
        )
    levels = ", ".join(f"{x:.3f}: {a:.3f} vs {b:.3f}" for x, a, b in result.pop("levels"))
    detail = f"{forgetting[0]} of LoRA vs full where both first reach {learning[0]} = {levels}"
    return {**result, "evidence": f"{detail}; {result['evidence']}"}


def _claim_rank(final: list[dict], learning: Axis) -> dict:
    table = _best_per([p for p in final if p["method"] == "lora"], learning, "target_modules", "rank")
    sweeps = {target: [ranks[r] for r in sorted(ranks)] for target, ranks in table.items() if len(ranks) >= 2}
    if not sweeps:
        return _missing("no LoRA arms with two or more ranks at the same target modules in this study")
    gains = [_learns(s[-1], learning) - _learns(s[0], learning) for s in sweeps.values()]
    steps = [_learns(b, learning) - _learns(a, learning) for s in sweeps.values() for a, b in pairwise(s)]
    full = [p for p in final if p["method"] == "full"]
    reference = f" (best full {_best(full, learning)['learning']:.4f})" if full else ""
    listing = "; ".join(
        f"{t}: " + ", ".join(f"r{p['rank']} {p['learning']:.4f}" for p in s) for t, s in sweeps.items()
    )
    evidence = (
        f"best {learning[0]} per rank{reference}: {listing}; highest − lowest rank gains {mean(gains):+.4f}"
    )
    noise = _noise([p for s in sweeps.values() for p in s], "learning")
    result = _part(mean(gains), noise, evidence)
    worst_drop = -min(steps)
    if result["verdict"] == "supported" and worst_drop > 0 and worst_drop >= FACTOR * noise:
        result["verdict"] = "inconclusive"
        result["evidence"] = f"{evidence}; not monotone: a higher rank learns less by {worst_drop:.4f}"
    return result


def _claim_regularizers(final, avg, base, learning: Axis, forgetting: Axis) -> dict:
    lora = [p for p in final if p["method"] == "lora"]
    regularized = [p for p in final if p["method"] == "full" and (p["weight_decay"] or p["dropout"])]
    if not lora:
        return _missing("no LoRA arms in this study")
    if not regularized:
        return _missing("no regularized full-finetuning arms (weight_decay > 0 or dropout > 0) in this study")
    bl = _best(lora, learning)
    results = [_forgets_less(bl, p, avg, base, learning, forgetting) for p in regularized]
    results = [r for r in results if r is not None]
    if not results:
        return _missing(f"learning ranges of `{bl['configuration']}` and the regularized arms do not overlap")
    weakest = min(results, key=lambda r: r["effect"])  # LoRA must beat the strongest regularizer
    compared = {bl["configuration"], *(q["configuration"] for q in regularized)}
    noise = _noise([p for p in avg if p["configuration"] in compared], "forgetting")
    levels = results[0]["levels"]
    evidence = (
        f"mean over {len(levels)} matched {learning[0]} levels {levels[0][0]:.3f}..{levels[-1][0]:.3f}: "
        + ", ".join(r["evidence"].split(";")[0] for r in results)
    )
    return _part(weakest["effect"], noise, f"{evidence}; smallest LoRA advantage {weakest['effect']:+.4f}")


def _spectrum_noise(configs: list[dict], resolution: float) -> float | None:
    """Seed spread of the rank fraction, but never below its resolution: ranks are integers, so a fraction
    of min(m, n) moves in steps of 1/min(m, n) and identical seeds say nothing about smaller effects."""
    noise = _noise(configs, DELTA_FRACTION)
    return None if noise is None else max(noise, resolution)


def _claim_spectrum(avg: list[dict], final: list[dict], learning: Axis, resolution: float = 0.0) -> dict:
    full = [p for p in final if p["method"] == "full" and DELTA_FRACTION in p["metrics"]]
    lora = [p for p in final if p["method"] == "lora" and DELTA_FRACTION in p["metrics"]]
    if not full or not lora:
        return _missing(f"no {'full-finetuning' if not full else 'LoRA'} arms with ΔW spectra in this study")
    bf = _best(full, learning)
    top_rank = max(p["rank"] for p in lora)
    bl = _best([p for p in lora if p["rank"] == top_rank], learning)
    f_full, f_lora = bf["metrics"][DELTA_FRACTION], bl["metrics"][DELTA_FRACTION]
    ratio = f"{f_full / f_lora:.1f}×" if f_lora else "∞×"
    higher = _part(
        f_full - f_lora,
        _spectrum_noise([bf, bl], resolution),
        f"median rank-for-90% / min dim at {bf['milestone']:,} tokens: full {_show(bf, DELTA_FRACTION)} vs "
        f"LoRA r{top_rank} {_show(bl, DELTA_FRACTION)} ({ratio})",
    )
    curve = [p for p in avg if p["configuration"] == bf["configuration"] and DELTA_FRACTION in p["metrics"]]
    curve.sort(key=lambda p: p["milestone"])
    if len(curve) < 2:
        return _combine([higher, _missing("full finetuning's spectrum needs ≥2 milestones to show a trend")])
    first, last = curve[0], curve[-1]
    growth = last["metrics"][DELTA_FRACTION] - first["metrics"][DELTA_FRACTION]
    evidence = (
        f"full `{bf['configuration']}` fraction {first['metrics'][DELTA_FRACTION]:.4f} at "
        f"{first['milestone']:,} → {last['metrics'][DELTA_FRACTION]:.4f} at {last['milestone']:,} tokens "
        f"(growth {growth:+.4f})"
    )
    effect = growth
    if all(RANDOM_FRACTION in p["metrics"] for p in (first, last)):
        # "approaches random": the distance to the random matrix's fraction must shrink, not only the rank grow
        gap = [abs(p["metrics"][RANDOM_FRACTION] - p["metrics"][DELTA_FRACTION]) for p in (first, last)]
        effect = min(growth, gap[0] - gap[1])
        evidence += f"; gap to a random matrix's fraction {gap[0]:.4f} → {gap[1]:.4f}"
    trend = _part(effect, _spectrum_noise([first, last], resolution), evidence)
    return _combine([higher, trend])


def _claim_diversity(final: list[dict], learning: Axis, metric: str | None) -> dict:
    measured = [p for p in final if metric and metric in p["metrics"]]
    full = [p for p in measured if p["method"] == "full"]
    lora = [p for p in measured if p["method"] == "lora"]
    if not full or not lora:
        what = (
            "no diversity metric"
            if not metric
            else f"no {'full-finetuning' if not full else 'LoRA'} arms with `{metric}`"
        )
        return _missing(f"{what} in this study")
    bf, bl = _best(full, learning), _best(lora, learning)
    effect = bl["metrics"][metric] - bf["metrics"][metric]
    evidence = (
        f"{metric} (higher = more diverse): best LoRA {_show(bl, metric)} vs best full {_show(bf, metric)}; "
        f"LoRA more diverse by {effect:+.4f}"
    )
    return _part(effect, _noise([bf, bl], metric), evidence)


def _claim_lr_and_targets(pts: list[dict], final: list[dict], learning: Axis) -> dict:
    full = [p for p in final if p["method"] == "full"]
    lora = [p for p in final if p["method"] == "lora"]
    if not lora:
        return _missing("no LoRA arms in this study")
    sweeps = {r["sweep"]: r for r in lr_sensitivity(pts, learning)}
    rows = [sweeps.get(sweep_name(_best(m, learning)["configuration"])) if m else None for m in (full, lora)]
    if any(r is None or r["per_decade"] is None for r in rows):
        sensitive = _missing(
            "needs an LR sweep (≥2 learning rates) of both the best full and the best LoRA configuration"
        )
    else:
        rf, rl = rows
        steps = [r["min_decade_step"] for r in rows]
        spreads = [r["seed_spread"] for r in rows if r["seed_spread"] is not None]
        noise = max(spreads) / min(steps) if spreads else None  # seed spread per decade of LR
        evidence = (
            f"{learning[0]} change per decade of LR around the best LR: LoRA `{rl['sweep']}` "
            f"{rl['per_decade']:.4f} (best LR {rl['best_learning_rate']:g}) vs full `{rf['sweep']}` "
            f"{rf['per_decade']:.4f} (best LR {rf['best_learning_rate']:g})"
        )
        sensitive = _part(rl["per_decade"] - rf["per_decade"], noise, evidence)
    table = _best_per(lora, learning, "rank", "target_modules")
    compared = {rank: targets for rank, targets in sorted(table.items()) if len(targets) >= 2}
    gaps: dict[tuple[str, str], list[float]] = defaultdict(list)
    for targets in compared.values():
        present = [t for t in TARGET_ORDER if t in targets]
        for a, b in pairwise(present):
            gaps[(a, b)].append(_learns(targets[a], learning) - _learns(targets[b], learning))
    if not gaps:
        ordered = _missing("no LoRA arms with different target modules at the same rank in this study")
    else:
        means = {pair: mean(v) for pair, v in gaps.items()}
        listing = "; ".join(
            f"r{rank}: " + ", ".join(f"{t} {ts[t]['learning']:.4f}" for t in TARGET_ORDER if t in ts)
            for rank, ts in compared.items()
        )
        pairs = ", ".join(f"{a} − {b} {g:+.4f}" for (a, b), g in means.items())
        noise = _noise([p for ts in compared.values() for p in ts.values()], "learning")
        evidence = f"best {learning[0]} per target: {listing}; learning advantage {pairs}"
        ordered = _part(min(means.values()), noise, evidence)
    return _combine([sensitive, ordered])


# ---------------------------------------------------------------------------------------------------
# Entry points


def judge_claims(
    rows: list[dict], matrices: list[dict], learning: Axis, forgetting: Axis, diversity_metric: str | None
) -> list[dict]:
    """Verdicts on claims 1..7 from metric rows (`Store.metric_rows()`) and matrix rows (`Store.matrices()`).

    Each: {"id", "claim", "verdict": "supported"|"contradicted"|"inconclusive", "evidence", "effect", "noise"}.
    """
    # The paper's arms: full finetuning trains embeddings and LM head, LoRA does not. Arms that swap this
    # ("full, embeddings frozen", "LoRA + trainable embeddings") separate the embedding confound; they are
    # shown in the study's tables but would mix two effects into every claim here.
    paper_arm = {
        k: r.get("train_embeddings") in (None, r["method"] == "full") for k, r in _arms(rows).items()
    }
    rows = [r for r in rows if r["method"] == "base" or paper_arm[r["arm"]]]
    pts = points(rows, learning, forgetting)
    _add_spectrum(pts, matrices)
    resolution = 1 / min((m["min_dim"] for m in matrices if m.get("min_dim")), default=float("inf"))
    avg = seed_average(pts)
    _STUDY_SPREAD.clear()
    _STUDY_SPREAD.update(_study_spread(avg))
    base = next((p for p in avg if p["method"] == "base"), None)
    trained = [p for p in avg if p["method"] != "base"]
    last = max((p["milestone"] for p in trained), default=None)
    final = [p for p in trained if p["milestone"] == last]
    judged = {
        1: _claim_learns_less(final, learning),
        2: _claim_forgets_less(final, avg, base, learning, forgetting),
        3: _claim_rank(final, learning),
        4: _claim_regularizers(final, avg, base, learning, forgetting),
        5: _claim_spectrum(avg, final, learning, resolution),
        6: _claim_diversity(final, learning, diversity_metric),
        7: _claim_lr_and_targets(pts, final, learning),
    }
    return [{"id": i, "claim": CLAIMS[i], **judged[i]} for i in sorted(judged)]


def claims_markdown(claims: list[dict]) -> str:
    """The `## Claims` section of summary.md."""

    def cell(value: float | None, sign: str = "+") -> str:
        return "–" if value is None else f"{value:{sign}.4g}"

    lines = [
        "## Claims",
        "",
        "Each finding of Biderman et al. (2024) judged from this study's own numbers. `effect` is in the "
        "metric's units, positive in the claim's direction; `3× spread` is three times the seed spread "
        "(half-range across seeds, the largest over the compared configurations; when those ran one seed "
        "each, the largest over every replicated configuration of the study). A claim is *supported* "
        "only when effect ≥ 3× spread, *contradicted* when the opposite effect is; with no replicated "
        "configuration the spread is unknown and the verdict stays *inconclusive*.",
        "",
        "| # | claim | verdict | effect | 3× spread | evidence |",
        "|---|---|---|---|---|---|",
    ]
    for c in claims:
        noise = None if c["noise"] is None else 3 * c["noise"]
        evidence = c["evidence"].replace("|", "\\|")
        cells = [
            str(c["id"]),
            c["claim"],
            f"**{c['verdict']}**",
            cell(c["effect"]),
            cell(noise, ""),
            evidence,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _diversity_metric(rows: list[dict], domain: str) -> str | None:
    names = {r["metric"] for r in rows if r["metric"].endswith("distinct_fraction")}
    preferred = f"{domain}/distinct_fraction"
    return preferred if preferred in names else (sorted(names)[0] if names else None)


def claims_for_study_dir(study_dir: str | Path) -> list[dict]:
    """`judge_claims` on a study directory, with the study's learning, forgetting and diversity metrics."""
    rows, matrices, learning, forgetting, study = study_axes(study_dir)
    return judge_claims(rows, matrices, learning, forgetting, _diversity_metric(rows, study.domain))
