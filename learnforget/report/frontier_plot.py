"""The learning–forgetting frontier as a PNG (the numbers: `analyse.frontier`)."""

from __future__ import annotations

import math
from pathlib import Path

from learnforget.analyse.points import Axis, is_base, is_full
from learnforget.report.style import colors, family, new_axes, save

MAX_LABELS = 10  # direct labels on the frontier plot


def frontier_plot(
    pts: list[dict], frontier: list[dict], learning: Axis, forgetting: Axis, path: str | Path
) -> Path:
    """PNG: every point coloured by family (shade = rank or learning rate), the frontier as a line with
    direct labels (at most MAX_LABELS, evenly spread along it, so they stay legible), the base as a star.

    Axes are oriented so that up = learns more and right = forgets more, whatever the metrics' directions.
    """
    from matplotlib.lines import Line2D  # matplotlib is heavy: loaded only when a plot is drawn

    fig, ax = new_axes((7.5, 5.5))
    arms = [p for p in pts if not is_base(p)]
    palette = colors(arms)
    handles = []
    groups: dict[str, list[dict]] = {}
    for p in arms:
        groups.setdefault(family(p), []).append(p)
    for name, group in sorted(groups.items(), key=lambda g: (not is_full(g[1][0]), g[0])):  # full first
        shades = [palette[p["configuration"]] for p in group]
        ax.scatter(
            [p["forgetting"] for p in group], [p["learning"] for p in group], s=16, alpha=0.75, color=shades
        )
        darkest = min(shades, key=lambda c: sum(int(c[i : i + 2], 16) for i in (1, 3, 5)))
        handles.append(Line2D([], [], marker="o", linestyle="", color=darkest, label=name))
    if frontier:
        (line,) = ax.plot(
            [p["forgetting"] for p in frontier], [p["learning"] for p in frontier], "k-", lw=1.2
        )
        handles.append(line)
        line.set_label("Pareto frontier")
        labelled = [p for p in frontier if not is_base(p)]
        every = max(1, math.ceil(len(labelled) / MAX_LABELS))
        for p in labelled[::every]:
            ax.annotate(
                f"{p['arm']}@{p['milestone']:,}", (p["forgetting"], p["learning"]), fontsize=6, alpha=0.85,
                xytext=(4, -8), textcoords="offset points",
            )  # fmt: skip
    base = [p for p in pts if is_base(p)]
    if base:
        (star,) = ax.plot([base[0]["forgetting"]], [base[0]["learning"]], "k*", markersize=14, zorder=5)
        star.set_label("base")
        handles.append(star)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel(f"{forgetting[0]}  (right = forgets more)")
    ax.set_ylabel(f"{learning[0]}  (up = learns more)")
    if not learning[1]:
        ax.invert_yaxis()
    if forgetting[1]:
        ax.invert_xaxis()
    return save(fig, ax, "Learning–forgetting trade-off", path, legend=False)
