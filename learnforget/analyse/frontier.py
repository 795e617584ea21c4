"""The learning–forgetting trade-off of a finished study: Pareto frontier, recommendation, LR sensitivity.

Everything here is a pure function over points (`analyse.points`), so it runs without torch or a store:

- `pareto_frontier`: the points no other point beats on both axes (learns more AND forgets less).
- `recommend`: the configuration + milestone that learns most while forgetting at most a threshold.
- `lr_sensitivity`: per learning-rate sweep, the best LR and how fast the learning metric falls away.
- `frontier_markdown`: the summary.md section (the plot is `report.frontier_plot`, a study directory's
  numbers come through `report.study_data`).

Every value is compared as a *score* (the value, negated when lower is better), so "higher score =
better" on both axes: learns more on the learning axis, keeps more (forgets less) on the forgetting axis.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

from learnforget.analyse.points import (
    SETTINGS,
    Axis,
    base_point,
    degradation,
    is_base,
    is_full,
    score,
    seed_average,
)
from learnforget.errors import UserError

# ---------------------------------------------------------------------------------------------------
# Frontier and recommendation


def pareto_frontier(pts: list[dict], learning: Axis, forgetting: Axis) -> list[dict]:
    """Points not dominated by any other (another learns at least as much and keeps at least as much,
    and is strictly better on one axis), sorted from least to most forgetting."""

    def scores(p: dict) -> tuple[float, float]:
        return score(p["learning"], learning[1]), score(p["forgetting"], forgetting[1])

    def dominates(q: dict, p: dict) -> bool:
        (lq, kq), (lp, kp) = scores(q), scores(p)
        return lq >= lp and kq >= kp and (lq > lp or kq > kp)

    frontier = [p for p in pts if not any(dominates(q, p) for q in pts)]
    return sorted(frontier, key=lambda p: (-scores(p)[1], -scores(p)[0]))


def recommend(
    pts: list[dict], learning: Axis, forgetting: Axis, max_forgetting: float, relative_to_base: bool = True
) -> dict | None:
    """The configuration and milestone that learns most while forgetting at most `max_forgetting`.

    Seeds of a configuration are averaged at each milestone first. With `relative_to_base` (default),
    forgetting is the degradation of the forgetting metric against the base model, in the metric's units:
    a loss rise (`english/loss`: 0.5 = at most +0.5 nats) or an accuracy drop (0.02 = at most 2 points
    lower). Otherwise `max_forgetting` bounds the metric's own value: at most X for lower-is-better
    metrics, at least X for higher-is-better ones. Ties on learning go to less forgetting, then fewer
    tokens. Returns None when no trained configuration fits.
    """
    averaged = seed_average(pts)
    base = next((p for p in averaged if is_base(p)), None)
    if relative_to_base and base is None:
        raise UserError(
            "recommend: the study has no base-model evaluation (arm 'base'), so forgetting relative to the "
            "base is unknown; rerun `learnforget run` on the study or bound the absolute metric instead"
        )
    fits = []
    for p in averaged:
        if is_base(p):
            continue
        lost = degradation(p["forgetting"], base["forgetting"], forgetting[1]) if base else None
        if relative_to_base:
            ok = lost <= max_forgetting
        else:
            ok = p["forgetting"] >= max_forgetting if forgetting[1] else p["forgetting"] <= max_forgetting
        if ok:
            fits.append((p, lost))
    if not fits:
        return None

    def preference(fit: tuple[dict, float | None]) -> tuple:
        p = fit[0]
        return score(p["learning"], learning[1]), score(p["forgetting"], forgetting[1]), -p["milestone"]

    best, lost = max(fits, key=preference)
    gain = None
    if base is not None:
        gain = score(best["learning"], learning[1]) - score(base["learning"], learning[1])
    return {
        **{k: best[k] for k in (*SETTINGS, "configuration", "milestone", "step", "arms", "seeds")},
        "learning_metric": learning[0],
        "learning": best["learning"],
        "learning_spread": best["learning_spread"],
        "learning_gain": gain,
        "forgetting_metric": forgetting[0],
        "forgetting_higher_is_better": forgetting[1],
        "forgetting": best["forgetting"],
        "forgetting_spread": best["forgetting_spread"],
        "forgetting_degradation": lost,
        "max_forgetting": max_forgetting,
        "relative_to_base": relative_to_base,
        "candidates": len(fits),
        "considered": sum(not is_base(p) for p in averaged),
    }


def describe_recommendation(rec: dict | None, max_forgetting: float | None = None) -> str:
    """A few human lines about a `recommend` result (for the console and summary.md)."""
    if rec is None:
        limit = "" if max_forgetting is None else f" {max_forgetting:g}"
        return f"No trained configuration forgets at most{limit}: loosen the threshold or train gentler arms."

    def spread(s: float | None) -> str:
        return "" if s is None else f" ± {s:.4f}"

    def change(value: float | None, what: str) -> str:
        return "" if value is None else f" ({what} vs base {value:+.4f})"

    if rec["relative_to_base"]:
        bound = f"degradation vs base ≤ {rec['max_forgetting']:g}"
    else:
        bound = f"{'≥' if rec['forgetting_higher_is_better'] else '≤'} {rec['max_forgetting']:g}"
    seeds = f"{rec['seeds']} seed{'s' if rec['seeds'] != 1 else ''}"
    return "\n".join(
        [
            f"Recommended: `{rec['configuration']}` at {rec['milestone']:,} tokens ({seeds}; "
            f"{rec['candidates']} of {rec['considered']} configuration-milestones fit "
            f"{rec['forgetting_metric']} {bound}).",
            f"- learning `{rec['learning_metric']}` = {rec['learning']:.4f}{spread(rec['learning_spread'])}"
            + change(rec["learning_gain"], "gain"),
            f"- forgetting `{rec['forgetting_metric']}` = {rec['forgetting']:.4f}"
            + spread(rec["forgetting_spread"])
            + change(rec["forgetting_degradation"], "degradation"),
        ]
    )


# ---------------------------------------------------------------------------------------------------
# Learning-rate sensitivity


def lr_sensitivity(pts: list[dict], learning: Axis, by: tuple[str, ...] | None = None) -> list[dict]:
    """How much the final learning metric depends on the learning rate, per LR sweep.

    A sweep is, by default, every configuration that differs only in learning rate (same method, rank,
    target modules, regularizers, ...); pass `by` (e.g. `("method",)`) to lump configurations sharing
    those settings instead (configurations at the same LR are then averaged). At the sweep's final
    milestone, with seeds averaged:
    - `best_learning_rate`: the LR with the best learning metric (`best_value`);
    - `per_decade`: mean over the best LR's neighbours in the sweep (next lower and next higher LR) of
      |metric(neighbour) - metric(best)| / |log10(LR neighbour) - log10(LR best)|, i.e. how much the
      metric drops per factor-of-10 move away from the best LR (None with one LR);
    - `spread`: max - min of the metric across the sweep's LRs (None with one LR);
    - `seed_spread`: the largest seed half-range among the sweep's configurations (None if unknown).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for p in seed_average(pts):
        if not is_base(p) and p["learning_rate"]:
            groups[(p["sweep"],) if by is None else tuple(p[f] for f in by)].append(p)
    rows = []
    for key, group in groups.items():
        final = max(p["milestone"] for p in group)
        at_final = [p for p in group if p["milestone"] == final]
        by_lr: dict[float, list[dict]] = defaultdict(list)
        for p in at_final:
            by_lr[p["learning_rate"]].append(p)
        lrs = sorted(by_lr)
        values = {lr: mean(p["learning"] for p in by_lr[lr]) for lr in lrs}
        best = max(lrs, key=lambda lr: score(values[lr], learning[1]))
        i = lrs.index(best)
        neighbours = [lrs[j] for j in (i - 1, i + 1) if 0 <= j < len(lrs)]
        decades = [abs(math.log10(n) - math.log10(best)) for n in neighbours]
        spreads = [p["learning_spread"] for p in at_final if p["learning_spread"] is not None]
        drops = [abs(values[n] - values[best]) / d for n, d in zip(neighbours, decades, strict=True)]
        first, is_lora = at_final[0], not is_full(at_final[0])  # LoRA or another adapter method
        rows.append(
            {
                "sweep": key[0] if by is None else " ".join(f"{f}={v}" for f, v in zip(by, key, strict=True)),
                "method": first["method"],
                "rank": first["rank"] if is_lora else None,
                "target_modules": first["target_modules"] if is_lora else None,
                "milestone": final,
                "learning_rates": lrs,
                "values": [values[lr] for lr in lrs],
                "best_learning_rate": best,
                "best_value": values[best],
                "per_decade": mean(drops) if drops else None,
                "min_decade_step": min(decades) if decades else None,
                "spread": max(values.values()) - min(values.values()) if len(lrs) > 1 else None,
                "seed_spread": max(spreads) if spreads else None,
                "configurations": sorted(p["configuration"] for p in at_final),
            }
        )
    return sorted(rows, key=lambda r: (r["method"], r["rank"] or 0, r["sweep"]))


# ---------------------------------------------------------------------------------------------------
# Markdown


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def frontier_markdown(
    pts: list[dict],
    frontier: list[dict],
    learning: Axis,
    forgetting: Axis,
    sensitivity: list[dict] | None = None,
    recommendation: dict | None = None,
    plot_name: str | None = None,
) -> str:
    """The summary.md section: frontier table (with change vs base), optional plot, recommendation, LR table."""
    base = base_point(pts)
    parts = [
        "## Learning–forgetting frontier",
        "",
        f"Points not beaten on both axes by any other (arm × milestone): learn more on `{learning[0]}` "
        f"({'higher' if learning[1] else 'lower'} is better) and forget less on `{forgetting[0]}` "
        f"({'higher' if forgetting[1] else 'lower'} is better). Forgetting = degradation vs the base "
        "(positive = worse than the base).",
        "",
    ]
    rows = []
    for p in frontier:
        lost = None if base is None else degradation(p["forgetting"], base["forgetting"], forgetting[1])
        cells = [p["milestone"], p["learning"], p["forgetting"], lost]
        rows.append([f"`{p['arm']}`", p["method"], *map(_cell, cells)])
    parts.append(_table(["arm", "method", "tokens", learning[0], forgetting[0], "forgetting vs base"], rows))
    if plot_name:
        parts += ["", f"![learning–forgetting frontier]({plot_name})"]
    if recommendation is not None:
        parts += ["", "### Recommendation", "", describe_recommendation(recommendation)]
    if sensitivity:
        parts += [
            "",
            "## Learning-rate sensitivity",
            "",
            f"Per LR sweep at its final milestone (seeds averaged): the best LR for `{learning[0]}`, the mean "
            "absolute change of the metric per factor-of-10 step from the best LR to its neighbouring LRs "
            "(change / decades between the LRs), and the spread (max − min) across the sweep's LRs.",
            "",
        ]
        body = []
        for r in sensitivity:
            lrs = ", ".join(f"{lr:g}" for lr in r["learning_rates"])
            numbers = [r["best_value"], r["per_decade"], r["spread"], r["seed_spread"]]
            body.append([f"`{r['sweep']}`", lrs, f"{r['best_learning_rate']:g}", *map(_cell, numbers)])
        header = ["sweep", "LRs", "best LR", "best value", "change per decade", "spread", "seed spread"]
        parts.append(_table(header, body))
    return "\n".join(parts) + "\n"
