"""Output diversity: how many distinct completions a model gives when sampled many times per prompt.

The paper (Biderman et al. 2024, section on generation diversity) samples each HumanEval problem many
times at a raised temperature and counts unique outputs: full finetuning collapses diversity more than
LoRA. Two outputs count as the same when they differ only in whitespace (runs collapsed, ends stripped),
so trailing newlines or re-indented blank lines do not inflate diversity.

Defaults match the paper's HumanEval pass@k sampling: DIVERSITY_SAMPLES = 50 samples per problem at
DIVERSITY_TEMPERATURE = 0.8. Pass them to `learnforget.evaluate.generate.generate` to produce the samples.
"""

from __future__ import annotations

import re
from statistics import mean

from learnforget.errors import UserError

DIVERSITY_TEMPERATURE = 0.8  # the paper's HumanEval sampling temperature for pass@k and diversity
DIVERSITY_SAMPLES = 50  # samples per prompt, as in the paper's HumanEval pass@k runs

_WHITESPACE = re.compile(r"\s+")


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip both ends."""
    return _WHITESPACE.sub(" ", text).strip()


def distinct_fraction(samples: list[str]) -> float:
    """Number of distinct samples (after whitespace normalisation) divided by the number of samples.

    1.0 means every sample differs; 1/len(samples) means all samples are the same.
    """
    if not samples:
        raise UserError("distinct_fraction got no samples: generate at least one sample per prompt")
    return len({normalize_whitespace(s) for s in samples}) / len(samples)


def diversity_report(samples_per_prompt: list[list[str]]) -> dict:
    """Summarise diversity over prompts, each with its list of sampled completions.

    Returns {"distinct_fraction": mean over prompts of distinct_fraction,
             "distinct_outputs": mean over prompts of the number of distinct outputs,
             "n_prompts": number of prompts,
             "samples_per_prompt": samples per prompt (the mean if prompts differ)}.
    """
    if not samples_per_prompt:
        raise UserError("diversity_report got no prompts: pass one list of samples per prompt")
    for index, samples in enumerate(samples_per_prompt):
        if not samples:
            raise UserError(
                f"diversity_report: prompt {index} has no samples; generate at least one per prompt"
            )
    distinct_counts = [len({normalize_whitespace(s) for s in samples}) for samples in samples_per_prompt]
    sample_counts = [len(samples) for samples in samples_per_prompt]
    return {
        "distinct_fraction": float(mean(d / n for d, n in zip(distinct_counts, sample_counts, strict=True))),
        "distinct_outputs": float(mean(distinct_counts)),
        "n_prompts": len(samples_per_prompt),
        "samples_per_prompt": sample_counts[0]
        if len(set(sample_counts)) == 1
        else float(mean(sample_counts)),
    }
