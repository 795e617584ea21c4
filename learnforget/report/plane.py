"""The learning–forgetting plane, described once and drawn by both renderers.

`describe_plane` makes every choice the figure shows: which points (the seed means of each configuration
along its milestones), the base star every line starts from, one series per configuration (colour by
family and shade, solid for full finetuning, dashed for methods that adapt a frozen base), its legend
label and hover text, the optional Pareto frontier, and the axes' titles and directions (up = learns
more, right = forgets more). `report/plots.py` (matplotlib, the PNG) and `report/figures.py` (plotly,
report.html) draw a `Plane` as it is and decide nothing about it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from learnforget.analyse.points import Axis, is_base, points, seed_average
from learnforget.config.methods import method_of
from learnforget.config.metrics import forgetting_metric, learning_metric
from learnforget.report.style import colors, family, family_order, line_dashed

BASE_LABEL = "base"
FRONTIER_LABEL = "Pareto frontier"
MARK_COLOR = "black"  # the base star and the frontier


@dataclass(frozen=True)
class PlaneAxis:
    """One axis: its metric, its title, and whether it is drawn reversed so that up = learns more and
    right = forgets more (a loss learns downwards, an accuracy upwards)."""

    metric: str
    title: str
    reversed: bool


@dataclass(frozen=True)
class PlanePoint:
    """A point of the plane: x = forgetting, y = learning, their seed spreads (half-range, 0 when unknown),
    and the hover text as lines of plain text (the first one names the point)."""

    x: float
    y: float
    spread: tuple[float, float]  # (x, y)
    hover: tuple[str, ...]


@dataclass(frozen=True)
class Series:
    """One configuration's line, from the base through its milestones.

    `name`: the configuration (what an interactive legend shows, the hover telling the seeds);
    `label`: the static legend's text (the name and, with more than one seed, their count);
    `family`: the legend group (full, LoRA all, ...); `dashed`: adapters' lines, full finetuning's solid.
    """

    name: str
    label: str
    family: str
    color: str
    dashed: bool
    points: tuple[PlanePoint, ...]


@dataclass(frozen=True)
class Plane:
    """The whole figure: series in drawing order (families together, full finetuning's first)."""

    title: str
    x: PlaneAxis
    y: PlaneAxis
    series: tuple[Series, ...]
    base: PlanePoint | None
    frontier: tuple[PlanePoint, ...] = ()
    base_label: str = BASE_LABEL
    frontier_label: str = FRONTIER_LABEL
    mark_color: str = MARK_COLOR

    def families(self) -> dict[str, list[Series]]:
        """family -> its series, in drawing order (for one panel per family)."""
        groups: dict[str, list[Series]] = defaultdict(list)
        for series in self.series:
            groups[series.family].append(series)
        return dict(groups)


# ---------------------------------------------------------------------------------------------------
# The study's points


def study_points(store, study) -> tuple[list[dict], list[dict], Axis, Axis]:
    """(per-arm points, seed-averaged points, learning axis, forgetting axis) of a study's store, the axes'
    directions as lm-eval declared them where the store recorded them (as `report.study_data` reads them
    for the frontier and the claims)."""
    declared = store.info("metric_directions")
    learn, forget = learning_metric(study, declared), forgetting_metric(study, declared)
    pts = points(store.metric_rows(), learn, forget)
    return pts, seed_average(pts), learn, forget


def by_configuration(avg: list[dict]) -> dict[str, list[dict]]:
    """configuration -> its seed-averaged points in milestone order (the base left out), in the order
    the study's configurations first appear."""
    lines: dict[str, list[dict]] = defaultdict(list)
    for p in sorted(avg, key=lambda p: p["milestone"]):
        if not is_base(p):
            lines[p["configuration"]].append(p)
    return dict(lines)


# ---------------------------------------------------------------------------------------------------
# The description


def settings_text(p: dict) -> str:
    """An arm's settings in words: 'rank 8, α 16, targets all, lr 0.002, embeddings frozen'."""
    kind = method_of(p)
    parts = [f"lr {p['learning_rate']:g}"]
    if kind.adapts_frozen_base:
        parts = [f"rank {p['rank']}", f"α {p['alpha']:g}" if p.get("alpha") else "", f"targets {p['target_modules']}",
                 *parts]  # fmt: skip
    parts += [f"weight decay {p['weight_decay']:g}" if p.get("weight_decay") else "",
              f"dropout {p['dropout']:g}" if p.get("dropout") else "",
              "embeddings trained" if p.get("train_embeddings") else "embeddings frozen"]  # fmt: skip
    return ", ".join(x for x in parts if x)


def _hover(p: dict, base: dict | None, learn: Axis, forget: Axis) -> tuple[str, ...]:
    """What hovering a point says: its configuration, family, settings and seeds, tokens, and both
    axes' values with their seed spread and change vs the base."""
    lines = [p["configuration"], family(p)]
    if not is_base(p):
        lines += [settings_text(p), f"seeds: {', '.join(p['arms'])}"]
    lines.append(f"tokens: {p['milestone']:,}")
    for axis, key in ((learn, "learning"), (forget, "forgetting")):
        spread = p.get(f"{key}_spread")
        delta = "" if base is None else f" (Δ {p[key] - base[key]:+.4f} vs base)"
        lines.append(f"{axis[0]}: {p[key]:.4f}" + (f" ± {spread:.4f}" if spread else "") + delta)
    return tuple(lines)


def _point(p: dict, base: dict | None, learn: Axis, forget: Axis) -> PlanePoint:
    return PlanePoint(
        x=p["forgetting"],
        y=p["learning"],
        spread=(p.get("forgetting_spread") or 0, p.get("learning_spread") or 0),
        hover=_hover(p, base, learn, forget),
    )


def describe_plane(
    avg: list[dict], learn: Axis, forget: Axis, title: str, frontier: list[dict] | None = None
) -> Plane:
    """The plane of seed-averaged points `avg`: a series per configuration from the base through its
    milestones, the base, and the Pareto frontier when given (its points in drawing order)."""
    base = next((p for p in avg if is_base(p)), None)
    lines = by_configuration(avg)
    palette = colors([pts[0] for pts in lines.values()])
    start = [_point(base, base, learn, forget)] if base else []
    # Families together, full finetuning's first; a stable sort keeps the study's order within a family.
    order = sorted(lines, key=lambda c: family_order(lines[c][0]))
    series = []
    for configuration in order:
        first, seeds = lines[configuration][0], lines[configuration][0]["seeds"]
        series.append(Series(
            name=configuration, label=configuration + (f" ({seeds} seeds)" if seeds > 1 else ""),
            family=family(first), color=palette[configuration], dashed=line_dashed(lines[configuration][-1]),
            points=tuple(start + [_point(p, base, learn, forget) for p in lines[configuration]]),
        ))  # fmt: skip
    return Plane(
        title=title,
        x=PlaneAxis(forget[0], f"{forget[0]}  (→ more forgetting)", reversed=forget[1]),
        y=PlaneAxis(learn[0], f"{learn[0]}  (↑ more learning)", reversed=not learn[1]),
        series=tuple(series),
        base=start[0] if start else None,
        frontier=tuple(_point(p, base, learn, forget) for p in frontier or []),
    )
