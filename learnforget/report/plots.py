"""The static plots of a study (PNG, for papers and summary.md), readable at 150 arms.

Seeds are aggregated: one line per configuration (an arm without its seed) through the seed means, the
seed spread (half-range) as error bars. Colour = family, shade = rank or learning rate (plotting.colors),
legends outside the axes, and one panel per family (small multiples) when one axes would hold too many
lines, with every other configuration drawn in light grey behind for reference.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from learnforget.report.style import colors, family, legend_outside, new_axes, save

PLOT_NAME = "learning_forgetting.png"
SPECTRUM_PLOT_NAME = "spectrum_over_training.png"
TRAINING_PLOT_NAME = "training_curves.png"
MAX_LINES_PER_AXES = 12
GREY = "#d0d0d0"


def study_points(store, study) -> tuple[list[dict], list[dict], tuple, tuple]:
    """(per-arm points, seed-averaged points, learning axis, forgetting axis) of a study's store."""
    from learnforget.analyse.frontier import points, seed_average
    from learnforget.config.metrics import forgetting_metric, learning_metric

    learn, forget = learning_metric(study), forgetting_metric(study)
    pts = points(store.metric_rows(), learn, forget)
    return pts, seed_average(pts), learn, forget


def by_configuration(avg: list[dict]) -> dict[str, list[dict]]:
    """configuration -> its seed-averaged points in milestone order (the base left out)."""
    lines: dict[str, list[dict]] = defaultdict(list)
    for p in sorted(avg, key=lambda p: p["milestone"]):
        if p["method"] != "base":
            lines[p["configuration"]].append(p)
    return dict(lines)


def _panels(lines: dict[str, list[dict]]) -> list[tuple[str, list[str]]]:
    """[(title, configurations)]: one panel for all, or one per family when that would be too many."""
    if len(lines) <= MAX_LINES_PER_AXES:
        return [("", list(lines))]
    families: dict[str, list[str]] = defaultdict(list)
    for configuration, pts in lines.items():
        families[family(pts[0])].append(configuration)
    return sorted(families.items(), key=lambda item: (not item[0].startswith("full"), item[0]))


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
    import matplotlib.pyplot as plt

    if len(axes) == 1:
        return save(fig, axes[0], title, path)
    for ax in axes:
        ax.grid(alpha=0.3)
        legend_outside(ax, fontsize=6)
    fig.suptitle(title)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_learning_forgetting(study_dir: Path, store, study) -> Path:
    """x = forgetting metric, y = learning metric; a line per configuration from the base through its
    milestones (seed means, seed spread as error bars); up = learns more, right = forgets more."""
    _, avg, (learn, learn_up), (forget, forget_up) = study_points(store, study)
    base = next((p for p in avg if p["method"] == "base"), None)
    lines = by_configuration(avg)
    palette = colors([pts[0] for pts in lines.values()])
    panels = _panels(lines)
    fig, axes = _grid(len(panels))
    for ax, (title, members) in zip(axes, panels, strict=True):
        if len(panels) > 1:  # the other families, for reference
            for configuration, line in lines.items():
                pts = ([base] if base else []) + line
                if configuration not in members:
                    ax.plot(
                        [p["forgetting"] for p in pts],
                        [p["learning"] for p in pts],
                        color=GREY,
                        lw=0.8,
                        zorder=1,
                    )
        for configuration in members:
            pts = ([base] if base else []) + lines[configuration]
            seeds = lines[configuration][0]["seeds"]
            ax.errorbar(
                [p["forgetting"] for p in pts], [p["learning"] for p in pts],
                xerr=[p["forgetting_spread"] or 0 for p in pts], yerr=[p["learning_spread"] or 0 for p in pts],
                color=palette[configuration], marker="o", markersize=3, lw=1.3, capsize=2, elinewidth=0.8,
                linestyle="-" if pts[-1]["method"] == "full" else "--", zorder=3,
                label=configuration + (f" ({seeds} seeds)" if seeds > 1 else ""),
            )  # fmt: skip
        if base:
            ax.plot([base["forgetting"]], [base["learning"]], "k*", markersize=12, label="base", zorder=5)
        if title:
            ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{forget}  (→ more forgetting)")
        ax.set_ylabel(f"{learn}  (↑ more learning)")
    # Axes are shared: orient once so that up = learns more and right = forgets more.
    if not learn_up:
        axes[0].invert_yaxis()
    if forget_up:
        axes[0].invert_xaxis()
    title = f"{study.name}: learning vs forgetting along training (seed means ± half-range)"
    return _finish(fig, axes, title, Path(study_dir) / PLOT_NAME)


def configuration_settings(arms: list[dict]) -> dict[str, dict]:
    """configuration -> its arms' settings (any seed's), with 'configuration' set, for colours and families."""
    from learnforget.analyse.frontier import configuration_name

    return {
        configuration_name(a["name"]): {**a, "configuration": configuration_name(a["name"])} for a in arms
    }


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
    LoRA), one panel per family at scale; `level`: a horizontal reference line (value, label)."""
    settings = configuration_settings(arms)
    panels = _panels({c: [settings[c]] for c in values})
    palette = colors([settings[c] for c in values])
    fig, axes = _grid(len(panels), 5.5, 3.6)
    for ax, (panel, members) in zip(axes, panels, strict=True):
        for configuration in members:
            xs = sorted(values[configuration])
            ax.plot(
                xs, [sum(values[configuration][x]) / len(values[configuration][x]) for x in xs],
                "-" if settings[configuration]["method"] == "full" else "--", lw=1.1,
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
    from learnforget.analyse.frontier import configuration_name

    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    random_level = None
    for row in rows:
        if row["metric"] == "spectrum/rank_delta_fraction" and row["method"] != "base":
            values[configuration_name(row["arm"])][row["milestone"]].append(row["value"])
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
    from learnforget.analyse.frontier import configuration_name

    losses: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in store.steps():
        losses[configuration_name(row["arm"])][row["step"]].append(row["loss"])
    if not losses:
        return None
    return seed_mean_lines(
        losses, store.arms(), Path(study_dir) / TRAINING_PLOT_NAME, "Training loss (seed means)",
        "optimizer step", "training loss (nats/token)",
    )  # fmt: skip
