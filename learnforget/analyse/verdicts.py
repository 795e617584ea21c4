"""The verdict rule and the seed noise it weighs effects against, over a study's seed-averaged points.

- `verdict`: supported when effect ≥ 3 × noise (and > 0), contradicted when −effect ≥ 3 × noise,
  inconclusive otherwise or with unknown noise.
- `StudyPoints`: one study's paper arms, seeds averaged per (configuration, milestone), with the noise of
  any compared point: its own seed spread (half-range across seeds) when it ran ≥2 seeds, else the pooled
  spread of comparable configurations (`pooled_spreads`: replicated, stable, same method family, same
  milestone); where every compared configuration repeats exactly across seeds, the pooled non-zero spread
  of the study's other configurations.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import mean, median

from learnforget.analyse.frontier import Axis, points, score, seed_average

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


# ---------------------------------------------------------------------------------------------------
# Noise


def spread(p: dict, metric: str) -> float | None:
    return {"learning": p["learning_spread"], "forgetting": p["forgetting_spread"]}.get(
        metric, p["spreads"].get(metric)
    )


def family(p: dict) -> tuple[str, bool]:
    return p["method"], bool(p["dropout"])


def pooled_spreads(avg: list[dict], base: dict | None, learning: Axis) -> dict[tuple, float]:
    """(method, dropout on, milestone, metric) -> root mean square of the seed spreads of the replicated,
    stable configurations there (stable: learns at least as well as the base; every one without a base).
    ("any", milestone, metric) pools the non-zero spreads of every family: the stand-in for configurations
    that repeat exactly across seeds (`StudyPoints.noise`)."""
    spreads: dict[tuple, list[float]] = defaultdict(list)
    for p in avg:
        if p["method"] == "base" or p["seeds"] < 2:
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
        return [p for p in self.avg if p["method"] != "base"]

    @property
    def final(self) -> list[dict]:
        last = max((p["milestone"] for p in self.trained), default=None)
        return [p for p in self.trained if p["milestone"] == last]

    def of(self, method: str, final: bool = True, regularized: bool = False) -> list[dict]:
        """The method's points (at the final milestone, or all). Full finetuning means its plain arms: the
        weight-decay / dropout baselines (§4.4) only with `regularized`, or when it has no plain arm."""
        found = [p for p in (self.final if final else self.trained) if p["method"] == method]
        if method != "full" or regularized:
            return found
        return [p for p in found if not (p["weight_decay"] or p["dropout"])] or found

    def learns(self, p: dict) -> float:
        return score(p["learning"], self.learning[1])

    def keeps(self, p: dict) -> float:
        return score(p["forgetting"], self.forgetting[1])

    def best(self, configs: list[dict]) -> dict:
        return max(configs, key=self.learns)

    def peak(self, method: str) -> dict:
        """The method's best (configuration, milestone); the earlier milestone on a tie."""
        return max(self.of(method, final=False), key=lambda p: (self.learns(p), -p["milestone"]))

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
        trained = [p for p in compared if p["method"] != "base"]
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
    paper_arm = {r["arm"]: r.get("train_embeddings") in (None, r["method"] == "full") for r in rows}
    rows = [r for r in rows if r["method"] == "base" or paper_arm[r["arm"]]]
    pts = points(rows, learning, forgetting)
    add_spectrum(pts, matrices)
    avg = seed_average(pts)
    base = next((p for p in avg if p["method"] == "base"), None)
    resolution = 1 / min((m["min_dim"] for m in matrices if m.get("min_dim")), default=math.inf)
    return StudyPoints(pts, avg, base, learning, forgetting, pooled_spreads(avg, base, learning), resolution)


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
