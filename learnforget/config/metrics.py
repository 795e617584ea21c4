"""The metric registry: the names a study records, known before anything runs, and which way is better.

Names must match what `evaluate.suites.evaluate_suites` writes (`tests/test_fuzz_inputs.py` checks both
agree). Each built-in metric declares its direction here (`METRICS`); an lm-eval metric
(`harness/<task>/<metric>`) takes lm-eval's own `higher_is_better`, recorded in the store when the
harness ran (`declared`). No torch here: config validation uses it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """A kind of metric: the last part of its name (`code/loss` is a 'loss'), its direction, its meaning."""

    kind: str
    higher_is_better: bool
    meaning: str


METRICS = {m.kind: m for m in (
    Metric("loss", False, "mean per-token loss (NLL) of held-out text"),
    Metric("ref_nll", False, "mean per-token NLL of reference solutions given their prompts"),
    Metric("mc_acc", True, "multiple-choice accuracy (HellaSwag-style, as lm-eval scores it)"),
    Metric("mc_acc_norm", True, "multiple-choice accuracy, byte-length normalised"),
    Metric("pass@1", True, "code pass@1 of greedy completions, run in the sandbox"),
    Metric("strict_match", True, "GSM8K strict-match accuracy of greedy completions"),
    Metric("flexible_match", True, "GSM8K flexible-match accuracy of greedy completions"),
    Metric("distinct_fraction", True, "distinct completions over samples (output diversity)"),
    Metric("rank_delta_fraction", False, "median rank of ΔW explaining 90% of its variance, over its width"),
    Metric("rank_random_fraction", False, "the same for a random matrix of ΔW's shape and norm"),
    Metric("intruders", False, "intruder dimensions of the finetuned weights (Shuttleworth et al.)"),
)}  # fmt: skip
SAMPLED_PASS = Metric("sampled_pass@k", True, "code pass@k estimated from sampled completions")


def metric_kind(name: str) -> Metric | None:
    """The registry entry of a built-in metric name ('code/sampled_pass@5' is a sampled pass@k), or None."""
    kind = name.rsplit("/", 1)[-1]
    if kind.startswith("sampled_pass@"):
        return SAMPLED_PASS
    return METRICS.get(kind)


def higher_is_better(name: str, declared: dict[str, bool] | None = None) -> bool:
    """Which way a metric improves: as lm-eval declared it for a harness metric (recorded in the store),
    else as the registry declares it. Harness metrics of stores written before directions were recorded
    fall back to their name (losses, NLLs, perplexities and ranks go down)."""
    if declared and name in declared:
        return bool(declared[name])
    entry = metric_kind(name)
    if entry is not None:
        return entry.higher_is_better
    last = name.rsplit("/", 1)[-1]
    return not any(word in last for word in ("loss", "nll", "perplexity", "rank", "bits_per_byte"))


def learning_metric(study, declared: dict[str, bool] | None = None) -> tuple[str, bool]:
    """(name, higher is better) of the learning axis: held-out target loss (CPT) or reference NLL (IFT)."""
    name = study.eval.learning_metric or (
        f"{study.domain}/loss" if study.regime == "cpt" else f"{study.domain}/ref_nll"
    )
    return name, higher_is_better(name, declared)


def forgetting_metric(study, declared: dict[str, bool] | None = None) -> tuple[str, bool]:
    """(name, higher is better) of the forgetting axis: the source domain's held-out loss by default."""
    name = study.eval.forgetting_metric or f"{study.eval.source_corpora[0]}/loss"
    return name, higher_is_better(name, declared)


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
