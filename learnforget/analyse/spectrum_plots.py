"""Views of a spectrum result (the dict `compare_checkpoints` returns, or its JSON file).

- `spectrum_table`: a rich Table, one row per layer, one column per module type; each cell is
  rank_delta / min(m, n), with the intruder count when there are any; footer rows give the module medians.
- `run_spectrum`: what `learnforget spectrum` calls: compare, print the table, write JSON and the PNG.
- `plot_spectrum`: a PNG with two panels: a layer × module heatmap of rank_delta / min(m, n), and the
  cumulative explained-variance curves of ΔW, W_base and a random matrix for a few matrices.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # the Figure API needs no pyplot state and renders with Agg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from learnforget.analyse.spectrum import compare_checkpoints, layer_index, module_type

_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def _grid(result: dict) -> tuple[list, list[str], dict]:
    """Row keys (layer indices, then 'other'), module types in summary order, and (row, module) -> entry."""
    modules = list(result["summary"]["by_module"])
    cells = {}
    for m in result["matrices"]:
        layer = layer_index(m["name"])
        cells[(layer if layer is not None else "other", module_type(m["name"]))] = m
    layers = sorted({k[0] for k in cells if k[0] != "other"})
    rows = layers + (["other"] if any(k[0] == "other" for k in cells) else [])
    return rows, modules, cells


def spectrum_table(result: dict) -> Table:
    """Console table: rank_delta as a fraction of min(m, n) by layer × module type, with module medians."""
    rows, modules, cells = _grid(result)
    table = Table(
        title=f"ΔW rank for {result['variance']:.0%} of variance, as a fraction of min(m, n)",
        caption=escape("[n] = intruder dimensions among the top-k singular vectors of W_finetuned"),
    )
    table.add_column("layer", justify="right")
    for module in modules:
        table.add_column(module, justify="right")
    for row in rows:
        values = []
        for module in modules:
            m = cells.get((row, module))
            if m is None:
                values.append("")
                continue
            text = f"{m['rank_delta'] / min(m['shape']):.3f}"
            values.append(text + (f" [{m['intruders']}]" if m["intruders"] else ""))
        table.add_row(str(row), *values)
    by_module = result["summary"]["by_module"]
    table.add_section()
    footer = (
        ("median ΔW", "median_rank_delta_fraction"),
        ("median W_base", "median_rank_base_fraction"),
        ("random", "median_rank_random_fraction"),
    )
    for label, key in footer:
        table.add_row(label, *(f"{by_module[mod][key]:.3f}" for mod in modules))
    table.add_row("mean intruders", *(f"{by_module[mod]['mean_intruders']:.2f}" for mod in modules))
    return table


def _default_curve_names(result: dict, count: int = 3) -> list[str]:
    """A few matrices from the middle layer (q, down and v first), else the first few stored."""
    curves = result.get("_curves", {})
    layers = sorted({layer_index(n) for n in curves if layer_index(n) is not None})
    middle = [n for n in curves if layers and layer_index(n) == layers[len(layers) // 2]]
    preferred = {"q": 0, "down": 1, "v": 2}
    middle.sort(key=lambda n: preferred.get(module_type(n), len(preferred)))
    return (middle or list(curves))[:count]


def _short_name(name: str) -> str:
    layer = layer_index(name)
    return f"layer {layer} {module_type(name)}" if layer is not None else name.removesuffix(".weight")


def plot_spectrum(result: dict, path: str | Path, matrices: list[str] | None = None) -> Path:
    """Write a PNG: heatmap of rank_delta / min(m, n) by layer × module, and explained-variance curves."""
    rows, modules, cells = _grid(result)
    heat = np.full((len(rows), len(modules)), np.nan)
    for i, row in enumerate(rows):
        for j, module in enumerate(modules):
            if (m := cells.get((row, module))) is not None:
                heat[i, j] = m["rank_delta"] / min(m["shape"])

    fig = Figure(figsize=(12, max(4.0, 0.25 * len(rows) + 2)), layout="constrained")
    ax_heat, ax_curve = fig.subplots(1, 2, width_ratios=(1, 1.3))
    image = ax_heat.imshow(
        heat, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(heat)))
    )
    ax_heat.set_xticks(range(len(modules)), modules)
    ax_heat.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax_heat.set_xlabel("module")
    ax_heat.set_ylabel("layer")
    ax_heat.set_title(f"rank(ΔW) for {result['variance']:.0%} variance / min(m, n)")
    fig.colorbar(image, ax=ax_heat)

    curves = result.get("_curves", {})
    names = matrices if matrices is not None else _default_curve_names(result)
    for color, name in zip(_COLORS, names, strict=False):
        if name not in curves:
            continue
        c = curves[name]
        x = np.asarray(c["k"]) / max(c["k"][-1], 1)
        ax_curve.plot(x, c["delta"], color=color, label=f"ΔW {_short_name(name)}")
        ax_curve.plot(x, c["base"], color=color, linestyle="--")
        ax_curve.plot(x, c["random"], color=color, linestyle=":")
    if not names or not curves:
        ax_curve.text(0.5, 0.5, "no curves stored in this result", ha="center", va="center")
    ax_curve.plot([], [], color="grey", linestyle="--", label="W_base")
    ax_curve.plot([], [], color="grey", linestyle=":", label="random Gaussian")
    ax_curve.axhline(result["variance"], color="grey", linewidth=0.8)
    ax_curve.set_xlabel("k / min(m, n)")
    ax_curve.set_ylabel(r"explained variance $\sum_{i\leq k}\sigma_i^2 \,/\, \sum_i \sigma_i^2$")
    ax_curve.set_ylim(0, 1.02)
    ax_curve.set_title("cumulative explained variance")
    ax_curve.legend(fontsize="small", loc="lower right")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def run_spectrum(
    base: str,
    finetuned: str,
    variance: float = 0.9,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    include_embeddings: bool = False,
    top_k: int = 10,
    epsilon: float = 0.5,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    console: Console | None = None,
    progress: bool | Callable[[int, int, str], None] = True,
) -> dict:
    """`learnforget spectrum`: compare, print a table by layer × module, optionally write JSON and a PNG.
    `cache_dir`: W_base's factors and the random spectra, kept for later runs (`spectrum_cache`)."""
    result = compare_checkpoints(
        base, finetuned, variance=variance, top_k=top_k, epsilon=epsilon,
        include_embeddings=include_embeddings, device=device, cache_dir=cache_dir, progress=progress,
    )  # fmt: skip
    console = console or Console()
    console.print(spectrum_table(result))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1))
        console.print(f"wrote {json_path}")
    if plot_path:
        plot_spectrum(result, plot_path)
        console.print(f"wrote {plot_path}")
    return result
