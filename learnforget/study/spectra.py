"""ΔW spectra at a milestone: per-matrix rows in the store, and the summary metrics of the metrics table."""

from __future__ import annotations

from learnforget.analyse.spectrum import spectrum_of_model
from learnforget.files import cache_dir
from learnforget.study.store import Store


def record_spectra(
    store: Store, arm: str, tokens: int, base_weights: dict, model, merged_weights, on_matrix=None
) -> dict[str, float]:
    """ΔW spectra of every linear layer at this milestone: from a plain LoRA `model`'s factors, else of
    `merged_weights()` (the arm's `arms.delta.merged_weights`; `model` None for a sharded arm), with W_base's
    factors cached on disk (`analysis.spectrum_cache`); returns summary metrics for the metrics table."""
    result = spectrum_of_model(
        base_weights, model, merged_weights, progress=on_matrix or False, cache_dir=cache_dir() / "spectra"
    )
    store.add_matrices(arm, tokens, result["matrices"])
    # Matrices an arm does not train (LoRA on attention only leaves the MLP's ΔW = 0) are left out of the
    # median: it describes the updates the arm makes.
    changed = [m for m in result["matrices"] if m["delta_fro"] > 0]
    fractions = sorted(m["rank_delta"] / min(m["shape"]) for m in changed)
    random_fractions = sorted(m["rank_random"] / min(m["shape"]) for m in changed)
    if not fractions:
        return {}
    mid = len(fractions) // 2
    return {
        "spectrum/rank_delta_fraction": fractions[mid],
        "spectrum/rank_random_fraction": random_fractions[mid],
        "spectrum/intruders": sum(m["intruders"] for m in changed),  # Shuttleworth et al.'s, all matrices
    }
