"""Names of the metrics a study records, known before anything runs (no torch: config validation uses it).

They must match what `suites.evaluate_suites` writes; `tests/test_fuzz_inputs.py` checks both agree.
"""

from __future__ import annotations


def source_domain(study) -> str:
    """The study's main source (forgetting) corpus: the first of `eval.source_corpora` ('english' by default)."""
    return study.eval.source_corpora[0]


def produced_metrics(study) -> set[str]:
    """Names of the metrics `evaluate_suites` records for this study (harness ones: 'harness/...')."""
    ev, domain, source = study.eval, study.domain, source_domain(study)
    names = {f"{corpus}/loss" for corpus in ev.source_corpora} | {f"{domain}/loss"}
    if ev.choice_items:
        names |= {f"{source}/mc_acc", f"{source}/mc_acc_norm"}
    if ev.reference_problems:
        names.add(f"{domain}/ref_nll")
    if ev.generation_problems:
        names |= {"code/pass@1"} if domain == "code" else {"math/strict_match", "math/flexible_match"}
    if ev.diversity_prompts:
        names.add(f"{domain}/distinct_fraction")
        if domain == "code":
            ks = {1, *(k for k in ev.pass_k if k <= ev.diversity_samples)}
            names |= {f"code/sampled_pass@{k}" for k in ks}
    if ev.spectra:
        names |= {"spectrum/rank_delta_fraction", "spectrum/rank_random_fraction"}
    return names


def check_metric_name(study, field: str, name: str | None) -> None:
    """A learning/forgetting metric must be one the study records (ValueError names the choices)."""
    if name is None:
        return
    if name.startswith("harness/") and study.eval.harness_tasks:
        return  # task metric names are known only to lm-eval
    names = produced_metrics(study)
    if name not in names:
        raise ValueError(
            f"eval.{field} {name!r} is not a metric this study records; choose one of {', '.join(sorted(names))}"
            + (" or harness/<task>/<metric> with eval.harness_tasks" if not study.eval.harness_tasks else "")
        )
