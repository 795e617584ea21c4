"""The verdict rule and the seed noise it weighs effects against, over a study's seed-averaged points.

- `verdict`: supported when effect ≥ 3 × noise (and > 0), contradicted when −effect ≥ 3 × noise,
  inconclusive otherwise or with unknown noise.
- `StudyPoints`: one study's paper arms, seeds averaged per (configuration, milestone), with the noise of
  any compared point: its own seed spread (half-range across seeds) when it ran ≥2 seeds, else the pooled
  spread of comparable configurations (`pooled_spreads`: replicated, stable, same method family, same
  milestone); where every compared configuration repeats exactly across seeds, the pooled non-zero spread
  of the study's other configurations. Its methods are types: `full()` (full finetuning's plain arms) and
  `adapters(family)` (the paper's LoRA by default, or another peft family such as 'dora').
- `labelled`, `show`, `both`, `best_per`: what every claim module (`claims_*`, `peft_claims`,
  `suite_claims`) shares.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import mean, median

from learnforget.analyse.points import Axis, is_adapter, is_base, is_full, points, score, seed_average
from learnforget.config.methods import Base, Full, Lora, family_label, method_of

FACTOR = 3.0  # an effect must be this many seed spreads large to count
DELTA_FRACTION = "spectrum/rank_delta_fraction"
RANDOM_FRACTION = "spectrum/rank_random_fraction"
INTRUDERS = "spectrum/intruders"  # intruder dimensions summed over the matrices (Shuttleworth et al.)

# ---------------------------------------------------------------------------------------------------
# Verdicts


def verdict(effect: float | None, noise: float | None) -> tuple[str, str]:
    """(verdict, reason) from an oriented effect and the seed spread."""
    if effect is None:
        return "inconclusive", "no effect measurable"
    if noise is None:
        return "inconclusive", (
            "seed spread unknown: needs ≥2 seeds of a compared configuration whose results vary with the seed"
        )
    threshold = FACTOR * noise * (1 - 1e-9)  # exactly 3x counts, whatever the float rounding
    if effect > 0 and effect >= threshold:
        return "supported", f"effect ≥ 3× seed spread ({FACTOR * noise:.4g})"
    if effect < 0 and -effect >= threshold:
        return "contradicted", f"opposite effect ≥ 3× seed spread ({FACTOR * noise:.4g})"
    return "inconclusive", f"effect within 3× seed spread ({FACTOR * noise:.4g})"


def part(effect: float | None, noise: float | None, evidence: str) -> dict:
    judged, reason = verdict(effect, noise)
    return {"verdict": judged, "effect": effect, "noise": noise, "evidence": f"{evidence}; {reason}"}


def missing(evidence: str) -> dict:
    return {"verdict": "inconclusive", "effect": None, "noise": None, "evidence": evidence}


def combine(parts: list[dict]) -> dict:
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


def labelled(claim_id: str, section: str, statement: str, source: str, result: dict) -> dict:
    """A verdict with its claim's id, section, statement and source ('paper', 'ours' or 'beyond')."""
    return {"id": claim_id, "section": section, "claim": statement, "source": source, **result}


# ---------------------------------------------------------------------------------------------------
# Noise


def spread(p: dict, metric: str) -> float | None:
    return {"learning": p["learning_spread"], "forgetting": p["forgetting_spread"]}.get(
        metric, p["spreads"].get(metric)
    )


def family(p: dict) -> tuple[str, bool]:
    """What a configuration's seed noise depends on: its method's family, and whether dropout is on."""
    return method_of(p).family, bool(p["dropout"])


def pooled_spreads(avg: list[dict], base: dict | None, learning: Axis) -> dict[tuple, float]:
    """(method, dropout on, milestone, metric) -> root mean square of the seed spreads of the replicated,
    stable configurations there (stable: learns at least as well as the base; every one without a base).
    ("any", milestone, metric) pools the non-zero spreads of every family: the stand-in for configurations
    that repeat exactly across seeds (`StudyPoints.noise`)."""
    spreads: dict[tuple, list[float]] = defaultdict(list)
    for p in avg:
        if is_base(p) or p["seeds"] < 2:
            continue
        if base is not None and score(p["learning"], learning[1]) < score(base["learning"], learning[1]):
            continue
        for metric in ("learning", "forgetting", *p["spreads"]):
            if (s := spread(p, metric)) is not None:
                spreads[(*family(p), p["milestone"], metric)].append(s)
                if s > 0:
                    spreads[("any", p["milestone"], metric)].append(s)
    return {key: math.sqrt(mean(s * s for s in values)) for key, values in spreads.items()}


# ---------------------------------------------------------------------------------------------------
# A study's seed-averaged points


@dataclass
class StudyPoints:
    """A study's seed-averaged points (the paper's arms), its axes and its pooled seed spreads."""

    pts: list[dict]  # one per (arm, milestone), seeds apart
    avg: list[dict]
    base: dict | None
    learning: Axis
    forgetting: Axis
    pooled: dict[tuple, float]
    resolution: float = 0.0  # 1 / min(m, n) of the spectra's matrices: a rank fraction's step

    @property
    def trained(self) -> list[dict]:
        return [p for p in self.avg if not is_base(p)]

    @property
    def final(self) -> list[dict]:
        last = max((p["milestone"] for p in self.trained), default=None)
        return [p for p in self.trained if p["milestone"] == last]

    def full(self, final: bool = True, regularized: bool = False) -> list[dict]:
        """Full finetuning's points (at the final milestone, or all): its plain arms; the weight-decay /
        dropout baselines (§4.4) only with `regularized`, or when it has no plain arm."""
        found = [p for p in (self.final if final else self.trained) if is_full(p)]
        if regularized:
            return found
        return [p for p in found if not (p["weight_decay"] or p["dropout"])] or found

    def adapters(self, family: str = Lora.family, final: bool = True) -> list[dict]:
        """An adapter family's points (at the final milestone, or all): the paper's LoRA by default."""
        return [p for p in (self.final if final else self.trained) if is_adapter(p, family)]

    def learns(self, p: dict) -> float:
        return score(p["learning"], self.learning[1])

    def keeps(self, p: dict) -> float:
        return score(p["forgetting"], self.forgetting[1])

    def best(self, configs: list[dict]) -> dict:
        return max(configs, key=self.learns)

    def peak(self, configs: list[dict]) -> dict:
        """The best (configuration, milestone) of a method's points at every milestone; the earlier
        milestone on a tie."""
        return max(configs, key=lambda p: (self.learns(p), -p["milestone"]))

    def curve(self, configuration: str) -> list[dict]:
        return sorted(
            (p for p in self.avg if p["configuration"] == configuration), key=lambda p: p["milestone"]
        )

    def point_noise(self, p: dict, metric: str) -> float | None:
        own = spread(p, metric)
        return own if own is not None else self.pooled.get((*family(p), p["milestone"], metric))

    def noise(self, compared: list[dict], metric: str) -> float | None:
        """Largest noise among the compared points (the base model's evaluation is taken as exact).

        When every compared configuration repeats exactly across seeds (a deterministic initialisation:
        full finetuning without dropout, PiSSA, VeRA, IA³ see the same rows whatever their seed), a spread
        of zero measures nothing and would let any difference count as 3× the noise: the pooled non-zero
        spread of the study's other replicated configurations at the same milestone stands in, and the
        noise is unknown when there is none."""
        trained = [p for p in compared if not is_base(p)]
        known = [n for p in trained if (n := self.point_noise(p, metric)) is not None]
        if not known:
            return None
        if max(known) > 0:
            return max(known)
        stand_in = [n for p in trained if (n := self.pooled.get(("any", p["milestone"], metric)))]
        return max(stand_in) if stand_in else None


def study_points(rows: list[dict], matrices: list[dict], learning: Axis, forgetting: Axis) -> StudyPoints:
    """The paper's arms of a study as seed-averaged points, with spectra and pooled seed spreads."""
    # The paper's arms: full finetuning trains embeddings and LM head, LoRA does not. Arms that swap this
    # ("full, embeddings frozen", "LoRA + trainable embeddings") separate the embedding confound; they are
    # shown in the study's tables but would mix two effects into every claim here.
    paper = paper_arms(rows)
    rows = [r for r in rows if r["arm"] in paper]
    pts = points(rows, learning, forgetting)
    add_spectrum(pts, matrices)
    avg = seed_average(pts)
    base = next((p for p in avg if is_base(p)), None)
    resolution = 1 / min((m["min_dim"] for m in matrices if m.get("min_dim")), default=math.inf)
    return StudyPoints(pts, avg, base, learning, forgetting, pooled_spreads(avg, base, learning), resolution)


def paper_arms(rows: list[dict]) -> set[str]:
    """The arms the paper's comparisons take (and the base): full finetuning that trains embeddings and LM
    head, adapters that do not."""
    paper: dict[str, bool] = {}
    for r in rows:
        if r["arm"] not in paper:  # an arm's rows share its settings
            kind = method_of(r)
            trains = r.get("train_embeddings")
            paper[r["arm"]] = isinstance(kind, Base) or trains in (None, isinstance(kind, Full))
    return {arm for arm, taken in paper.items() if taken}


def add_spectrum(pts: list[dict], matrices: list[dict]) -> None:
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
        if group and INTRUDERS not in p["metrics"] and all(m.get("intruders") is not None for m in group):
            p["metrics"][INTRUDERS] = sum(m["intruders"] for m in group)


# ---------------------------------------------------------------------------------------------------
# Shared by the claims


def value(p: dict, metric: str) -> float | None:
    """A point's value of a metric ('learning', 'forgetting' or a metric's name)."""
    return p[metric] if metric in ("learning", "forgetting") else p["metrics"].get(metric)


def show(p: dict, metric: str, at: bool = False) -> str:
    """'`configuration` 1.2345 ± 0.0100 (n=2)', with ' at N tokens' after the configuration if `at`."""
    half_range = spread(p, metric)
    text = f"{value(p, metric):.4f}" + ("" if half_range is None else f" ± {half_range:.4f}")
    where = f" at {p['milestone']:,} tokens" if at else ""
    return f"`{p['configuration']}`{where} {text} (n={p['seeds']})"


def both(
    s: StudyPoints, final: bool = True, family: str = Lora.family
) -> tuple[list[dict], list[dict], dict | None]:
    """(full points, the adapter family's points (LoRA's by default), the 'missing' verdict when either is
    absent)."""
    full, adapters = s.full(final), s.adapters(family, final)
    if full and adapters:
        return full, adapters, None
    return (
        full,
        adapters,
        missing(f"no {'full-finetuning' if not full else family_label(family)} arms in this study"),
    )


def best_per(s: StudyPoints, configs: list[dict], outer: str, inner: str) -> dict:
    """{outer value: {inner value: best-learning configuration}}, e.g. per target modules, per rank."""
    table: dict = defaultdict(dict)
    for p in configs:
        cell = table[p[outer]]
        if p[inner] not in cell or s.learns(p) > s.learns(cell[p[inner]]):
            cell[p[inner]] = p
    return table
