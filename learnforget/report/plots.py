"""The static plots of a study (PNG, for papers and summary.md), readable at 150 arms.

Seeds are aggregated: one line per configuration (an arm without its seed) through the seed means, the
seed spread (half-range) as error bars. Colour = family, shade = rank or learning rate (style.colors),
legends outside the axes, and one panel per family (small multiples) when one axes would hold too many
lines, with every other configuration drawn in light grey behind for reference.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from learnforget.analyse.points import arm_labels, is_base
from learnforget.report.plane import Plane, Series, describe_plane, study_points
from learnforget.report.style import (
    arm_configurations,
    colors,
    configuration_settings,
    family,
    family_order,
    legend_outside,
    line_dashed,
    new_axes,
    save,
)

PLOT_NAME = "learning_forgetting.png"
SPECTRUM_PLOT_NAME = "spectrum_over_training.png"
TRAINING_PLOT_NAME = "training_curves.png"
MAX_LINES_PER_AXES = 12
GREY = "#d0d0d0"


def _panels(order: list[str], family_of: dict[str, str]) -> list[tuple[str, list[str]]]:
    """[(title, lines)]: one panel for all the lines in `order`, or one per family (in order of first
    appearance) when one axes would hold too many."""
    if len(order) <= MAX_LINES_PER_AXES:
        return [("", list(order))]
    groups: dict[str, list[str]] = defaultdict(list)
    for name in order:
        groups[family_of[name]].append(name)
    return list(groups.items())


def _grid(count: int, width: float = 6.0, height: float = 4.2):
    cols = 1 if count == 1 else 2
    rows = math.ceil(count / cols)
    # Constrained layout leaves room for each panel's legend outside it.
    fig, axes = new_axes(
        (width * cols + 2.5 * cols, height * rows), rows, cols, sharex=True, sharey=True, layout="constrained"
    )
    axes = [axes] if count == 1 else list(axes.flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return fig, axes[:count]


def _finish(fig, axes, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt  # heavy: only a report that draws PNGs needs it

    if len(axes) == 1:
        return save(fig, axes[0], title, path)
    for ax in axes:
        ax.grid(alpha=0.3)
        legend_outside(ax, fontsize=6)
    fig.suptitle(title)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------
# The learning–forgetting plane


def _draw_series(ax, series: Series) -> None:
    pts = series.points
    ax.errorbar(
        [p.x for p in pts], [p.y for p in pts], xerr=[p.spread[0] for p in pts], yerr=[p.spread[1] for p in pts],
        color=series.color, marker="o", markersize=3, lw=1.3, capsize=2, elinewidth=0.8,
        linestyle="--" if series.dashed else "-", zorder=3, label=series.label,
    )  # fmt: skip


def _draw_panel(ax, plane: Plane, title: str, members: list[Series], others: list[Series]) -> None:
    """One panel: `members` drawn, `others` in light grey behind them for reference."""
    for series in others:
        ax.plot([p.x for p in series.points], [p.y for p in series.points], color=GREY, lw=0.8, zorder=1)
    for series in members:
        _draw_series(ax, series)
    if plane.frontier:
        ax.plot([p.x for p in plane.frontier], [p.y for p in plane.frontier], color=plane.mark_color, lw=1,
                linestyle=":", label=plane.frontier_label, zorder=4)  # fmt: skip
    if plane.base:
        ax.plot([plane.base.x], [plane.base.y], "*", color=plane.mark_color, markersize=12,
                label=plane.base_label, zorder=5)  # fmt: skip
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel(plane.x.title)
    ax.set_ylabel(plane.y.title)


def draw_plane(plane: Plane, path: Path) -> Path:
    """The plane as a PNG: one axes, or one panel per family (the others in grey) at scale."""
    panels = _panels([s.name for s in plane.series], {s.name: s.family for s in plane.series})
    fig, axes = _grid(len(panels))
    for ax, (title, names) in zip(axes, panels, strict=True):
        members = [s for s in plane.series if s.name in names]
        others = [s for s in plane.series if s.name not in names]
        _draw_panel(ax, plane, title, members, others)
    # Axes are shared: orient once.
    if plane.y.reversed:
        axes[0].invert_yaxis()
    if plane.x.reversed:
        axes[0].invert_xaxis()
    return _finish(fig, axes, plane.title, path)


def plot_learning_forgetting(study_dir: Path, store, study) -> Path:
    """x = forgetting metric, y = learning metric; a line per configuration from the base through its
    milestones (seed means, seed spread as error bars); up = learns more, right = forgets more."""
    _, avg, learn, forget = study_points(store, study)
    title = f"{study.name}: learning vs forgetting along training (seed means ± half-range)"
    return draw_plane(describe_plane(avg, learn, forget, title), Path(study_dir) / PLOT_NAME)


# ---------------------------------------------------------------------------------------------------
# Lines of seed means per configuration


def seed_mean_lines(
    values: dict[str, dict[int, list[float]]],
    arms: list[dict],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
    log: bool = False,
    level: tuple[float, str] | None = None,
) -> Path:
    """configuration -> x -> values over seeds, drawn as a line of seed means per configuration (dashed for
    adapters), one panel per family at scale; `level`: a horizontal reference line (value, label)."""
    settings = configuration_settings(arms)
    order = sorted(values, key=lambda c: family_order(settings[c]))
    panels = _panels(order, {c: family(settings[c]) for c in values})
    palette = colors([settings[c] for c in values])
    fig, axes = _grid(len(panels), 5.5, 3.6)
    for ax, (panel, members) in zip(axes, panels, strict=True):
        for configuration in members:
            xs = sorted(values[configuration])
            ax.plot(
                xs, [sum(values[configuration][x]) / len(values[configuration][x]) for x in xs],
                "--" if line_dashed(settings[configuration]) else "-", lw=1.1,
                marker="o" if len(xs) <= 10 else None, markersize=3, color=palette[configuration], label=configuration,
            )  # fmt: skip
        if level is not None:
            ax.axhline(level[0], color="grey", linestyle=":", label=level[1])
        if panel:
            ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
    return _finish(fig, axes, title, path)


def spectrum_values(rows: list[dict]) -> tuple[dict[str, dict[int, list[float]]], float | None]:
    """(configuration -> tokens -> ΔW rank fractions over seeds, a random matrix's fraction) from metric rows."""
    configurations = {arm: labels[0] for arm, labels in arm_labels(rows).items()}
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    random_level = None
    for row in rows:
        if row["metric"] == "spectrum/rank_delta_fraction" and not is_base(row):
            values[configurations[row["arm"]]][row["milestone"]].append(row["value"])
        elif row["metric"] == "spectrum/rank_random_fraction":
            random_level = row["value"]
    return values, random_level


def plot_spectrum_over_training(study_dir: Path, store) -> Path | None:
    """Median rank for 90% of ΔW's variance (fraction of min(m, n)) per configuration along training
    (seed means), vs a random matrix."""
    values, random_level = spectrum_values(store.metric_rows())
    if not values:
        return None
    return seed_mean_lines(
        values, store.arms(), Path(study_dir) / SPECTRUM_PLOT_NAME, "ΔW spectrum along training (seed means)",
        "training tokens", "rank for 90% of ΔW variance / min(m, n)\n(median over linear layers)", log=True,
        level=None if random_level is None else (random_level, "Gaussian random matrix"),
    )  # fmt: skip


def plot_training_curves(study_dir: Path, store) -> Path | None:
    """Training loss per step, one line per configuration (seed mean), one panel per family at scale."""
    arms = store.arms()
    configurations = arm_configurations(arms)
    losses: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in store.steps():
        losses[configurations[row["arm"]]][row["step"]].append(row["loss"])
    if not losses:
        return None
    return seed_mean_lines(
        losses, arms, Path(study_dir) / TRAINING_PLOT_NAME, "Training loss (seed means)",
        "optimizer step", "training loss (nats/token)",
    )  # fmt: skip
