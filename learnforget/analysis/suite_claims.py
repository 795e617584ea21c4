"""The paper's findings that compare settings (a suite such as paper-mini holds one study per setting).

§4.2: IFT forgets more than CPT, and code more than math. A setting's forgetting is the degradation of
the forgetting metric against its base model (positive = forgot) at the final milestone, averaged over the
best-learning configuration of each method (full finetuning and LoRA). Two settings are compared only when
they share the forgetting metric and differ in exactly the compared attribute: IFT vs CPT within a
domain, code vs math within a regime. The effect is the mean difference over such pairs; the noise is the
largest seed noise of the compared points (`claims.StudyPoints.noise`, each in its own study).
"""

from __future__ import annotations

from pathlib import Path
from statistics import mean

from learnforget.analysis.claims import StudyPoints, labelled, part, study_points
from learnforget.analysis.frontier import study_axes

SUITE_INTRO = (
    "The paper's findings that compare settings (§ = the paper's section), from each setting's own numbers: "
    "a setting's forgetting is the degradation of the forgetting metric against the base model at the final "
    "milestone, averaged over the best-learning full-finetuning and LoRA configurations; settings are paired "
    "when they differ only in the compared attribute (IFT vs CPT within a domain, code vs math within a "
    "regime) and share the forgetting metric. Verdict rule and `3× spread` as in each setting's claims."
)
SUITE_CLAIMS = {
    "4.2-ift": ("§4.2", "IFT forgets more than CPT.", "regime", "ift", "cpt"),
    "4.2-code": ("§4.2", "Code forgets more than math.", "domain", "code", "math"),
}


def _setting_forgetting(s: StudyPoints) -> dict | None:
    """Mean degradation vs base of the best configuration of each method at the final milestone."""
    if s.base is None:
        return None
    best = [s.best(configs) for method in ("full", "lora") if (configs := s.of(method))]
    if not best:
        return None
    return {
        "degradation": mean(s.keeps(s.base) - s.keeps(p) for p in best),
        "noise": s.noise(best, "forgetting"),
        "metric": s.forgetting[0],
        "configurations": [p["configuration"] for p in best],
    }


def judge_suite(settings: list[dict]) -> list[dict]:
    """Verdicts on SUITE_CLAIMS. Each setting: {"setting", "domain", "regime", "rows", "matrices",
    "learning", "forgetting"} (rows and matrices as for `judge_claims`)."""
    measured = []
    for setting in settings:
        s = study_points(setting["rows"], setting["matrices"], setting["learning"], setting["forgetting"])
        if (forgot := _setting_forgetting(s)) is not None:
            measured.append({**setting, **forgot})
    claims = []
    for claim_id, (section, statement, attribute, more, less) in SUITE_CLAIMS.items():
        other = "domain" if attribute == "regime" else "regime"
        pairs = [
            (a, b)
            for a in measured
            for b in measured
            if a[attribute] == more
            and b[attribute] == less
            and a[other] == b[other]
            and a["metric"] == b["metric"]
        ]
        if not pairs:
            result = {
                "verdict": "inconclusive",
                "effect": None,
                "noise": None,
                "evidence": f"needs a {more} and a {less} setting of the same {other}, with base-model "
                "evaluations and the same forgetting metric",
            }
        else:
            effect = mean(a["degradation"] - b["degradation"] for a, b in pairs)
            noises = [n for a, b in pairs for n in (a["noise"], b["noise"]) if n is not None]
            listing = "; ".join(
                f"{a['setting']} {a['degradation']:+.4f} vs {b['setting']} {b['degradation']:+.4f}"
                for a, b in pairs
            )
            evidence = (
                f"{pairs[0][0]['metric']} degradation vs base (mean of the best full and LoRA configurations, "
                f"final milestone): {listing}; {more} forgets more by {effect:+.4f}"
            )
            result = part(effect, max(noises) if noises else None, evidence)
        claims.append(labelled(claim_id, section, statement, "paper", result))
    return claims


def claims_for_suite_dir(suite_dir: str | Path, settings: list[str]) -> list[dict]:
    """`judge_suite` on a suite's output directory (one study per setting sub-directory)."""
    loaded = []
    for key in settings:
        rows, matrices, learning, forgetting, study = study_axes(Path(suite_dir) / key)
        loaded.append(dict(setting=key, domain=study.domain, regime=study.regime, rows=rows, matrices=matrices,
                           learning=learning, forgetting=forgetting))  # fmt: skip
    return judge_suite(loaded)
