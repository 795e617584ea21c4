"""The two lines every learnforget plot shares: make axes (headless Agg backend), and finish and save."""

from __future__ import annotations

from pathlib import Path


def new_axes(size: tuple[float, float] = (7.5, 5.5)):
    """(figure, axes) rendered off-screen, so plots work on servers without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def save(fig, ax, title: str, path: str | Path) -> Path:
    """Title, grid, legend; write a PNG and free the figure."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
