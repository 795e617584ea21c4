"""GSM8K answer extraction and scoring, as lm-evaluation-harness's `gsm8k` task does it, plus its prompt.

- `extract_strict`: lm-eval's "strict-match" filter, the first `#### N` in the generation.
- `extract_flexible`: lm-eval's "flexible-extract" filter, the last number-like span in the generation.
- `is_correct`: the extracted answer against the reference, after lm-eval's normalisation (drop commas,
  `$`, everything up to `#### ` and one trailing period), compared as numbers, so "1,000" == "1000.00".
- `math_fewshot_prompt`: "Question: ...\\nAnswer: <solution>" shots joined by blank lines, then the
  question, as lm-eval lays out a k-shot gsm8k prompt.

The patterns are copied from lm-eval 0.4's `tasks/gsm8k/gsm8k.yaml` so this module needs no lm-eval.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from fractions import Fraction

from learnforget.errors import UserError

STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# lm-eval's `regexes_to_ignore` for gsm8k's exact_match, applied in this order to both sides
IGNORED = [re.compile(p) for p in (",", r"\$", r"(?s).*#### ", r"\.$")]
DEFAULT_TEMPLATE = "Question: {question}\nAnswer:"


def extract_strict(text: str) -> str | None:
    """The number after the first "#### " in `text`, or None when there is none."""
    matches = STRICT_PATTERN.findall(text)
    return matches[0].strip() if matches else None


def extract_flexible(text: str) -> str | None:
    """The last number-like span of `text` (e.g. "$1,200." or "42"), or None when there is none."""
    matches = FLEXIBLE_PATTERN.findall(text)
    if not matches:
        return None
    found = [group for group in matches[-1] if group]  # the pattern has two alternative groups
    return found[0].strip() if found else None


def normalize_answer(text: str) -> str:
    """`text` with lm-eval's gsm8k normalisation: no commas or `$`, nothing up to "#### ", no final period."""
    for pattern in IGNORED:
        text = pattern.sub("", text)
    return text.strip()


def is_correct(pred: str | None, reference: str) -> bool:
    """Whether an extracted answer equals the reference (a number, or a whole "... #### N" solution).

    Both sides are normalised as lm-eval does; they match when the strings are equal or, failing that,
    when both parse as the same number ("72.0" == "72"). A missing prediction (None) is wrong.
    """
    if pred is None:
        return False
    pred, reference = normalize_answer(pred), normalize_answer(reference)
    if pred.lower() == reference.lower():
        return True
    try:
        return Fraction(pred) == Fraction(reference)
    except (ValueError, ZeroDivisionError):
        return False


def score_generation(generation: str, reference: str) -> dict[str, bool]:
    """Both lm-eval gsm8k metrics for one generation: {"strict-match": bool, "flexible-extract": bool}."""
    return {
        "strict-match": is_correct(extract_strict(generation), reference),
        "flexible-extract": is_correct(extract_flexible(generation), reference),
    }


def math_fewshot_prompt(question: str, shots: Sequence[dict], template: str = DEFAULT_TEMPLATE) -> str:
    """A k-shot prompt: each shot as `template` + " " + its solution, blank lines between, then `question`.

    `template` must contain "{question}". A shot is a dict with "question" and either "solution"
    (records of `math_problems`) or "answer" holding the worked solution (rows of the GSM8K dataset).
    With the default template the model is expected to continue after "Answer:" and end with "#### N".
    """
    if "{question}" not in template:
        raise UserError(f"math prompt template {template!r} has no {{question}} placeholder; add one")
    parts = []
    for i, shot in enumerate(shots):
        target = shot.get("solution", shot.get("answer"))
        if not isinstance(shot.get("question"), str) or not isinstance(target, str):
            raise UserError(
                f"few-shot example {i} needs string 'question' and 'solution' (or 'answer') fields"
            )
        parts.append(template.replace("{question}", shot["question"]) + " " + target)
    parts.append(template.replace("{question}", question))
    return "\n\n".join(parts)
