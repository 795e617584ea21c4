"""A study directory's numbers for the analyses: the store read once, its rows handed to `analyse/`.

`analyse/` takes rows, points and study configs, never a directory or a store; here each entry point of
the report and the CLI opens a study's store, reads its config, metric rows, ΔW matrices and arms, and the
metric directions lm-eval declared (`metric_directions`, absent in stores written before they were
recorded), then calls the analysis.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from learnforget.analyse.claims import diversity_metric, judge_claims
from learnforget.analyse.frontier import frontier_markdown, lr_sensitivity, pareto_frontier, recommend
from learnforget.analyse.methods import methods_table, rank_methods
from learnforget.analyse.points import Axis, points
from learnforget.analyse.suite_claims import judge_suite
from learnforget.config.metrics import forgetting_metric, learning_metric
from learnforget.config.study import StudyConfig
from learnforget.errors import UserError
from learnforget.report.frontier_plot import frontier_plot
from learnforget.study.store import Store, open_store


def study_of(store: Store, study_dir: str | Path) -> StudyConfig:
    """The study config a store holds (a UserError when it holds none, or one that no longer validates)."""
    config = store.info("config")
    if config is None:
        raise UserError(
            f"{study_dir}: the study store holds no config; rerun `learnforget run --out {study_dir}`"
        )
    try:
        return StudyConfig.model_validate(config)
    except ValidationError as err:
        raise UserError(
            f"{study_dir}: the stored study config no longer validates ({err.errors()[0]['msg']})"
        ) from None


def study_axes(
    study_dir: str | Path, store: Store | None = None
) -> tuple[list[dict], list[dict], Axis, Axis, StudyConfig]:
    """(metric rows, matrix rows, learning axis, forgetting axis, StudyConfig) of a study directory (its
    `store`, when already open), the axes' directions as lm-eval declared them where the store recorded them."""
    store = store or open_store(study_dir)
    study = study_of(store, study_dir)
    declared = store.info("metric_directions")
    learning, forgetting = learning_metric(study, declared), forgetting_metric(study, declared)
    return store.metric_rows(), store.matrices(), learning, forgetting, study


def recommend_for_study_dir(
    study_dir: str | Path, max_forgetting: float, relative_to_base: bool = True
) -> dict | None:
    """`recommend` on a study directory's numbers, with the study's learning and forgetting metrics."""
    rows, _, learning, forgetting, _ = study_axes(study_dir)
    return recommend(
        points(rows, learning, forgetting), learning, forgetting, max_forgetting, relative_to_base
    )


def frontier_for_study_dir(study_dir: str | Path, plot_name: str = "frontier.png") -> str:
    """Write the frontier plot into the study directory and return the summary.md section."""
    rows, _, learning, forgetting, _ = study_axes(study_dir)
    pts = points(rows, learning, forgetting)
    frontier = pareto_frontier(pts, learning, forgetting)
    if pts:
        frontier_plot(pts, frontier, learning, forgetting, Path(study_dir) / plot_name)
    sensitivity = lr_sensitivity(pts, learning)
    return frontier_markdown(
        pts, frontier, learning, forgetting, sensitivity, plot_name=plot_name if pts else None
    )


def claims_for_study_dir(study_dir: str | Path) -> list[dict]:
    """`judge_claims` on a study directory, with the study's learning, forgetting and diversity metrics."""
    rows, matrices, learning, forgetting, study = study_axes(study_dir)
    return judge_claims(rows, matrices, learning, forgetting, diversity_metric(rows, study.domain))


def claims_for_suite_dir(suite_dir: str | Path, settings: list[str]) -> list[dict]:
    """`judge_suite` on a suite's output directory (one study per setting sub-directory)."""
    loaded = []
    for key in settings:
        rows, matrices, learning, forgetting, study = study_axes(Path(suite_dir) / key)
        loaded.append(dict(setting=key, domain=study.domain, regime=study.regime, rows=rows, matrices=matrices,
                           learning=learning, forgetting=forgetting))  # fmt: skip
    return judge_suite(loaded)


def method_rows(study_dir: str | Path) -> list[dict]:
    """`rank_methods` on a study directory: one row per finetuning method, ranked on the frontier."""
    store = open_store(study_dir)
    rows, _, learning, forgetting, _ = study_axes(study_dir, store)
    return rank_methods(rows, store.arms(), learning, forgetting)


def methods_markdown(study_dir: str | Path) -> str:
    """The '## Methods' section of a study's summary.md (empty when it trains only full and LoRA)."""
    _, _, learning, forgetting, _ = study_axes(study_dir)
    return methods_table(method_rows(study_dir), learning, forgetting)
