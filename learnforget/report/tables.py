"""Report: the study's numbers as tables (console and summary.md), and `write_report`, which writes them
with the static plots (`report.plots`) and the interactive report.html (`report.html`)."""

from __future__ import annotations

import os
from collections import defaultdict
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

from rich.console import Console
from rich.table import Table

from learnforget.analyse.claims import claims_side_by_side
from learnforget.analyse.claims_text import claims_markdown, verdict_label
from learnforget.analyse.points import is_base
from learnforget.analyse.suite_claims import SUITE_INTRO
from learnforget.base.gguf import named_base_label
from learnforget.config.metrics import forgetting_metric, learning_metric
from learnforget.config.study import StudyConfig
from learnforget.files import writing
from learnforget.report.html import write_study_html
from learnforget.report.plots import (  # noqa: F401 (re-exported: the report's plots)
    PLOT_NAME,
    SPECTRUM_PLOT_NAME,
    TRAINING_PLOT_NAME,
    plot_learning_forgetting,
    plot_spectrum_over_training,
    plot_training_curves,
)
from learnforget.report.study_data import (
    claims_for_study_dir,
    claims_for_suite_dir,
    frontier_for_study_dir,
    methods_markdown,
)
from learnforget.report.style import STAGE_NOTE
from learnforget.study.stage_times import stage_table
from learnforget.study.store import Store
from learnforget.study.store_schema import FAILED


def metric_curves(store: Store) -> dict[str, dict[int, dict[str, float]]]:
    """arm -> tokens -> metric -> value."""
    curves: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in store.metrics():
        curves[row["arm"]][row["tokens"]][row["metric"]] = row["value"]
    return curves


def final_metrics(curve: dict[int, dict[str, float]]) -> dict[str, float]:
    return curve[max(curve)] if curve else {}


def arm_rows(store: Store, study: StudyConfig) -> list[dict]:
    """One row per arm (base first): final learning and forgetting metrics, their change vs the base, cost."""
    learn, _ = learning_metric(study)
    forget, _ = forgetting_metric(study)
    curves = metric_curves(store)
    arms = sorted(store.arms(), key=lambda a: not is_base(a))
    base = final_metrics(next((curves.get(a["name"], {}) for a in arms if is_base(a)), {}))
    rows = []
    for arm in arms:
        # A failed or diverged arm's last milestone is not a result: its row shows none (the milestone
        # tables below keep them, under the arm's status).
        final = {} if arm["status"] in FAILED else final_metrics(curves.get(arm["name"], {}))
        row = {"arm": arm["name"] if arm["status"] == "done" else f"{arm['name']} ({arm['status']})"}
        for metric in (learn, forget):
            value = final.get(metric)
            row[metric] = value
            row[f"Δ {metric.split('/')[0]}"] = (
                None if value is None or metric not in base else value - base[metric]
            )
        row.update(
            embeddings="–" if is_base(arm) else ("trained" if arm["train_embeddings"] else "frozen"),
            trainable=arm["trainable_params"],
            tokens_per_s=arm["tokens_per_s"],
            peak_memory_mb=arm["peak_memory_mb"],
            rank_delta_fraction=final.get("spectrum/rank_delta_fraction"),
        )
        rows.append(row)
    return rows


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:+.{digits}f}" if digits < 0 else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table_cells(row: dict) -> list[str]:
    cells = []
    for key, value in row.items():
        if key.startswith("Δ"):
            cells.append("–" if value is None else f"{value:+.3f}")
        elif key in ("tokens_per_s", "peak_memory_mb"):
            cells.append("–" if value is None else f"{value:,.0f}")
        else:
            cells.append(_fmt(value))
    return cells


HEADERS = {"tokens_per_s": "tokens/s", "peak_memory_mb": "peak MB", "rank_delta_fraction": "ΔW rank (90%)"}


def console_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(HEADERS.get(key, key), justify="left" if key == "arm" else "right")
    for row in rows:
        table.add_row(*_table_cells(row))
    return table


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _data_line(store: Store) -> str:
    """IFT: overlong examples and padding of the training rows (empty for CPT)."""
    stats = store.info("data_stats")
    if not stats:
        return ""
    from learnforget.data.datasets import describe_stats  # heavy: torch and transformers, about 1.6 s

    return describe_stats(stats) + "; tokens in the tables count real tokens only."


def _stage_section(store: Store) -> list[str]:
    """summary.md's table of seconds per arm and stage (empty for a study stored before stages were timed)."""
    header, rows = stage_table(store)
    if not rows:
        return []
    cells = [[r[0], *(_fmt(v, 1) for v in r[1:])] for r in rows]
    return ["## Time per stage (seconds)", "", markdown_table(header, cells), "", STAGE_NOTE, ""]


def write_summary(study_dir: Path, store: Store, study: StudyConfig) -> Path:
    """summary.md: settings, a table of arms, and one table of milestones per arm."""
    learn, _ = learning_metric(study)
    forget, _ = forgetting_metric(study)
    rows = arm_rows(store, study)
    curves = metric_curves(store)
    parts = [
        f"# Study `{study.name}`",
        "",
        f"Base model: `{store.info('base_path', study.base_model)}`{named_base_label(study.base_model)}. Target domain: **{study.domain}** "
        f"({study.regime.upper()}), {study.budget_tokens:,} tokens per arm in {study.steps} steps of "
        f"{study.batch_size}×{study.seq_len}; milestones every {study.steps // study.milestones or 1} steps.",
        _data_line(store),
        f"Learning = `{learn}` (target domain, held out); forgetting = `{forget}` (source domain, held out). "
        "Δ is the change from the base model (for losses: negative Δ on the target = learned; positive Δ "
        "on the source = forgot).",
        "",
        "## Arms (final milestone)",
        "",
        markdown_table([HEADERS.get(k, k) for k in rows[0]], [_table_cells(r) for r in rows])
        if rows
        else "(no arms)",
        "",
        "ΔW rank (90%): median over the linear layers of the rank explaining 90% of ΔW's variance, as a "
        "fraction of min(m, n) (a Gaussian random matrix needs about 0.5).",
        "",
        *_stage_section(store),
        f"![learning vs forgetting]({PLOT_NAME})",
        "",
        f"![ΔW rank along training]({SPECTRUM_PLOT_NAME})"
        if (study_dir / SPECTRUM_PLOT_NAME).exists()
        else "",
        "",
        f"![training loss]({TRAINING_PLOT_NAME})" if (study_dir / TRAINING_PLOT_NAME).exists() else "",
        "",
        "## Milestones",
    ]
    for arm in store.arms():
        curve = curves.get(arm["name"], {})
        if not curve:
            continue
        metrics = sorted({m for values in curve.values() for m in values})
        body = [
            [f"{tokens:,}"] + [_fmt(curve[tokens].get(m), 4) for m in metrics] for tokens in sorted(curve)
        ]
        status = f" ({arm['status']}: {arm['error']})" if arm["status"] in FAILED else ""
        parts += ["", f"### {arm['name']}{status}", "", markdown_table(["tokens"] + metrics, body)]
    parts += ["", frontier_for_study_dir(study_dir), "", methods_markdown(study_dir)]
    parts += ["", claims_markdown(claims_for_study_dir(study_dir))]
    path = study_dir / "summary.md"
    path.write_text("\n".join(parts) + "\n")
    return path


def write_report(study_dir: Path, store: Store, study: StudyConfig, console: Console | None = None) -> Path:
    """summary.md, the static plots, report.html (returned), and the final table on the console.

    The plots are drawn by a forked child while this process writes summary.md and report.html (two cores
    finish the report in about half the time); if the child fails, they are drawn here again, so that the
    error shows as it would have."""

    with writing(study_dir, "the report (summary.md, report.html, plots)"):
        return _write_report(study_dir, store, study, console)


def _write_report(study_dir: Path, store: Store, study: StudyConfig, console: Console | None) -> Path:
    child = None
    if "fork" in get_all_start_methods():
        child = get_context("fork").Process(
            target=_plots_in_child, args=(study_dir, store, study), daemon=True
        )
        child.start()
    else:
        write_plots(study_dir, store, study)
    write_summary(study_dir, store, study)
    html = write_study_html(study_dir, store, study)
    if child is not None:
        child.join()
        if child.exitcode != 0:
            write_plots(study_dir, store, study)
    if console is not None:
        console.print(console_table(arm_rows(store, study), f"{study.name}: final milestone"))
    return html


def _plots_in_child(study_dir: Path, store: Store, study: StudyConfig) -> None:
    """write_plots in the forked child: a failure exits 1 quietly (the parent draws them again and
    reports the error once)."""
    try:
        write_plots(study_dir, store, study)
    except BaseException:  # noqa: BLE001
        os._exit(1)


def write_plots(study_dir: Path, store: Store, study: StudyConfig) -> None:
    """The static PNGs of a study (the store is only read)."""
    if store.metric_rows():
        plot_learning_forgetting(study_dir, store, study)
    plot_spectrum_over_training(study_dir, store)
    plot_training_curves(study_dir, store)


def write_suite_summary(suite_dir: Path, settings: list[str]) -> Path:
    """summary.md of a suite: the claims' verdicts per setting side by side, the findings that compare
    settings, then each setting's tables."""
    judged = {key: claims_for_study_dir(suite_dir / key) for key in settings}
    verdicts = [
        [
            f"{c['section']} {c['claim']}"
            + {"ours": " *(ours)*", "beyond": " *(beyond the paper)*"}.get(c["source"], "")
        ]
        + [verdict_label(per[k]) if per[k] else "–" for k in settings]
        for c, per in claims_side_by_side(judged)
    ]
    parts = [
        f"# Suite `{suite_dir.name}`",
        "",
        "The paper's claims judged on each setting's own numbers, with the section of the paper each one "
        "states; rows marked *(ours)* are our stricter tests, beyond the paper (details and evidence below; "
        "each setting's full report is in its sub-directory).",
        "",
        markdown_table(["claim", *settings], verdicts),
        "",
        claims_markdown(claims_for_suite_dir(suite_dir, settings), "## Across settings", SUITE_INTRO),
    ]
    for key in settings:
        store = Store(suite_dir / key)
        study = StudyConfig.model_validate(store.info("config"))
        rows = arm_rows(store, study)
        parts += [
            "",
            f"## {key}",
            "",
            markdown_table([HEADERS.get(k, k) for k in rows[0]], [_table_cells(r) for r in rows]),
            "",
            f"![learning vs forgetting]({key}/{PLOT_NAME})",
            "",
            claims_markdown(judged[key], f"### Claims: {key}"),
        ]
    path = suite_dir / "summary.md"
    path.write_text("\n".join(parts) + "\n")
    return path
