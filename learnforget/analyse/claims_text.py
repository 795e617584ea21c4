"""The claims as text: the summary.md section (`claims_markdown`) and a verdict's label."""

from __future__ import annotations

from learnforget.analyse.verdicts import FACTOR

STUDY_INTRO = (
    "Each finding of Biderman et al. (2024) judged from this study's own numbers, as the paper states it "
    "(§ = the paper's section). `effect` is in the metric's units, positive in the claim's direction; "
    "`3× spread` is three times the seed noise (half-range across seeds of the compared configurations; "
    "for one that ran one seed, the pooled spread of replicated, stable configurations of the same method "
    "at the same milestone). A claim is *supported* only when effect ≥ 3× spread, *contradicted* when the "
    "opposite effect is, *inconclusive* otherwise or when the spread is unknown. §4.3 is supported as "
    "*same curve* when LoRA's frontier lies within noise of full finetuning's, as *better trade-off* "
    "when it lies ahead."
)
OURS_INTRO = (
    "**Beyond the paper (ours)**: stricter tests the paper does not claim; a contradiction here does "
    "not contradict the paper."
)
BEYOND_INTRO = (
    "**Beyond the paper: other PEFT methods and intruder dimensions**: the paper's comparisons with "
    "each other PEFT method in LoRA's place, and Shuttleworth et al.'s intruder dimensions vs "
    "forgetting (Spearman ρ across adapter configurations; 3× spread = 3/√(n−1)). The paper tested "
    "neither: these verdicts neither support nor contradict it."
)


def verdict_label(claim: dict) -> str:
    """'**supported** (same curve)' etc."""
    qualifier = claim.get("qualifier")
    return f"**{claim['verdict']}**" + (f" ({qualifier})" if qualifier else "")


def _cell(value: float | None, sign: str = "+") -> str:
    return "–" if value is None else f"{value:{sign}.4g}"


def claims_table(claims: list[dict]) -> list[str]:
    """The markdown table of verdicts: id, section, claim, verdict, effect, 3× spread, evidence."""
    lines = [
        "| id | § | claim | verdict | effect | 3× spread | evidence |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in claims:
        noise = None if c["noise"] is None else FACTOR * c["noise"]
        evidence = c["evidence"].replace("|", "\\|")
        cells = [
            c["id"],
            c["section"],
            c["claim"],
            verdict_label(c),
            _cell(c["effect"]),
            _cell(noise, ""),
            evidence,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def claims_markdown(claims: list[dict], heading: str = "## Claims", intro: str = STUDY_INTRO) -> str:
    """The claims section of summary.md: the paper's claims, then ours, each row citing its section."""
    lines = [heading, "", intro, ""]
    paper = [c for c in claims if c.get("source", "paper") == "paper"]
    ours = [c for c in claims if c.get("source") == "ours"]
    beyond = [c for c in claims if c.get("source") == "beyond"]
    if paper:
        lines += ["**The paper's claims**", "", *claims_table(paper), ""]
    if ours:
        lines += [OURS_INTRO, "", *claims_table(ours), ""]
    if beyond:
        lines += [BEYOND_INTRO, "", *claims_table(beyond), ""]
    return "\n".join(lines)
