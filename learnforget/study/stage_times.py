"""Where a study's time goes: seconds per arm and stage (training, each evaluation suite, spectra,
checkpointing, saving) from the store's `stage_times`, as a table and as per-stage totals."""

from __future__ import annotations

from learnforget.study.store import Store

ORDER = ("train", "eval/", "spectra", "checkpoint", "save")  # display order, by stage name prefix


def _rank(stage: str) -> tuple[int, str]:
    return next((i for i, prefix in enumerate(ORDER) if stage.startswith(prefix)), len(ORDER)), stage


def stage_table(store: Store) -> tuple[list[str], list[list]]:
    """(header, rows): one row per arm with timings; seconds per stage, 'other' (loading, writing the
    store: the wall time no stage accounts for) and the arm's wall time."""
    totals = store.stage_totals()
    stages = sorted({s for per_arm in totals.values() for s in per_arm}, key=_rank)
    walls = {a["name"]: a.get("wall_seconds") for a in store.arms()}
    rows = []
    for arm, per_arm in totals.items():
        wall = walls.get(arm)
        other = max(0.0, wall - sum(per_arm.values())) if wall is not None else None
        rows.append([arm, *(per_arm.get(s) for s in stages), other, wall])
    return ["arm", *stages, "other", "wall"], rows


def stage_summary(store: Store) -> list[str]:
    """One line per stage: seconds summed over every arm (and the base), and its share of the sum."""
    header, rows = stage_table(store)
    if not rows:
        return []
    totals = {name: sum(r[i] or 0.0 for r in rows) for i, name in enumerate(header[1:-1], start=1)}
    everything = sum(totals.values()) or 1.0
    width = max(len(name) for name in totals)
    return [
        f"{name:<{width}}  {seconds:8.1f} s  {100 * seconds / everything:5.1f}%"
        for name, seconds in totals.items()
    ]
