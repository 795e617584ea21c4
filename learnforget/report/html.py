"""report.html: one self-contained page per study and per suite, opened from disk with no network.

Plotly draws the figures (hover names the arm, its settings and numbers; zoom; click a legend entry to
hide a family). Its JavaScript library (about 4.8 MB) is embedded once per page instead of loaded from a
CDN, so the file works offline and in archived study directories; a hand-written SVG would be smaller
but would re-implement hover, zoom and legends that plotly keeps working in every browser. Tables are
plain HTML made sortable (click a header) and filterable by a few lines of inline JavaScript.
"""

from __future__ import annotations

import html
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

from learnforget.base.gguf import named_base_description
from learnforget.files import writing
from learnforget.report.style import colors, family

HTML_NAME = "report.html"

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1280px;padding:0 24px 48px;color:#222}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}.banner{background:#fff4d6;border:1px solid #e6c35c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f3f3f3;cursor:pointer;position:sticky;top:0;user-select:none}th:after{content:' \\2195';color:#aaa}
td.t,th.t{text-align:left}table.nowrap1 td:first-child{white-space:nowrap}tr:hover td{background:#f6f9ff}.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.supported{color:#1a7f37;font-weight:600}.contradicted{color:#c62828;font-weight:600}.inconclusive{color:#777}
input.filter{margin:6px 0;padding:3px 6px;width:280px}pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
.scroll{max-height:520px;overflow:auto}footer{margin-top:40px;color:#555;font-size:12px}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var nx = parseFloat(x), ny = parseFloat(y);
        if (x === '' || y === '') return (x === '') - (y === '');
        if (!isNaN(nx) && !isNaN(ny)) return dir * (nx - ny);
        return dir * x.localeCompare(y);
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
document.querySelectorAll('input.filter').forEach(function(input){
  input.addEventListener('input', function(){
    var needle = input.value.toLowerCase(), table = document.getElementById(input.dataset.table);
    Array.from(table.tBodies[0].rows).forEach(function(r){
      r.style.display = r.textContent.toLowerCase().indexOf(needle) >= 0 ? '' : 'none';
    });
  });
});
"""


def environment() -> dict[str, str]:
    """Versions and device of this process, stored with a study when it runs."""
    import torch

    from learnforget.versions import package_versions

    env = {"python": platform.python_version(), "platform": platform.platform(), **package_versions()}
    if torch.cuda.is_available():
        env["device"] = f"cuda: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}"
    else:
        env["device"] = (
            f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    return env


# ---------------------------------------------------------------------------------------------------
# Small HTML helpers


def _esc(value) -> str:
    return html.escape(str(value))


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if value and abs(value) < 0.01 else f"{value:.{digits}f}"
    return _esc(value)


def table(
    table_id: str, header: list[str], rows: list[list], text_cols: int = 1, swatches: list | None = None
) -> str:
    """A sortable, filterable table: cells keep their raw value in data-v for sorting."""
    head = "".join(f'<th class="{"t" if i < text_cols else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cells = []
        for i, value in enumerate(row):
            raw = "" if value is None else value
            shown = _num(value) if i >= text_cols else _esc(value if value is not None else "–")
            if i == 0 and swatches:
                shown = f'<span class="sw" style="background:{swatches[r]}"></span>' + shown
            if isinstance(value, str) and value in ("supported", "contradicted", "inconclusive"):
                shown = f'<span class="{value}">{shown}</span>'
            text = i < text_cols or isinstance(value, str)
            cells.append(f'<td class="{"t" if text else ""}" data-v="{_esc(raw)}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<input class="filter" data-table="{table_id}" placeholder="filter rows…">'
        f'<div class="scroll"><table class="sortable{" nowrap1" if swatches else ""}" id="{table_id}">'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _figure_html(fig, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False})


def page(title: str, body: list[str]) -> str:
    from plotly.offline import get_plotlyjs

    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
        + "\n".join(body)
        + f"<script>{SCRIPT}</script></body></html>"
    )


# ---------------------------------------------------------------------------------------------------
# Figures


def _settings_text(p: dict) -> str:
    if p["method"] == "full":
        parts = [f"lr {p['learning_rate']:g}"]
    else:
        parts = [f"rank {p['rank']}", f"α {p['alpha']:g}" if p.get("alpha") else "", f"targets {p['target_modules']}",
                 f"lr {p['learning_rate']:g}"]  # fmt: skip
    parts += [f"weight decay {p['weight_decay']:g}" if p.get("weight_decay") else "",
              f"dropout {p['dropout']:g}" if p.get("dropout") else "",
              "embeddings trained" if p.get("train_embeddings") else "embeddings frozen"]  # fmt: skip
    return ", ".join(x for x in parts if x)


def plane_figure(avg: list[dict], frontier: list[dict], learn: tuple, forget: tuple, title: str):
    """The learning–forgetting plane: a line per configuration through its milestones (seed means, seed
    spread as error bars), the Pareto frontier, the base; hover names the configuration, its seeds,
    settings and numbers."""
    import plotly.graph_objects as go

    from learnforget.report.plots import by_configuration

    base = next((p for p in avg if p["method"] == "base"), None)
    lines = by_configuration(avg)
    palette = colors([pts[0] for pts in lines.values()])
    fig = go.Figure()

    def hover(p: dict) -> str:
        rows = [f"<b>{_esc(p['configuration'])}</b>", _esc(family(p))]
        if p["method"] != "base":
            rows.append(_esc(_settings_text(p)))
            rows.append(f"seeds: {_esc(', '.join(p['arms']))}")
        rows.append(f"tokens: {p['milestone']:,}")
        for axis, key in ((learn, "learning"), (forget, "forgetting")):
            spread = p.get(f"{key}_spread")
            delta = "" if base is None else f" (Δ {p[key] - base[key]:+.4f} vs base)"
            rows.append(f"{_esc(axis[0])}: {p[key]:.4f}" + (f" ± {spread:.4f}" if spread else "") + delta)
        return "<br>".join(rows)

    for configuration in sorted(
        lines, key=lambda c: (not family(lines[c][0]).startswith("full"), family(lines[c][0]), c)
    ):
        pts = ([base] if base else []) + lines[configuration]
        fam = family(lines[configuration][0])
        fig.add_trace(
            go.Scatter(
                x=[p["forgetting"] for p in pts], y=[p["learning"] for p in pts], mode="lines+markers",
                name=configuration, legendgroup=fam, legendgrouptitle_text=fam,
                line={"color": palette[configuration], "dash": "solid" if pts[-1]["method"] == "full" else "dash", "width": 1.6},
                marker={"size": 7}, text=[hover(p) for p in pts], hovertemplate="%{text}<extra></extra>",
                error_x={"type": "data", "array": [p.get("forgetting_spread") or 0 for p in pts], "thickness": 1, "width": 2},
                error_y={"type": "data", "array": [p.get("learning_spread") or 0 for p in pts], "thickness": 1, "width": 2},
            )
        )  # fmt: skip
    if frontier:
        fig.add_trace(
            go.Scatter(
                x=[p["forgetting"] for p in frontier],
                y=[p["learning"] for p in frontier],
                mode="lines",
                name="Pareto frontier",
                line={"color": "black", "width": 1, "dash": "dot"},
                hoverinfo="skip",
            )
        )
    if base:
        fig.add_trace(
            go.Scatter(
                x=[base["forgetting"]], y=[base["learning"]], mode="markers", name="base",
                marker={"symbol": "star", "size": 16, "color": "black"}, text=[hover(base)],
                hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    fig.update_layout(
        title=title, height=620, template="plotly_white", hovermode="closest", legend={"groupclick": "toggleitem"},
        xaxis={"title": f"{forget[0]}  (→ more forgetting)", "autorange": "reversed" if forget[1] else True},
        yaxis={"title": f"{learn[0]}  (↑ more learning)", "autorange": True if learn[1] else "reversed"},
    )  # fmt: skip
    return fig


def training_figure(steps: list[dict], arms: list[dict]):
    """Loss, learning rate and gradient norm per optimizer step, one line per arm (hover names it)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from learnforget.analyse.frontier import configuration_name

    settings = {a["name"]: {**a, "configuration": configuration_name(a["name"])} for a in arms}
    per_arm: dict[str, list[dict]] = defaultdict(list)
    for row in steps:
        per_arm[row["arm"]].append(row)
    palette = colors([settings[a] for a in per_arm if a in settings])
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.05,
                        subplot_titles=("training loss (nats/token)", "learning rate", "gradient norm (before clipping)"))  # fmt: skip
    for name in sorted(per_arm, key=lambda a: (family(settings.get(a, {"method": "?"})), a)):
        rows, arm = per_arm[name], settings.get(name, {"method": "?", "configuration": name})
        color = palette.get(arm["configuration"], "#888")
        for i, key in enumerate(("loss", "learning_rate", "grad_norm"), start=1):
            fig.add_trace(
                go.Scatter(
                    x=[r["step"] for r in rows], y=[r[key] for r in rows], mode="lines", name=name,
                    legendgroup=name, showlegend=i == 1, line={"color": color, "width": 1.2},
                    hovertemplate=f"<b>{_esc(name)}</b><br>step %{{x}}<br>{key} %{{y:.4g}}<extra></extra>",
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
    import plotly.graph_objects as go

    from learnforget.report.plots import configuration_settings, spectrum_values

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
                hovertemplate=f"<b>{_esc(configuration)}</b><br>tokens %{{x:,}}<br>rank fraction %{{y:.4f}}<extra></extra>",
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
    import re

    import plotly.graph_objects as go

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
                hovertemplate=f"<b>{_esc(arm)}</b><br>%{{y}} %{{x}}<br>rank fraction %{{z:.3f}}<extra></extra>",
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


# ---------------------------------------------------------------------------------------------------
# Sections


def status_banner(arms: list[dict]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for a in arms:
        if a["method"] != "base":
            counts[a["status"]] += 1
    total = sum(counts.values())
    if counts["done"] == total:
        return ""
    rest = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "done")
    return (
        f'<p class="banner">{counts["done"]} of {total} arms finished ({rest}): this page shows what is '
        "finished so far; it is rewritten as arms finish (or run <code>learnforget report DIR</code>).</p>"
    )


def arms_table(table_id: str, store, learn: tuple, forget: tuple, base: dict | None) -> str:
    """Every arm with its settings, status, final numbers, change vs the base, and cost."""
    from learnforget.analyse.frontier import configuration_name

    finals: dict[str, dict] = {}
    milestones: dict[str, int] = defaultdict(int)
    for r in store.metric_rows():
        finals.setdefault(r["arm"], {})
        if r["milestone"] >= finals[r["arm"]].get("_tokens", -1):
            if r["milestone"] > finals[r["arm"]].get("_tokens", -1):
                finals[r["arm"]] = {"_tokens": r["milestone"]}
                milestones[r["arm"]] += 1
            finals[r["arm"]][r["metric"]] = r["value"]
    arms = store.arms()
    palette = colors([{**a, "configuration": configuration_name(a["name"])} for a in arms])
    header = ["arm", "family", "status", "method", "rank", "targets", "LR", "weight decay", "dropout", "seed",
              "tokens", learn[0], f"Δ {learn[0]}", forget[0], f"Δ {forget[0]}", "ΔW rank (90%)", "trainable",
              "tokens/s", "train s", "peak MB"]  # fmt: skip
    rows, swatches = [], []
    for a in arms:
        final = finals.get(a["name"], {})

        def delta(metric: str, final=final) -> float | None:
            if base is None or metric not in final or metric not in base["metrics"]:
                return None
            return final[metric] - base["metrics"][metric]

        rows.append([
            a["name"], family(a), a["status"], a["method"], a["rank"], a["target_modules"], a["learning_rate"],
            a["weight_decay"], a["dropout"], a["seed"], final.get("_tokens"), final.get(learn[0]),
            delta(learn[0]), final.get(forget[0]), delta(forget[0]), final.get("spectrum/rank_delta_fraction"),
            a["trainable_params"], a["tokens_per_s"], a["train_seconds"], a["peak_memory_mb"],
        ])  # fmt: skip
        swatches.append(palette.get(configuration_name(a["name"]), "#888"))
    return table(table_id, header, rows, text_cols=6, swatches=swatches)


def methods_section(study_dir: Path, prefix: str = "") -> list[str]:
    """The methods ranked on the frontier (`analysis.methods`), where the study trains more than full and LoRA."""
    from learnforget.analyse.methods import method_rows

    methods = method_rows(study_dir)
    if {m["method"] for m in methods} <= {"full", "LoRA"}:
        return []
    header = ["rank", "method", "on frontier", "best configuration", "seeds", "learning", "± learning",
              "forgetting", "± forgetting", "trainable", "tokens/s", "peak MB", "ΔW rank (90%)", "intruders",
              "± intruders"]  # fmt: skip
    rows = [
        [i + 1, m["method"], m["frontier"], m["best"], m["seeds"], *m["learning"], *m["forgetting"],
         m["trainable"][0], m["tokens_per_s"][0], m["peak_memory_mb"][0], m["rank_fraction"][0], *m["intruders"]]
        for i, m in enumerate(methods)
    ]  # fmt: skip
    return [
        f"<h2 id='{prefix}methods'>Methods</h2>",
        "<p>Each method's best configuration (best learning at the final milestone), ranked by how many of its "
        "configurations lie on the learning–forgetting frontier, then by learning; ± = half-range over seeds.</p>",
        table(f"{prefix}methods-table", header, rows, text_cols=4),
    ]


def stage_section(store, prefix: str = "") -> list[str]:
    """Seconds per arm and stage (nothing for a study stored before stages were timed)."""
    from learnforget.report.tables import STAGE_NOTE
    from learnforget.study.stage_times import stage_table

    header, rows = stage_table(store)
    if not rows:
        return []
    return [f"<h3 id='{prefix}stages'>Time per stage (seconds)</h3>", f"<p>{_esc(STAGE_NOTE)}</p>",
            table(f"{prefix}stages-table", header, rows)]  # fmt: skip


def claims_table(table_id: str, claims: list[dict]) -> str:
    from learnforget.analyse.claims import FACTOR

    header = ["id", "§", "source", "claim", "verdict", "qualifier", "effect", "3× spread", "evidence"]
    rows = [
        [c["id"], c["section"], c.get("source", "paper"), c["claim"], c["verdict"], c.get("qualifier") or "",
         c["effect"], None if c["noise"] is None else FACTOR * c["noise"], c["evidence"]]
        for c in claims
    ]  # fmt: skip
    return table(table_id, header, rows, text_cols=6)


def frontier_table(table_id: str, frontier: list[dict], learn: tuple, forget: tuple) -> str:
    rows = [
        [p["configuration"], family(p), p["milestone"], p["learning"], p["forgetting"], p["seeds"]]
        for p in frontier
    ]
    header = ["configuration", "family", "tokens", learn[0], forget[0], "seeds"]
    return table(table_id, header, rows, text_cols=2)


def footer(study, store) -> str:
    env = store.info("environment") or {}
    now = environment()
    env_rows = "".join(
        f"<tr><td class='t'>{_esc(k)}</td><td class='t'>{_esc(v)}</td></tr>" for k, v in env.items()
    )
    config = json.dumps(store.info("config") or json.loads(study.model_dump_json()), indent=1)
    named = named_base_description(study.base_model)
    return (
        "<footer><h2>Config, base model and environment</h2>"
        f"<p>Base model: <code>{_esc(store.info('base_path', study.base_model))}</code> "
        f"(config: <code>{_esc(study.base_model)}</code>{_esc(': ' + named) if named else ''}).</p>"
        + (f"<p>Environment of the run:</p><table>{env_rows}</table>" if env else "<p>Environment of the run: not recorded.</p>")
        + f"<p>Report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} with learnforget "
        f"{_esc(now.get('learnforget', '?'))}, plotly embedded (no network needed).</p>"
        f"<details><summary>Study config (JSON)</summary><pre>{_esc(config)}</pre></details></footer>"
    )  # fmt: skip


def study_sections(study_dir: Path, store, study, prefix: str = "", curves: bool = True) -> list[str]:
    """The body of a study's page (also each setting's part of a suite page, there without the training
    curves and spectra, which stay in the setting's own page): figures and tables."""
    from learnforget.analyse.claims import claims_for_study_dir
    from learnforget.analyse.frontier import pareto_frontier
    from learnforget.report.plots import study_points

    pts, avg, learn, forget = study_points(store, study)
    base = next((p for p in avg if p["method"] == "base"), None)
    frontier = pareto_frontier(avg, learn, forget)
    arms = store.arms()
    parts = [status_banner(arms)]
    if pts:
        parts += [
            f"<h2 id='{prefix}plane'>Learning vs forgetting</h2>",
            "<p>One line per configuration from the base (★) through its milestones: the mean over seeds, "
            "with the seed spread (half-range) as error bars; colour = family, shade = rank (LoRA) or "
            "learning rate (full); dotted: the Pareto frontier of the seed means. Hover a point for the arm, "
            "its settings and numbers; click a legend entry to hide it, double-click to isolate it.</p>",
            _figure_html(plane_figure(avg, frontier, learn, forget, f"{study.name}: learning vs forgetting"), f"{prefix}plane-fig"),
            "<h3>Pareto frontier (seed means)</h3>",
            frontier_table(f"{prefix}frontier", frontier, learn, forget),
        ]  # fmt: skip
    parts += [
        f"<h2 id='{prefix}arms'>Arms</h2>",
        arms_table(f"{prefix}arms-table", store, learn, forget, base),
        *stage_section(store, prefix),
    ]
    parts += methods_section(study_dir, prefix) if pts else []
    if pts:
        claims = claims_for_study_dir(study_dir)
        parts += [
            f"<h2 id='{prefix}claims'>Claims</h2>",
            "<p>Each finding of Biderman et al. (2024) judged on this study's numbers (§ = the paper's "
            "section; source <i>ours</i> = our stricter tests, beyond the paper). Supported only when the "
            "effect is at least 3× the seed noise; contradicted when the opposite effect is.</p>",
            claims_table(f"{prefix}claims-table", claims),
        ]
    if not curves:
        return parts
    steps = store.steps()
    if steps:
        parts += [f"<h2 id='{prefix}training'>Training curves</h2>",
                  _figure_html(training_figure(steps, arms), f"{prefix}training-fig")]  # fmt: skip
    spectrum = spectrum_figure(store.metric_rows(), arms)
    if spectrum is not None:
        parts += [f"<h2 id='{prefix}spectrum'>ΔW spectrum along training</h2>",
                  _figure_html(spectrum, f"{prefix}spectrum-fig")]  # fmt: skip
    heatmap = matrices_figure(store.matrices())
    if heatmap is not None:
        parts += [
            "<h3>ΔW rank per matrix at the last milestone</h3><p>Rank explaining 90% of each matrix's ΔW "
            "variance, as a fraction of min(m, n) (a Gaussian random matrix needs about 0.5); pick an arm "
            "from the menu.</p>",
            _figure_html(heatmap, f"{prefix}matrices-fig"),
        ]
    return parts


def write_study_html(study_dir: Path, store, study) -> Path:
    """report.html of one study."""
    study_dir = Path(study_dir)
    from learnforget.config.metrics import forgetting_metric, learning_metric

    learn, forget = learning_metric(study)[0], forgetting_metric(study)[0]
    header = [
        f"<h1>Study <code>{_esc(study.name)}</code></h1>",
        f"<p class='meta'>Target domain <b>{_esc(study.domain)}</b> ({study.regime.upper()}), "
        f"{study.budget_tokens:,} tokens per arm in {study.steps} steps of {study.batch_size}×{study.seq_len}. "
        f"Learning = <code>{_esc(learn)}</code> (target, held out); forgetting = <code>{_esc(forget)}</code> "
        "(source, held out). Static versions: <a href='summary.md'>summary.md</a> and the PNGs beside it.</p>",
    ]
    body = header + study_sections(study_dir, store, study) + [footer(study, store)]
    path = study_dir / HTML_NAME
    tmp = path.with_name(f".{HTML_NAME}.tmp")
    with writing(study_dir, HTML_NAME, tmp):  # a full disk leaves no .tmp behind
        tmp.write_text(page(f"learnforget: {study.name}", body))
        tmp.replace(path)  # a browser refreshing mid-write sees the old page or the new, never half
    return path


def write_suite_html(suite_dir: Path, settings: list[str]) -> Path:
    """report.html of a suite: the verdicts per setting, the findings across settings, then each setting's
    plane, arms and claims (each setting's own report.html has its training curves and spectra too)."""
    from learnforget.analyse.claims import claims_for_study_dir, claims_side_by_side
    from learnforget.analyse.suite_claims import claims_for_suite_dir
    from learnforget.config.study import StudyConfig
    from learnforget.study.store import Store

    suite_dir = Path(suite_dir)
    judged = {key: claims_for_study_dir(suite_dir / key) for key in settings}
    verdicts = [[f"{c['section']} {c['claim']}", c.get("source", "paper")] + [per[k]["verdict"] if per[k] else "–" for k in settings]
                for c, per in claims_side_by_side(judged)]  # fmt: skip
    body = [
        f"<h1>Suite <code>{_esc(suite_dir.name)}</code></h1>",
        "<p class='meta'>Settings: " + ", ".join(f"<a href='#{k}-plane'>{_esc(k)}</a> (<a href='{_esc(k)}/report.html'>full report</a>)" for k in settings) + "</p>",
        "<h2>Claims per setting</h2>",
        table("verdicts", ["claim", "source", *settings], verdicts, text_cols=2 + len(settings)),
        "<h2>Across settings</h2>",
        claims_table("across", claims_for_suite_dir(suite_dir, settings)),
    ]  # fmt: skip
    last_store, last_study = None, None
    for key in settings:
        store = Store(suite_dir / key)
        study = StudyConfig.model_validate(store.info("config"))
        body += [f"<h2 style='border:0;font-size:26px'>{_esc(key)}</h2>"]
        body += study_sections(suite_dir / key, store, study, prefix=f"{key}-", curves=False)
        last_store, last_study = store, study
    body.append(footer(last_study, last_store))
    path = suite_dir / HTML_NAME
    path.write_text(page(f"learnforget suite: {suite_dir.name}", body))
    return path
