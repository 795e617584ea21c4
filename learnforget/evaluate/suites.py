"""The metrics measured at every milestone, by suite: learning on the target domain, forgetting on the source.

Metric names are '<domain>/<measure>'. Which of them are the study's learning and forgetting axes is
decided by `learning_metric` and `forgetting_metric`.
"""

from __future__ import annotations

from learnforget.config import StudyConfig
from learnforget.data.datasets import SOURCE_DOMAIN
from learnforget.evaluate.likelihood import mean_token_loss


def evaluate_suites(model, tokenizer, study: StudyConfig, eval_sets: dict) -> dict[str, float]:
    """Every metric of one model on the study's evaluation sets."""
    metrics = {}
    for corpus, rows in eval_sets["loss"].items():
        metrics[f"{corpus}/loss"] = mean_token_loss(model, rows, study.eval.batch_size)
    return metrics


def learning_metric(study: StudyConfig) -> tuple[str, bool]:
    """(metric name, higher is better) of the learning axis."""
    return f"{study.domain}/loss", False


def forgetting_metric(study: StudyConfig) -> tuple[str, bool]:
    """(metric name, higher is better) of the forgetting axis (the source domain's ability)."""
    return f"{SOURCE_DOMAIN}/loss", False
