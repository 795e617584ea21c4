"""The claim judge: each finding of "LoRA Learns Less and Forgets Less" checked against a study's own numbers.

`judge_claims` returns one verdict per claim (supported, contradicted or inconclusive) with its numbers.
The paper's claims (`PAPER_CLAIMS`, one per finding of §4.1–§4.6) measure the paper's own comparisons:
the same training budget (final milestone) and each method's peak. Our stricter tests (`OUR_CLAIMS`,
"beyond the paper") compare forgetting at matched learning; they are judged and shown apart.
The claims live by section: `claims_learning` (§4.1–§4.3), `claims_practice` (§4.4–§4.6),
`claims_matched` (ours), `peft_claims` (other PEFT methods, intruder dimensions); `claims_text` writes
them as markdown. `learnforget.analyse.suite_claims` judges the findings that compare settings (IFT vs
CPT, code vs math); `learnforget.analyse.verdicts` holds the verdict rule and the noise estimate.

Conventions (the same for every claim):
- Only the paper's arms are judged: full finetuning trains embeddings and LM head, LoRA does not.
- Seeds of a configuration (an arm's settings but its seed) are averaged at each milestone.
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
  `claims_learning.claim_tradeoff`.
"""

from __future__ import annotations

from learnforget.analyse.claims_learning import (
    budget_and_peak,
    claim_forgetting_grows,
    claim_rank,
    claim_tradeoff,
)
from learnforget.analyse.claims_matched import claim_matched, claim_matched_regularizers
from learnforget.analyse.claims_practice import (
    claim_alpha,
    claim_best_lr,
    claim_diversity,
    claim_lr_sensitivity,
    claim_regularizers,
    claim_spectrum,
    claim_targets,
)
from learnforget.analyse.peft_claims import INTRUDER_CLAIM, intruder_claim, method_claims
from learnforget.analyse.points import Axis
from learnforget.analyse.verdicts import labelled, study_points

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


def judge_claims(
    rows: list[dict], matrices: list[dict], learning: Axis, forgetting: Axis, diversity_metric: str | None
) -> list[dict]:
    """Verdicts from metric rows (`Store.metric_rows()`) and matrix rows (`Store.matrices()`): the paper's
    claims (PAPER_CLAIMS), then ours (OUR_CLAIMS), then those beyond the paper (other PEFT methods,
    intruder dimensions).

    Each: {"id", "section", "claim", "source": "paper"|"ours"|"beyond", "verdict": "supported"|
    "contradicted"|"inconclusive", "evidence", "effect", "noise"} and, for §4.3 when supported,
    "qualifier" ("same curve" or "better trade-off").
    """
    s = study_points(rows, matrices, learning, forgetting)
    judged = {
        "4.1": budget_and_peak(s, "learning"),
        "4.1-rank": claim_rank(s),
        "4.2": budget_and_peak(s, "forgetting"),
        "4.2-data": claim_forgetting_grows(s),
        "4.3": claim_tradeoff(s),
        "4.4": claim_regularizers(s),
        "4.4-diversity": claim_diversity(s, diversity_metric),
        "4.5": claim_spectrum(s),
        "4.6-lr": claim_lr_sensitivity(s),
        "4.6-best-lr": claim_best_lr(s),
        "4.6-targets": claim_targets(s),
        "4.6-alpha": claim_alpha(s),
        "ours-matched": claim_matched(s),
        "ours-matched-reg": claim_matched_regularizers(s),
    }
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


def diversity_metric(rows: list[dict], domain: str) -> str | None:
    """The study's diversity metric: '<domain>/distinct_fraction' where recorded, else any one, else None."""
    names = {r["metric"] for r in rows if r["metric"].endswith("distinct_fraction")}
    preferred = f"{domain}/distinct_fraction"
    return preferred if preferred in names else (sorted(names)[0] if names else None)
