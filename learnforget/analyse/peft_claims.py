"""Beyond the paper: the paper's LoRA-vs-full comparisons for every other PEFT method, and intruder dimensions.

- `method_claims`: for each PEFT method a study trains besides LoRA (DoRA, VeRA, IA³, ...; its family,
  `config.peft.method_family`), the paper's §4.1 and §4.2 comparisons and our matched-learning test, with
  the method in LoRA's place: does it learn less than full finetuning, forget less, and forget less at
  matched learning? The paper only tested LoRA: these verdicts go beyond it.
- `intruder_claim`: Shuttleworth et al. ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", 2024)
  found that LoRA's ΔW adds *intruder dimensions* (new high-ranking singular vectors, dissimilar to the
  base's) and that they go with forgetting. Across the adapter arms' configurations at the final
  milestone: does the intruder count rise with forgetting? Effect = Spearman's ρ between the two; noise =
  1/√(n−1), the spread of ρ for n unrelated pairs, so supported when ρ ≥ 3/√(n−1), contradicted when
  ρ ≤ −3/√(n−1), inconclusive (no clear relation) in between.
"""

from __future__ import annotations

import math

from learnforget.analyse.claims_learning import budget_and_peak
from learnforget.analyse.claims_matched import claim_matched
from learnforget.analyse.points import is_full, is_paper_method
from learnforget.analyse.verdicts import INTRUDERS, StudyPoints, missing, part
from learnforget.config.methods import family_label, method_of

# Shuttleworth et al. (2024): LoRA's intruder dimensions go with forgetting.
INTRUDER_CLAIM = (
    "Shuttleworth",
    "Across adapter arms, more intruder dimensions in ΔW go with more forgetting.",
)


def other_methods(s: StudyPoints) -> list[str]:
    """Families of the PEFT methods besides the paper's LoRA in this study, in order of appearance."""
    return list(dict.fromkeys(method_of(p).family for p in s.trained if not is_paper_method(p)))


def method_claims(s: StudyPoints) -> list[tuple[str, str, str, dict]]:
    """(id, section, statement, verdict) of the paper's comparisons with each other PEFT method in LoRA's place."""
    claims = []
    for method in other_methods(s):
        label = family_label(method)
        claims += [
            (f"{method}-4.1", "§4.1 (beyond)", f"{label} learns less than full finetuning, at the same budget "
             "and at each method's peak.", budget_and_peak(s, "learning", method)),
            (f"{method}-4.2", "§4.2 (beyond)", f"{label} forgets less than full finetuning, at the same budget "
             "and at each method's peak learning.", budget_and_peak(s, "forgetting", method)),
            (f"{method}-matched", "ours", f"{label} forgets less than full finetuning at matched learning.",
             claim_matched(s, method)),
        ]  # fmt: skip
    return claims


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2
            i = j + 1
        return result

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else 0.0


def intruder_claim(s: StudyPoints) -> dict:
    """More intruder dimensions go with more forgetting, across the adapter arms (see the module docstring)."""
    pts = [p for p in s.final if not is_full(p) and INTRUDERS in p["metrics"]]
    if len(pts) < 4:
        return missing(f"needs ≥4 adapter configurations with ΔW spectra ({INTRUDERS}); found {len(pts)}")
    intruders = [p["metrics"][INTRUDERS] for p in pts]
    forgetting = [-s.keeps(p) for p in pts]  # higher = forgets more
    if len(set(intruders)) == 1:
        return missing(
            f"every adapter configuration has {intruders[0]:g} intruder dimensions: nothing to relate"
        )
    rho = spearman(intruders, forgetting)
    noise = 1 / math.sqrt(len(pts) - 1)
    most = max(pts, key=lambda p: p["metrics"][INTRUDERS])
    fewest = min(pts, key=lambda p: p["metrics"][INTRUDERS])
    evidence = (
        f"{len(pts)} adapter configurations at {pts[0]['milestone']:,} tokens: Spearman ρ(intruders, forgetting "
        f"of {s.forgetting[0]}) = {rho:+.3f} (unrelated pairs: ±{noise:.3f}); most intruders "
        f"`{most['configuration']}` {most['metrics'][INTRUDERS]:g} ({s.forgetting[0]} {most['forgetting']:.4f}), "
        f"fewest `{fewest['configuration']}` {fewest['metrics'][INTRUDERS]:g} ({fewest['forgetting']:.4f})"
    )
    return part(rho, noise, evidence)
