"""What every learnforget plot shares: headless axes, saving, and colours that stay readable at 150 arms.

An arm's colour says its *family* (full finetuning and its variants, LoRA per target set, with or without
trained embeddings): one sequential colour map per family, cool for full finetuning, warm for LoRA, and
its *shade* says its rank (LoRA) or learning rate (full), light = small. The same colours are used by the
static PNGs and by report.html.
"""

from __future__ import annotations

from pathlib import Path

# Enough maps for the families a grid like paper-mini has; more families reuse them in order.
FULL_MAPS = ("Blues", "Purples", "PuBuGn", "BuGn")
LORA_MAPS = ("Oranges", "Reds", "RdPu", "YlOrBr", "Greys", "Purples", "YlGn", "pink_r")
BASE_COLOR = "#000000"


def new_axes(size: tuple[float, float] = (7.5, 5.5), rows: int = 1, cols: int = 1, **kwargs):
    """(figure, axes) rendered off-screen, so plots work on servers without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=size, squeeze=rows * cols == 1, **kwargs)


def legend_outside(ax, fontsize: float = 7) -> None:
    """The legend to the right of the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(
            handles, labels, fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False
        )


def save(fig, ax, title: str, path: str | Path, legend: bool = True) -> Path:
    """Title, grid, legend outside the axes; write a PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        legend_outside(ax)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def family(arm: dict) -> str:
    """'full', 'full + weight decay', 'full, frozen embeddings', 'LoRA all', 'LoRA all + embeddings', …"""
    method = arm.get("method")
    if method == "base":
        return "base"
    if method == "full":
        variants = []
        if (arm.get("weight_decay") or 0) > 0:
            variants.append(" + weight decay")
        if (arm.get("dropout") or 0) > 0:
            variants.append(" + dropout")
        if arm.get("train_embeddings") in (0, False):
            variants.append(", frozen embeddings")
        return "full" + "".join(variants)
    from learnforget.analyse.claims import method_label

    name = f"{method_label(method or 'lora')} {arm.get('target_modules') or ''}".strip()
    if (arm.get("dropout") or 0) > 0:
        name += " + dropout"
    return name + (" + embeddings" if arm.get("train_embeddings") else "")


def _shade_key(arm: dict) -> tuple[float, ...]:
    """What varies within a family: rank first, then learning rate, then the regularizers and α."""
    keys = ("rank", "learning_rate", "weight_decay", "dropout", "alpha")
    return tuple(float(arm.get(k) or 0) for k in keys)


def colors(arms: list[dict]) -> dict[str, str]:
    """configuration name (or arm name, whichever key `arms` carry as 'configuration'/'arm') -> hex colour.

    Families get their own colour map (full: cool maps, LoRA: warm); within a family, configurations are
    shaded light to dark by (rank, learning rate, weight decay, dropout, α).
    """
    import matplotlib
    from matplotlib.colors import to_hex

    by_family: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in arms:
        key = arm.get("configuration") or arm["arm"]
        by_family.setdefault(family(arm), {})[key] = _shade_key(arm)
    result: dict[str, str] = {}
    full_i = lora_i = 0
    for name in sorted(by_family, key=lambda f: (not f.startswith("full"), f)):
        members = by_family[name]
        if name == "base":
            result.update({k: BASE_COLOR for k in members})
            continue
        if name.startswith("full"):
            cmap, full_i = matplotlib.colormaps[FULL_MAPS[full_i % len(FULL_MAPS)]], full_i + 1
        else:
            cmap, lora_i = matplotlib.colormaps[LORA_MAPS[lora_i % len(LORA_MAPS)]], lora_i + 1
        shades = sorted(set(members.values()))
        for key, shade in members.items():
            position = shades.index(shade) / (len(shades) - 1) if len(shades) > 1 else 1.0
            result[key] = to_hex(
                cmap(0.4 + 0.5 * position)
            )  # the light end of a map is unreadable, the dark end black
    return result
