"""report.html's figures, drawn with plotly: hover names the arm, its settings and numbers; zoom; click a
legend entry to hide it. The learning–forgetting plane is drawn from its description (`report.plane`),
as the static PNG is."""

from __future__ import annotations

import re
from collections import defaultdict

from learnforget.report.page import esc
from learnforget.report.plane import Plane, PlanePoint
from learnforget.report.plots import spectrum_values
from learnforget.report.style import arm_configurations, colors, configuration_settings, family

# Steps of an arm the store does not list (none in a sound store): drawn grey, under the family '?'.
UNKNOWN_ARM = {"method": "?", "rank": None, "alpha": None}


def _hover(point: PlanePoint) -> str:
    """A point's hover lines as HTML: the first one bold."""
    return "<br>".join([f"<b>{esc(point.hover[0])}</b>", *(esc(line) for line in point.hover[1:])])


def plane_figure(plane: Plane):
    """The learning–forgetting plane (`report.plane`): a line per configuration, the Pareto frontier
    when described, the base; hover names the configuration, its seeds, settings and numbers."""
    import plotly.graph_objects as go  # heavy (about 1 s): only a report page needs plotly

    fig = go.Figure()
    for s in plane.series:
        fig.add_trace(
            go.Scatter(
                x=[p.x for p in s.points], y=[p.y for p in s.points], mode="lines+markers", name=s.name,
                legendgroup=s.family, legendgrouptitle_text=s.family,
                line={"color": s.color, "dash": "dash" if s.dashed else "solid", "width": 1.6},
                marker={"size": 7}, text=[_hover(p) for p in s.points], hovertemplate="%{text}<extra></extra>",
                error_x={"type": "data", "array": [p.spread[0] for p in s.points], "thickness": 1, "width": 2},
                error_y={"type": "data", "array": [p.spread[1] for p in s.points], "thickness": 1, "width": 2},
            )
        )  # fmt: skip
    if plane.frontier:
        fig.add_trace(
            go.Scatter(
                x=[p.x for p in plane.frontier], y=[p.y for p in plane.frontier], mode="lines",
                name=plane.frontier_label, line={"color": plane.mark_color, "width": 1, "dash": "dot"},
                hoverinfo="skip",
            )
        )  # fmt: skip
    if plane.base:
        fig.add_trace(
            go.Scatter(
                x=[plane.base.x], y=[plane.base.y], mode="markers", name=plane.base_label,
                marker={"symbol": "star", "size": 16, "color": plane.mark_color}, text=[_hover(plane.base)],
                hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=plane.title, height=620, template="plotly_white", hovermode="closest", legend={"groupclick": "toggleitem"},
        xaxis={"title": plane.x.title, "autorange": "reversed" if plane.x.reversed else True},
        yaxis={"title": plane.y.title, "autorange": "reversed" if plane.y.reversed else True},
    )  # fmt: skip
    return fig


def training_figure(steps: list[dict], arms: list[dict]):
    """Loss, learning rate and gradient norm per optimizer step, one line per arm (hover names it)."""
    import plotly.graph_objects as go  # heavy (about 1 s): only a report page needs plotly
    from plotly.subplots import make_subplots  # with plotly, above

    configurations = arm_configurations(arms)
    settings = {a["name"]: {**a, "configuration": configurations[a["name"]]} for a in arms}
    per_arm: dict[str, list[dict]] = defaultdict(list)
    for row in steps:
        per_arm[row["arm"]].append(row)
    palette = colors([settings[a] for a in per_arm if a in settings])
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=("training loss (nats/token)", "learning rate", "gradient norm (before clipping)"))  # fmt: skip
    for name in sorted(per_arm, key=lambda a: (family(settings.get(a, UNKNOWN_ARM)), a)):
        rows, arm = per_arm[name], settings.get(name, {**UNKNOWN_ARM, "configuration": name})
        color = palette.get(arm["configuration"], "#888")
        for i, key in enumerate(("loss", "learning_rate", "grad_norm"), start=1):
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in rows], y=[r[key] for r in rows], mode="lines", name=name,
                    legendgroup=name, showlegend=i == 1, line={"color": color, "width": 1.2},
                    hovertemplate=f"<b>{esc(name)}</b><br>step %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
                ),
                row=i, col=1,
            )  # fmt: skip
    fig.update_yaxes(type="log", row=3, col=1)
    fig.update_xaxes(title_text="optimizer step", row=3, col=1)
    fig.update_layout(height=820, template="plotly_white", hovermode="closest")
    return fig


def spectrum_figure(rows: list[dict], arms: list[dict]):
    """ΔW's rank for 90% of its variance (fraction of min(m, n), median over layers) along training, per
    configuration (seed means), with a Gaussian random matrix's level."""
    import plotly.graph_objects as go  # heavy (about 1 s): only a report page needs plotly

    values, random_level = spectrum_values(rows)
    if not values:
        return None
    settings = configuration_settings(arms)
    palette = colors([settings[c] for c in values])
    fig = go.Figure()
    for configuration in sorted(values, key=lambda c: (family(settings[c]), c)):
        tokens = sorted(values[configuration])
        means = [sum(values[configuration][t]) / len(values[configuration][t]) for t in tokens]
        fig.add_trace(
            go.Scatter(
                x=tokens, y=means, mode="lines+markers", name=configuration, legendgroup=family(settings[configuration]),
                legendgrouptitle_text=family(settings[configuration]), line={"color": palette[configuration]},
                hovertemplate=f"<b>{esc(configuration)}</b><br>tokens %{{x:,}}<br>rank fraction %{{y:.4f}}<extra></extra>",
            )
        )  # fmt: skip
    if random_level is not None:
        fig.add_hline(
            y=random_level, line_dash="dot", line_color="grey", annotation_text="Gaussian random matrix"
        )
    fig.update_layout(
        height=460, template="plotly_white", yaxis={"type": "log", "title": "rank for 90% of ΔW variance / min(m, n)"},
        xaxis={"title": "training tokens"}, legend={"groupclick": "toggleitem"},
    )  # fmt: skip
    return fig


def matrices_figure(matrices: list[dict]):
    """Per-matrix ΔW rank (90% of variance, / min(m, n)) at each arm's last milestone: a layer × module
    heatmap, one arm at a time (pick it from the menu)."""
    import plotly.graph_objects as go  # heavy (about 1 s): only a report page needs plotly

    final: dict[str, int] = {}
    for m in matrices:
        final[m["arm"]] = max(final.get(m["arm"], 0), m["tokens"])
    cells: dict[str, dict[tuple[int, str], float]] = defaultdict(dict)
    for m in matrices:
        found = re.search(r"layers?\.(\d+)\.(.+?)(?:\.weight)?$", m["name"])
        if m["tokens"] == final[m["arm"]] and found and m["min_dim"]:
            cells[m["arm"]][(int(found[1]), found[2])] = m["rank_delta"] / m["min_dim"]
    if not cells:
        return None
    layers = sorted({layer for c in cells.values() for layer, _ in c})
    modules = list(dict.fromkeys(module for c in cells.values() for _, module in c))
    arms = sorted(cells)
    fig = go.Figure()
    for i, arm in enumerate(arms):
        z = [[cells[arm].get((layer, module)) for module in modules] for layer in layers]
        fig.add_trace(
            go.Heatmap(
                z=z, x=modules, y=[f"layer {layer}" for layer in layers], visible=i == 0, zmin=0, zmax=1,
                colorscale="Viridis", name=arm, colorbar={"title": "rank / min(m, n)"},
                hovertemplate=f"<b>{esc(arm)}</b><br>%{{y}} %{{x}}<br>rank fraction %{{z:.3f}}<extra></extra>",
            )
        )  # fmt: skip
    buttons = [
        {
            "label": arm,
            "method": "update",
            "args": [{"visible": [j == i for j in range(len(arms))]}, {"title": arm}],
        }
        for i, arm in enumerate(arms)
    ]
    fig.update_layout(
        title=arms[0], template="plotly_white", height=max(320, 26 * len(layers) + 160),
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.18, "yanchor": "top"}],
    )  # fmt: skip
    return fig
