"""A study, top to bottom: config → data → base → arms → train → evaluate → analyse → report.

Read it as a recipe. `run_studies` runs one study or a suite of them (paper-mini: one study per setting)
and returns the arms that failed or diverged; `run_study` is one study:

1. check everything that can be checked before any work (base, targets, ranks, harness tasks, trackers);
2. open the study directory: the same study as before (or none), the base (pretrained once, cached),
   the arms registered, the data every arm shares prepared once;
3. measure the base, and train this process's arms (in worker processes when the study has several),
   each evaluated at every milestone (study/arm.py is one arm's recipe);
4. write the report: tables, plots, claims judged against the paper, report.html.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from learnforget.arms.targets import check_targets
from learnforget.base.load import builtin_base_path, check_base_model, resolve_base, shipped_base
from learnforget.config.arms import Arm, expand_arms
from learnforget.config.study import StudyConfig
from learnforget.data.datasets import trained_tokens
from learnforget.errors import UserError
from learnforget.report.html import environment, write_study_html, write_suite_html
from learnforget.report.tables import write_report, write_suite_summary
from learnforget.runtime import distributed
from learnforget.runtime.precision import cpu_bf16_warning
from learnforget.study.base_model import run_base
from learnforget.study.data import prepare_data
from learnforget.study.display import StudyDisplay, console, out_console, pretrain_progress, progress_bars
from learnforget.study.dryrun import base_config, check_harness_tasks
from learnforget.study.identity import check_arms_fit, check_same_study, parse_shard, shard_arms
from learnforget.study.pool import run_arms, uses_pool
from learnforget.study.progress import study_header
from learnforget.study.stage_times import stage_summary
from learnforget.study.store import Store
from learnforget.study.store_schema import FINISHED
from learnforget.study.tracking import check_trackers

Failure = tuple[str, str, str]  # (arm, reason, 'failed' | 'diverged')


def run_studies(
    studies: list[tuple[str, StudyConfig]], out: Path | None, shard: str | None, recompute: bool
) -> list[Failure]:
    """One study (setting ''), or a suite: each setting into its own sub-directory, then the suite's summary."""
    if len(studies) == 1:
        return run_study(studies[0][1], out or Path("runs") / studies[0][1].name, shard, recompute)
    started, (first_key, first) = time.time(), studies[0]
    suite_dir = out or Path("runs") / first.name[: -len(first_key) - 1]  # names are '<suite>-<setting>'
    failures = []
    for key, study in studies:
        failures += [
            (f"{key}/{arm}", why, kind)
            for arm, why, kind in run_study(study, suite_dir / key, shard, recompute)
        ]
    if distributed.is_main_process():
        path = write_suite_summary(suite_dir, [k for k, _ in studies])
        html = write_suite_html(suite_dir, [k for k, _ in studies])
        console.print(f"Suite done in {time.time() - started:.0f} s. Results: {path}")
        console.print(f"Open the report: {html.resolve().as_uri()}", highlight=False, soft_wrap=True)
    return failures


def run_study(
    study: StudyConfig, study_dir: Path, shard: str | None, recompute: bool = False
) -> list[Failure]:
    """Run one study; returns the arms of this process that failed or diverged (study/divergence.py)."""
    started, arms = time.time(), expand_arms(study)
    check_study(study, arms)
    main = distributed.is_main_process()
    with distributed.main_process_first():  # under a launcher: pretrain, prepare and check once
        store, base_path, data = open_study(study, study_dir, arms, recompute)
        mine = shard_arms(arms, parse_shard(shard))
        base_in_pool = main and uses_pool(study, mine)  # a worker evaluates the base while the others train
        if main:
            announce(
                study,
                study_dir,
                len(arms),
                trained_tokens(data["train"], study.steps, study.batch_size, study.seq_len),
            )
            if not base_in_pool:
                run_base(study, study_dir, base_path)
    resumed = {
        a.name: study.steps if (store.arm(a.name) or {}).get("status") in FINISHED else max(store.finished_steps(a.name), default=0)
        for a in mine
    }  # fmt: skip
    refresh = (lambda: write_study_html(study_dir, store, study)) if main else None
    with StudyDisplay(study, [a.name for a in mine], resumed, refresh) as display:
        results = run_arms(study, study_dir, base_path, mine, display, base_in_pool)
    if not main:
        return []
    store.refresh_snapshot()
    failures = failed_arms(store, results)
    html = write_report(study_dir, store, study, out_console)
    lines = stage_summary(store)
    if lines:
        console.print("Time per stage, summed over arms and worker processes:", highlight=False)
        for line in lines:
            console.print(f"  {line}", highlight=False)
    console.print(f"Done in {time.time() - started:.0f} s. Results: {study_dir}/summary.md")
    console.print(f"Open the report: {html.resolve().as_uri()}", highlight=False, soft_wrap=True)
    return failures


def check_study(study: StudyConfig, arms: list[Arm]) -> None:
    """Everything that can be refused before any work, each as one line."""
    check_base_model(study.base_model)
    model_config = base_config(study)  # the base's config, read without loading weights
    check_targets(model_config, arms)  # LoRA targets and dropout keys exist in this architecture
    check_arms_fit(arms, model_config.to_dict())
    check_harness_tasks(study)
    check_trackers(study.log_with)
    study.check_last_batch(distributed.world_size())


def open_study(
    study: StudyConfig, study_dir: Path, arms: list[Arm], recompute: bool
) -> tuple[Store, str, dict]:
    """The study directory's store (the same study, no lost results unless `recompute`), the base model's
    path, the arms registered, and the data every arm shares."""
    store = Store(study_dir)
    lost = store.lost_results()
    if lost and not recompute:  # else the lost arms are trained again, their model files overwritten
        raise UserError(lost)
    check_same_study(store, study, arms)
    base_path = base_with_progress(study)
    store.set_info("base_path", base_path)
    store.set_info("processes", int(os.environ.get("WORLD_SIZE", "1")))
    if distributed.is_main_process():
        store.set_info("environment", environment())
    store.register_arms([(arm.name, arm.model_dump(), arm.id) for arm in arms])
    return store, base_path, prepare_data(study, study_dir, base_path)


def announce(study: StudyConfig, study_dir: Path, arms: int, tokens: int) -> None:
    console.print(
        f"Study [bold]{study.name}[/]: {study_header(study, arms, tokens)} → {study_dir}",
        highlight=False,
        soft_wrap=True,
    )
    warning = cpu_bf16_warning(study.precision)
    if warning:
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)


def failed_arms(store: Store, results: list[dict]) -> list[Failure]:
    """(arm, reason, kind) of the arms that failed or diverged, by this process or another."""
    failures = []
    for result in results:
        stored = store.arm(result["arm"]) or {}
        if result.get("failed") or result.get("by_other") == "failed":
            failures.append(
                (result["arm"], result.get("failed") or stored.get("error") or "failed", "failed")
            )
        elif result.get("diverged") or stored.get("status") == "diverged":  # also one a rerun skipped
            failures.append((result["arm"], stored.get("error") or result.get("diverged"), "diverged"))
    return failures


def base_with_progress(study) -> str:
    """The study's base model path, pretraining the built-in base first (with a bar) when it is not cached."""
    check_base_model(study.base_model)
    if (
        study.base_model != "builtin"
        or shipped_base(study.base) is not None
        or (builtin_base_path(study.base) / "config.json").exists()
    ):
        return resolve_base(study.base_model, study.base)
    console.print(
        "This base recipe differs from the shipped base's: pretraining it "
        f"(cached afterwards in {builtin_base_path(study.base)})"
    )
    with progress_bars() as progress:
        return resolve_base(study.base_model, study.base, pretrain_progress(progress, study.base.steps))
