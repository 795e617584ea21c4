"""What every part of the report shares: families, colours that stay readable at 150 arms, headless axes,
saving, and the wording both summary.md and report.html use.

An arm's colour says its *family* (full finetuning and its variants, LoRA per target set, with or without
trained embeddings): one sequential colour map per family, cool for full finetuning, warm for methods that
adapt a frozen base, and its *shade* says its rank (LoRA) or learning rate (full), light = small. The same
colours are used by the static PNGs and by report.html.
"""

from __future__ import annotations

from pathlib import Path

from learnforget.analyse.points import arm_labels
from learnforget.config.methods import Base, Full, Lora, family_label, method_of

# Enough maps for the families a grid like paper-mini has; more families reuse them in order.
FULL_MAPS = ("Blues", "Purples", "PuBuGn", "BuGn")
LORA_MAPS = ("Oranges", "Reds", "RdPu", "YlOrBr", "Greys", "Purples", "YlGn", "pink_r")
BASE_COLOR = "#000000"

STAGE_NOTE = (
    "Summed over milestones; eval/<suite> = one evaluation suite, checkpoint = the resumable checkpoint at "
    "each milestone, save = the final weights and model card, other = the arm's wall time no stage accounts "
    "for (loading the model and data, writing the store)."
)


def new_axes(size: tuple[float, float] = (7.5, 5.5), rows: int = 1, cols: int = 1, **kwargs):
    """(figure, axes) rendered off-screen, so plots work on servers without a display."""
    import matplotlib  # heavy (about 0.3 s): only a report that draws PNGs needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the headless backend

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
    import matplotlib.pyplot as plt  # heavy: only a report that draws PNGs needs it

    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        legend_outside(ax)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return Path(path)


def family(arm: dict) -> str:
    """'full', 'full + weight decay', 'full, frozen embeddings', 'LoRA all', 'LoRA all + embeddings', …"""
    kind = method_of(arm)
    if isinstance(kind, Base):
        return kind.label
    if isinstance(kind, Full):
        variants = []
        if (arm.get("weight_decay") or 0) > 0:
            variants.append(" + weight decay")
        if (arm.get("dropout") or 0) > 0:
            variants.append(" + dropout")
        if arm.get("train_embeddings") in (0, False):
            variants.append(", frozen embeddings")
        return kind.label + "".join(variants)
    name = f"{family_label(arm.get('method') or Lora.family)} {arm.get('target_modules') or ''}".strip()
    if (arm.get("dropout") or 0) > 0:
        name += " + dropout"
    return name + (" + embeddings" if arm.get("train_embeddings") else "")


def family_order(arm: dict) -> tuple[bool, str]:
    """Sort key of an arm's family: full finetuning's families first, then the adapters', by name."""
    return method_of(arm).adapts_frozen_base, family(arm)


def line_dashed(arm: dict) -> bool:
    """Lines of methods that adapt a frozen base are dashed, full finetuning's solid."""
    return method_of(arm).adapts_frozen_base


def arm_configurations(arms: list[dict]) -> dict[str, str]:
    """arm name -> its configuration (the arm without its seed), from the settings of `Store.arms()` rows."""
    return {arm: labels[0] for arm, labels in arm_labels([{**a, "arm": a["name"]} for a in arms]).items()}


def configuration_settings(arms: list[dict]) -> dict[str, dict]:
    """configuration -> its arms' settings (any seed's), with 'configuration' set, for colours and families."""
    configurations = arm_configurations(arms)
    return {configurations[a["name"]]: {**a, "configuration": configurations[a["name"]]} for a in arms}


def _shade_key(arm: dict) -> tuple[float, ...]:
    """What varies within a family: rank first, then learning rate, then the regularizers and α."""
    keys = ("rank", "learning_rate", "weight_decay", "dropout", "alpha")
    return tuple(float(arm.get(k) or 0) for k in keys)


def colors(arms: list[dict]) -> dict[str, str]:
    """configuration name (or arm name, whichever key `arms` carry as 'configuration'/'arm') -> hex colour.

    Families get their own colour map (full: cool maps, adapters: warm); within a family, configurations
    are shaded light to dark by (rank, learning rate, weight decay, dropout, α).
    """
    import matplotlib  # heavy (about 0.3 s): the colour maps; report.html needs them too
    from matplotlib.colors import to_hex  # with matplotlib, above

    by_family: dict[str, dict[str, tuple[float, ...]]] = {}
    kinds: dict[str, dict] = {}
    for arm in arms:
        key = arm.get("configuration") or arm["arm"]
        by_family.setdefault(family(arm), {})[key] = _shade_key(arm)
        kinds.setdefault(family(arm), arm)
    result: dict[str, str] = {}
    full_i = adapter_i = 0
    for name in sorted(by_family, key=lambda f: family_order(kinds[f])):
        members, kind = by_family[name], method_of(kinds[name])
        if isinstance(kind, Base):
            result.update({k: BASE_COLOR for k in members})
            continue
        if kind.adapts_frozen_base:
            cmap, adapter_i = matplotlib.colormaps[LORA_MAPS[adapter_i % len(LORA_MAPS)]], adapter_i + 1
        else:
            cmap, full_i = matplotlib.colormaps[FULL_MAPS[full_i % len(FULL_MAPS)]], full_i + 1
        shades = sorted(set(members.values()))
        for key, shade in members.items():
            position = shades.index(shade) / (len(shades) - 1) if len(shades) > 1 else 1.0
            # The light end of a map is unreadable, the dark end black.
            result[key] = to_hex(cmap(0.4 + 0.5 * position))
    return result
