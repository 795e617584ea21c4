"""Methods compared: one row per finetuning method (full, LoRA, DoRA, VeRA, IA³, ...), ranked on the
learning–forgetting frontier, with each method's cost and ΔW shape.

A method's row describes its best configuration (the best seed-averaged learning at the final
milestone, as the claim judge picks it). Ranking: methods with more configurations on the Pareto frontier
of all configurations at the final milestone come first, ties broken by best learning. Every number comes
with its seed spread (± half-range over seeds) where the configuration ran ≥2 seeds.

`rank_methods` and `methods_table` take a study's rows and arms; `report.study_data` reads them from a
study directory.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from learnforget.analyse.frontier import pareto_frontier
from learnforget.analyse.points import Axis, half_range, is_base, is_paper_kind, points, score, seed_average
from learnforget.analyse.verdicts import DELTA_FRACTION, INTRUDERS
from learnforget.config.methods import method_of

METHODS_INTRO = (
    "Each finetuning method's best configuration (best learning at the final milestone), ranked by how "
    "many of its configurations lie on the learning–forgetting frontier, then by learning; ± is the "
    "half-range over seeds. ΔW rank (90%): median over the layers, as a fraction of min(m, n); intruders: "
    "intruder dimensions of ΔW (Shuttleworth et al. 2024), summed over the layers."
)


def rank_methods(rows: list[dict], arms: list[dict], learning: Axis, forgetting: Axis) -> list[dict]:
    """One dict per method, ranked (see the module docstring), from metric rows (`Store.metric_rows()`)
    and the stored arms (`Store.arms()`: their costs)."""
    averaged = [p for p in seed_average(points(rows, learning, forgetting)) if not is_base(p)]
    if not averaged:
        return []
    last = max(p["milestone"] for p in averaged)
    final = [p for p in averaged if p["milestone"] == last]
    on_frontier = {p["configuration"] for p in pareto_frontier(final, learning, forgetting)}
    costs = {a["name"]: a for a in arms}
    by_family: dict[str, list[dict]] = defaultdict(list)
    for p in final:
        by_family[method_of(p).family].append(p)
    result = [_method_row(configs, on_frontier, costs, learning) for configs in by_family.values()]
    return sorted(result, key=lambda r: r["_order"])


def _method_row(configs: list[dict], on_frontier: set[str], costs: dict[str, dict], learning: Axis) -> dict:
    """A method's row: its best configuration, how many of its configurations are on the frontier, costs."""
    best = max(configs, key=lambda p: score(p["learning"], learning[1]))
    arms = [costs[a] for a in best["arms"] if a in costs]
    kind = method_of(best)
    on = sum(p["configuration"] in on_frontier for p in configs)
    return {
        "method": kind.label,
        "kind": kind,
        "frontier": on,
        "configurations": len(configs),
        "best": best["configuration"],
        "seeds": best["seeds"],
        "learning": (best["learning"], best["learning_spread"]),
        "forgetting": (best["forgetting"], best["forgetting_spread"]),
        "trainable": _cost(arms, "trainable_params"),
        "tokens_per_s": _cost(arms, "tokens_per_s"),
        "peak_memory_mb": _cost(arms, "peak_memory_mb"),
        "rank_fraction": (best["metrics"].get(DELTA_FRACTION), best["spreads"].get(DELTA_FRACTION)),
        "intruders": (best["metrics"].get(INTRUDERS), best["spreads"].get(INTRUDERS)),
        "_order": (-on, -score(best["learning"], learning[1])),
    }


def _cost(arms: list[dict], key: str) -> tuple[float | None, float | None]:
    """Mean and seed half-range of a stored arm column over a configuration's seeds."""
    values = [a[key] for a in arms if a.get(key) is not None]
    return (mean(values), half_range(values)) if values else (None, None)


def _cell(pair: tuple[float | None, float | None], digits: str) -> str:
    value, spread = pair
    if value is None:
        return "–"
    return f"{value:{digits}}" + ("" if spread is None else f" ± {spread:{digits}}")


def methods_table(methods: list[dict], learning: Axis, forgetting: Axis) -> str:
    """The '## Methods' section of summary.md from `rank_methods` (empty when the study trains only the
    paper's two methods)."""
    if all(is_paper_kind(m["kind"]) for m in methods):
        return ""
    header = ["rank", "method", "on frontier", "best configuration", learning[0], forgetting[0],
              "trainable params", "tokens/s", "peak MB", "ΔW rank (90%)", "intruders"]  # fmt: skip
    body = [
        [str(i + 1), m["method"], f"{m['frontier']}/{m['configurations']}", f"`{m['best']}` (n={m['seeds']})",
         _cell(m["learning"], ".4f"), _cell(m["forgetting"], ".4f"), _cell(m["trainable"], ",.0f"),
         _cell(m["tokens_per_s"], ",.0f"), _cell(m["peak_memory_mb"], ",.0f"), _cell(m["rank_fraction"], ".3f"),
         _cell(m["intruders"], ".1f")]
        for i, m in enumerate(methods)
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(["## Methods", "", METHODS_INTRO, "", *lines])
