"""Where a real study's time and memory go: the shares of training, evaluation and ΔW spectra in a finished
study, and each arm's recorded peak memory against the dry-run's estimate.

    python -m bench --only split                     # reads runs/smol (`learnforget run smol`)
    LEARNFORGET_BENCH_STUDY=DIR python -m bench --only split

Not a timing of its own: a study records the seconds of every stage of every arm as it runs (the
store's `stage_times`), and this reads them back, summed over the arms and worker processes of every
setting of the study (a suite such as `smol` has one sub-study per setting). The targets for a real
model on the CPU (issue "A real pretrained model on a laptop"): spectra ≤ 10% and evaluation ≤ 30% of
the study's time, and a memory estimate within 30% of each arm's measured peak (the worker's peak resident
memory, which the study records per arm). Skipped, saying why, when no finished study is there (the SmolLM2 study takes about an
hour; the benchmark does not run it).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_STUDY = Path("runs/smol")
TARGETS = {"spectra": 0.10, "evaluation": 0.30}


def study_dirs(root: Path) -> list[Path]:
    """The study directories under `root`: itself, or each setting of a suite."""
    if (root / "results.db").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/results.db"))


def stage_shares(root: Path) -> dict[str, float] | None:
    """Seconds per stage family (training, evaluation, spectra, other) summed over the study's arms, and
    'total'; None when `root` holds no study with recorded stage times."""
    from learnforget.study.stage_times import stage_table
    from learnforget.study.store import Store

    seconds = {"training": 0.0, "evaluation": 0.0, "spectra": 0.0, "other": 0.0}
    found = False
    for directory in study_dirs(root):
        header, rows = stage_table(Store(directory))
        for row in rows:
            found = True
            for name, value in zip(header[1:-1], row[1:-1], strict=True):
                family = (
                    "training" if name == "train"
                    else "evaluation" if name.startswith("eval/")
                    else "spectra" if name == "spectra"
                    else "other"
                )  # fmt: skip
                seconds[family] += value or 0.0
    if not found:
        return None
    seconds["total"] = sum(seconds.values())
    return seconds


def report(root: Path | None = None) -> str:
    """A Markdown table of the study's time split against the targets, or a line saying why there is none."""
    root = Path(root or os.environ.get("LEARNFORGET_BENCH_STUDY") or DEFAULT_STUDY)
    seconds = stage_shares(root)
    if seconds is None:
        return f"study time split: skipped, no finished study in {root} (run `learnforget run smol` first)"
    total = seconds["total"] or 1.0
    lines = [
        f"Study time split of {root} (seconds summed over arms and worker processes):",
        "",
        "| stage | seconds | share | target |",
        "|---|---|---|---|",
    ]
    for name in ("training", "evaluation", "spectra", "other"):
        target = TARGETS.get(name)
        verdict = (
            ""
            if target is None
            else f"≤ {target:.0%} ({'met' if seconds[name] <= target * total else 'missed'})"
        )
        lines.append(f"| {name} | {seconds[name]:,.0f} | {seconds[name] / total:.1%} | {verdict} |")
    return "\n".join(lines)


def memory_rows(root: Path) -> list[tuple[str, str, float, float]]:
    """(setting, arm, estimated MiB, recorded peak MiB) for every finished arm of the study under `root`,
    the estimate as `learnforget run --dry-run` prints it for the device the study ran on (the CPU here)."""
    from learnforget.config.arms import expand_arms
    from learnforget.config.study import StudyConfig
    from learnforget.study.dryrun import arm_memory, arm_size, base_config
    from learnforget.study.store import Store

    rows = []
    for directory in study_dirs(root):
        store = Store(directory)
        study = StudyConfig.model_validate(store.info("config"))
        config = base_config(study)
        arms = {arm.name: arm for arm in expand_arms(study)}
        for record in store.arms():
            arm, peak = arms.get(record["name"]), record.get("peak_memory_mb")
            if arm is None or not peak or record.get("status") != "done":
                continue
            estimate = arm_memory(config, study, arm, *arm_size(config, arm), device="cpu").total
            rows.append((directory.name, arm.name, estimate / 2**20, float(peak)))
    return rows


def memory_report(root: Path | None = None) -> str:
    """A Markdown table of estimate vs recorded peak per arm, or a line saying why there is none."""
    root = Path(root or os.environ.get("LEARNFORGET_BENCH_STUDY") or DEFAULT_STUDY)
    rows = memory_rows(root) if study_dirs(root) else []
    if not rows:
        return f"memory estimate vs peak: skipped, no finished study in {root}"
    lines = [
        f"Memory of {root}: the dry-run's estimate against each arm's recorded peak (target: within 30%):",
        "",
        "| setting | arm | estimate MiB | peak MiB | estimate / peak |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {a} | {e:,.0f} | {p:,.0f} | {e / p:.2f} |" for s, a, e, p in rows]
    return "\n".join(lines)
