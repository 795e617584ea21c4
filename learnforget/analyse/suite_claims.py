"""The paper's findings that compare settings (a suite such as paper-mini holds one study per setting).

Each setting is measured at its final milestone (the same budget), on the best-learning configuration of
each method (full finetuning's plain arms and LoRA), against its own base model:
- §4.2 forgetting: the degradation of the forgetting metric vs the base (positive = forgot), averaged
  over the two methods. IFT forgets more than CPT; code more than math.
- §4.1 learning gap: the share of full finetuning's learning gain over the base that LoRA misses,
  (full − LoRA) / (full − base), a fraction, so settings with different learning metrics (HumanEval vs
  GSM8K, code vs math loss) compare. LoRA falls further behind for code than math, and for CPT than IFT
  (the paper's reason, in §4.6, to prefer LoRA for IFT). Its noise is the seed noise n of the compared
  points carried through the ratio: n × (1 + |share|) / gain.
Two settings are paired when they differ only in the compared attribute (IFT vs CPT within a domain, code
vs math within a regime) and, for forgetting, share the forgetting metric. The effect is the mean
difference over the pairs; the noise the largest of the paired settings' noises (`StudyPoints.noise`).
"""

from __future__ import annotations

from statistics import mean

from learnforget.analyse.verdicts import StudyPoints, labelled, part, study_points

SUITE_INTRO = (
    "The paper's findings that compare settings (§ = the paper's section), each setting measured at its "
    "final milestone on the best-learning full-finetuning and LoRA configurations: forgetting = the "
    "degradation of the forgetting metric against the base model, averaged over the two methods; learning "
    "gap = the share of full finetuning's gain over the base that LoRA misses. Settings are paired when they "
    "differ only in the compared attribute (IFT vs CPT within a domain, code vs math within a regime). "
    "Verdict rule and `3× spread` as in each setting's claims."
)
# id -> (section, statement, measure, attribute, the value that should show more, the other value)
SUITE_CLAIMS = {
    "4.1-code": ("§4.1", "LoRA falls further behind full finetuning for code than for math.", "gap", "domain", "code", "math"),
    "4.1-cpt": ("§4.1", "LoRA falls further behind full finetuning for CPT than for IFT.", "gap", "regime", "cpt", "ift"),
    "4.2-ift": ("§4.2", "IFT forgets more than CPT.", "forgetting", "regime", "ift", "cpt"),
    "4.2-code": ("§4.2", "Code forgets more than math.", "forgetting", "domain", "code", "math"),
}  # fmt: skip
MEASURES = {
    "gap": "share of full finetuning's learning gain that LoRA misses",
    "forgetting": "degradation vs base",
}


def _measure(s: StudyPoints) -> dict:
    """{"forgetting": (value, noise), "gap": (value, noise)}, each only where measurable."""
    full, lora = s.full(), s.adapters()
    if s.base is None or not full or not lora:
        return {}
    bf, bl = s.best(full), s.best(lora)
    found = {
        "forgetting": (mean(s.keeps(s.base) - s.keeps(p) for p in (bf, bl)), s.noise([bf, bl], "forgetting"))
    }
    gain = s.learns(bf) - s.learns(s.base)
    if gain > 0:  # full finetuning learned: the share is defined
        share = (s.learns(bf) - s.learns(bl)) / gain
        noise = s.noise([bf, bl], "learning")
        found["gap"] = (share, None if noise is None else noise * (1 + abs(share)) / gain)
    return found


def judge_suite(settings: list[dict]) -> list[dict]:
    """Verdicts on SUITE_CLAIMS. Each setting: {"setting", "domain", "regime", "rows", "matrices",
    "learning", "forgetting"} (rows and matrices as for `judge_claims`)."""
    measured = []
    for setting in settings:
        s = study_points(setting["rows"], setting["matrices"], setting["learning"], setting["forgetting"])
        measured.append({**setting, "measures": _measure(s)})
    claims = []
    for claim_id, (section, statement, measure, attribute, more, less) in SUITE_CLAIMS.items():
        other = "domain" if attribute == "regime" else "regime"
        pairs = [
            (a, b)
            for a in measured
            for b in measured
            if a[attribute] == more
            and b[attribute] == less
            and a[other] == b[other]
            and measure in a["measures"]
            and measure in b["measures"]
            and (measure == "gap" or a["forgetting"][0] == b["forgetting"][0])
        ]
        if not pairs:
            result = {
                "verdict": "inconclusive",
                "effect": None,
                "noise": None,
                "evidence": f"needs a {more} and a {less} setting of the same {other}, each with a base-model "
                "evaluation, full-finetuning and LoRA arms"
                + (" and the same forgetting metric" if measure == "forgetting" else ""),
            }
        else:
            effect = mean(a["measures"][measure][0] - b["measures"][measure][0] for a, b in pairs)
            noises = [x["measures"][measure][1] for pair in pairs for x in pair]
            listing = "; ".join(
                f"{a['setting']} {a['measures'][measure][0]:+.4f} vs {b['setting']} {b['measures'][measure][0]:+.4f}"
                for a, b in pairs
            )
            what = f"{pairs[0][0]['forgetting'][0]} " if measure == "forgetting" else ""
            evidence = f"{what}{MEASURES[measure]}: {listing}; {more} − {less} {effect:+.4f}"
            known = [n for n in noises if n is not None]
            result = part(effect, max(known) if known else None, evidence)
        claims.append(labelled(claim_id, section, statement, "paper", result))
    return claims
