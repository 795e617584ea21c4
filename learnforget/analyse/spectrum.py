"""ΔW spectrum analysis: how high-rank is a finetuning update, compared with the base weights and noise?

For every 2-D weight matrix present in both the base and the finetuned model (embeddings and LM head only
on request) we report, as in Biderman et al. 2024 §6 and Shuttleworth et al. 2024:

- `rank_delta`: the smallest k whose top-k singular values of ΔW = W_tuned − W_base explain `variance`
  of Σσ²; `rank_base` the same for W_base; `rank_random` for a seeded Gaussian matrix of the same shape;
- `delta_fro` = ‖ΔW‖_F and `relative_delta` = ‖ΔW‖_F / ‖W_base‖_F; the top singular values of ΔW;
- `intruders`: how many of the top-k left singular vectors of W_tuned have |cosine| < ε with every left
  singular vector of W_base.

One ΔW path serves the study's milestones and `learnforget spectrum`: a plain LoRA (or rsLoRA) update
stays factored, σ(scale·B·A) = scale·σ(R_B R_Aᵀ) from thin QRs B = Q_B R_B and Aᵀ = Q_A R_A; every other
update (full finetuning, DoRA, PiSSA, VeRA, ...) is dense, W_tuned − W_base, and needs `svdvals` alone.
The intruder count needs W_tuned's top-k left singular vectors, from one exact thin SVD of W_tuned (the
tall way round, where LAPACK is fastest; randomized top-k methods misorder real spectra, whose σ_10 and
σ_11 differ by 1% in SmolLM2); W_base's factors come from `spectrum_cache`, computed once per base matrix
and kept on disk, as are the random reference spectra. Matrices up to SMALL_MATRIX entries are decomposed
in float64, larger ones in float32: the statistics are sums of σ² and |cosines| against a threshold, which
float32's ~1e-6 error moves only for a value that close to its threshold.

Entry points: `compare_checkpoints` (directories / hub ids / adapters, read matrix by matrix),
`spectrum_of_state_dicts` (in memory), `spectrum_of_model` (a training model, at the study's
milestones); `spectrum_plots.run_spectrum` is what the CLI calls. Each takes `progress`: a callback
`on_matrix(done, total, next name)` (the CLI draws it, a study worker sends it to the study's console).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from learnforget.analyse.spectrum_cache import base_factors, save_atomic, thin_svd
from learnforget.analyse.weights import CheckpointReader, is_adapter_dir, resolve_model_dir
from learnforget.arms.delta import LowRankDelta, adapter_model, adapter_updates, merged_weights
from learnforget.errors import UserError

TOP_SINGULAR_VALUES = 16  # how many σ(ΔW) each matrix entry keeps
CURVE_POINTS = 65  # samples of each cumulative explained-variance curve kept for plots
SMALL_MATRIX = 1 << 16  # up to this many entries (256×256), SVDs run in float64; above, in float32
MODULE_TYPES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}
MODULE_TYPES |= {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}
_EMBEDDING = re.compile(r"(embed|wte|wpe|lm_head)")
_LAYER = re.compile(r"\.(\d+)\.")

Tuned = torch.Tensor | LowRankDelta | None  # a dense W_tuned, a low-rank ΔW, or "unchanged"
OnMatrix = Callable[[int, int, str], None]  # (matrices done, total, name of the next one)


# ---- the statistics -------------------------------------------------------------------------------------


def rank_for_variance(singular_values: torch.Tensor | np.ndarray | Iterable[float], variance: float) -> int:
    """Smallest k with Σ_{i≤k} σ_i² ≥ variance · Σ σ_i² (0 for a zero matrix)."""
    s = np.sort(np.abs(np.asarray(torch.as_tensor(singular_values).double().cpu())).ravel())[::-1]
    energy = np.cumsum(s**2)
    if energy.size == 0 or energy[-1] == 0:
        return 0
    return int(np.searchsorted(energy, variance * energy[-1], side="left")) + 1


def lora_singular_values(delta: LowRankDelta) -> torch.Tensor:
    """σ(scale·left·right) from thin QRs of the factors and an r×r SVD; never forms the m×n product."""
    left, right = delta.left.double(), delta.right.double()
    _, r_left = torch.linalg.qr(left)  # left = Q_L R_L
    _, r_right = torch.linalg.qr(right.T)  # rightᵀ = Q_R R_R, so ΔW = scale·Q_L (R_L R_Rᵀ) Q_Rᵀ
    return abs(delta.scale) * torch.linalg.svdvals(r_left @ r_right.T)


def count_intruders(u_tuned: torch.Tensor, u_base: torch.Tensor, epsilon: float) -> int:
    """Columns of `u_tuned` whose largest |cosine| with any column of `u_base` is below `epsilon`."""
    if u_tuned.shape[1] == 0:
        return 0
    similarity = (u_base.T @ u_tuned).abs().amax(dim=0)  # columns are unit vectors
    return int((similarity < epsilon).sum())


_RANDOM_SPECTRA: dict[tuple[int, int, int], np.ndarray] = {}


def random_singular_values(
    shape: tuple[int, int], seed: int = 0, device: str | None = None, cache_dir: str | Path | None = None
) -> np.ndarray:
    """σ of a seeded standard Gaussian matrix of `shape`; cached in memory and, with cache_dir, on disk."""
    m, n = int(shape[0]), int(shape[1])
    key = (m, n, seed)
    if key in _RANDOM_SPECTRA:
        return _RANDOM_SPECTRA[key]
    path = Path(cache_dir) / f"gaussian_{m}x{n}_seed{seed}.npy" if cache_dir else None
    if path is not None and path.is_file():
        values = np.load(path)
    else:
        generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same matrix on every device
        matrix = torch.randn(m, n, generator=generator, dtype=_work_dtype((m, n)))
        values = torch.linalg.svdvals(matrix.to(_device(device))).double().cpu().numpy()
        if path is not None:
            save_atomic(lambda p: _save_npy(p, values), path)
    _RANDOM_SPECTRA[key] = values
    return values


def rank_random(
    shape: tuple[int, int],
    variance: float,
    seed: int = 0,
    device: str | None = None,
    cache_dir: str | Path | None = None,
) -> int:
    """`rank_for_variance` of a seeded Gaussian matrix of `shape` (≈0.51·n for n×n at variance 0.9)."""
    return rank_for_variance(random_singular_values(shape, seed, device, cache_dir), variance)


def _save_npy(path: Path, values: np.ndarray) -> None:
    with path.open("wb") as file:  # a file object: np.save would append ".npy" to a temporary name
        np.save(file, values)


def _work_dtype(shape: tuple[int, ...]) -> torch.dtype:
    return torch.float64 if shape[0] * shape[1] <= SMALL_MATRIX else torch.float32


def _device(device: str | torch.device | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _accelerator_of(state_dict: Mapping[str, torch.Tensor]) -> torch.device | None:
    """The device of the first tensor when it is not the CPU (compute where the model is), else None."""
    tensor = next(iter(state_dict.values()), None)
    if tensor is None or tensor.device.type == "cpu":
        return None
    return tensor.device


def _cumulative_curve(singular_values: np.ndarray, size: int) -> tuple[list[int], list[float]]:
    """Explained-variance fraction after k components, at up to CURVE_POINTS values of k in [0, size]."""
    s = np.zeros(size)
    s[: len(singular_values)] = np.sort(singular_values)[::-1][:size]
    energy = np.concatenate([[0.0], np.cumsum(s**2)])
    fraction = energy / energy[-1] if energy[-1] > 0 else np.zeros_like(energy)
    ks = np.unique(np.linspace(0, size, min(size + 1, CURVE_POINTS)).round().astype(int))
    return ks.tolist(), [round(float(f), 6) for f in fraction[ks]]


@torch.no_grad()
def matrix_spectrum(
    w_base: torch.Tensor,
    tuned: Tuned,
    variance: float = 0.9,
    top_k: int = 10,
    epsilon: float = 0.5,
    device: str | torch.device | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[dict, dict]:
    """All statistics for one matrix; returns (entry without its name, cumulative curves for plots).
    `cache_dir`: where W_base's factors and the random spectra are kept (None: computed every time)."""
    dev, dtype = _device(device), _work_dtype(w_base.shape)
    size, k = min(w_base.shape), min(top_k, min(w_base.shape))
    base = base_factors(w_base, dtype, dev, cache_dir)
    w_base = w_base.to(dev, dtype)
    if isinstance(tuned, torch.Tensor):
        tuned = tuned.to(dev, dtype)
        if torch.equal(tuned, w_base):
            tuned = None
    s_delta, intruders = torch.zeros(0, dtype=torch.float64), 0
    if tuned is not None:
        if isinstance(tuned, LowRankDelta):
            s_delta = lora_singular_values(LowRankDelta(tuned.left.to(dev), tuned.right.to(dev), tuned.scale))
            w_tuned = w_base + tuned.dense(dtype, dev) if k > 0 else None  # dense only for the intruders
        else:
            s_delta, w_tuned = torch.linalg.svdvals(tuned - w_base), tuned
        if k > 0:
            u_tuned = thin_svd(w_tuned)[1][:, :k]
            intruders = count_intruders(u_tuned, base.left_vectors.to(dev, dtype), epsilon)
        del w_tuned
    s_delta = s_delta.double().cpu().numpy()
    s_base = base.singular_values.double().cpu().numpy()
    s_random = random_singular_values(tuple(w_base.shape), device=device, cache_dir=cache_dir)
    delta_fro = float(np.sqrt(np.sum(s_delta**2)))
    top = np.zeros(min(TOP_SINGULAR_VALUES, size))
    top[: min(len(s_delta), len(top))] = s_delta[: len(top)]
    entry = {
        "shape": list(w_base.shape),
        "rank_delta": rank_for_variance(s_delta, variance),
        "rank_base": rank_for_variance(s_base, variance),
        "rank_random": rank_for_variance(s_random, variance),
        "delta_fro": delta_fro,
        "relative_delta": delta_fro / float(np.sqrt(np.sum(s_base**2)) or 1.0),
        "intruders": intruders,
        "top_singular_values": [float(v) for v in top],
    }
    ks, delta_curve = _cumulative_curve(s_delta, size)
    curves = {"k": ks, "delta": delta_curve}
    curves["base"] = _cumulative_curve(s_base, size)[1]
    curves["random"] = _cumulative_curve(s_random, size)[1]
    return entry, curves


# ---- names and summaries --------------------------------------------------------------------------------


def module_type(name: str) -> str:
    """'model.layers.3.mlp.gate_proj.weight' -> 'gate'; unknown modules keep their own short name."""
    module = name.removesuffix(".weight").rsplit(".", 1)[-1]
    return MODULE_TYPES.get(module, module)


def layer_index(name: str) -> int | None:
    """'model.layers.3.mlp.gate_proj.weight' -> 3; None for matrices outside the layer stack."""
    match = _LAYER.search(name)
    return int(match[1]) if match else None


def is_analysed(name: str, shape: tuple[int, ...], include_embeddings: bool) -> bool:
    """2-D weight matrices; embeddings and the LM head only when asked for; never 1-D norms or biases."""
    if len(shape) != 2 or not name.endswith(".weight"):
        return False
    return include_embeddings or not _EMBEDDING.search(name.removesuffix(".weight").rsplit(".", 1)[-1])


def matrix_order(name: str) -> tuple:
    """Sort key: layer stack first, by layer, then q, k, v, o, gate, up, down, then by name."""
    layer, kind = layer_index(name), module_type(name)
    known = list(MODULE_TYPES.values())
    return (layer is None, layer or 0, known.index(kind) if kind in known else len(known), name)


def summarize(matrices: list[dict]) -> dict:
    """Per module type (q, k, v, o, gate, up, down, others) and overall: medians of ranks, mean intruders."""

    def stats(group: list[dict]) -> dict:
        return {
            "matrices": len(group),
            "median_rank_delta": statistics.median(m["rank_delta"] for m in group),
            "median_rank_delta_fraction": statistics.median(m["rank_delta"] / min(m["shape"]) for m in group),
            "median_rank_base_fraction": statistics.median(m["rank_base"] / min(m["shape"]) for m in group),
            "median_rank_random_fraction": statistics.median(
                m["rank_random"] / min(m["shape"]) for m in group
            ),
            "median_relative_delta": statistics.median(m["relative_delta"] for m in group),
            "mean_intruders": statistics.fmean(m["intruders"] for m in group),
        }

    groups: dict[str, list[dict]] = {t: [] for t in MODULE_TYPES.values()}
    for m in matrices:
        groups.setdefault(module_type(m["name"]), []).append(m)
    by_module = {t: stats(g) for t, g in groups.items() if g}
    return {"by_module": by_module, "overall": stats(matrices) if matrices else {}}


# ---- whole models ---------------------------------------------------------------------------------------


def _check_settings(variance: float, top_k: int, epsilon: float) -> None:
    if not 0 < variance <= 1:
        raise UserError(f"--variance {variance} is out of range; use a fraction in (0, 1], e.g. 0.9")
    if top_k < 0:
        raise UserError(f"--top-k {top_k} is negative; use 0 (no intruder count) or more, e.g. 10")
    if not 0 <= epsilon <= 1:
        raise UserError(f"--epsilon {epsilon} is out of range; cosine thresholds lie in [0, 1], e.g. 0.5")


def _spectra(
    names: list[str],
    load_base: Callable[[str], torch.Tensor],
    load_tuned: Callable[[str], Tuned],
    settings: dict,
    progress: bool | OnMatrix,
) -> dict:
    """Run `matrix_spectrum` over `names`, one matrix in memory at a time, and assemble the result.
    `progress`: a callback `on_matrix(done, total, next name)`, or True for a transient rich bar."""
    matrices, curves = [], {}
    names = sorted(names, key=matrix_order)  # the same order whatever the storage order
    columns = (
        TextColumn("spectrum {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, disable=progress is not True, transient=True) as bar:
        task = bar.add_task("", total=len(names))
        for done, name in enumerate(names):
            bar.update(task, description=name)
            if callable(progress):
                progress(done, len(names), name)
            entry, curves[name] = matrix_spectrum(load_base(name), load_tuned(name), **settings)
            matrices.append({"name": name, **entry})
            bar.advance(task)
    if callable(progress):
        progress(len(names), len(names), "")
    return {
        "variance": settings["variance"],
        "top_k": settings["top_k"],
        "epsilon": settings["epsilon"],
        "matrices": matrices,
        "summary": summarize(matrices),
        "_curves": curves,
    }


def _pair_names(
    base_shapes: Mapping[str, tuple], tuned_shapes: Mapping[str, tuple], include_embeddings: bool
) -> tuple[list[str], list[dict]]:
    """Matrices to analyse and the skipped ones with a reason."""
    names, skipped = [], []
    for name, shape in base_shapes.items():
        if not is_analysed(name, shape, include_embeddings):
            continue
        if name not in tuned_shapes:
            skipped.append({"name": name, "reason": "not in the finetuned model"})
        elif tuple(tuned_shapes[name]) != tuple(shape):
            skipped.append({"name": name, "reason": f"shape {list(shape)} vs {list(tuned_shapes[name])}"})
        else:
            names.append(name)
    if not names:
        example = next(iter(tuned_shapes), "nothing")
        raise UserError(
            f"no 2-D weight matrix has the same name and shape in both models (base has e.g. "
            f"'{next(iter(base_shapes), 'nothing')}', finetuned '{example}'); are they the same architecture?"
        )
    return names, skipped


def _update_names(
    updates: Mapping[str, Tuned], base_shapes: Mapping[str, tuple], include_embeddings: bool, source: str
) -> list[str]:
    """Every analysed base matrix (unchanged ones get ΔW = 0), after checking each update fits the base."""
    for name, update in updates.items():
        if name not in base_shapes:
            if is_analysed(name, (0, 0), include_embeddings):
                raise UserError(
                    f"{source}: updates '{name}', which the base model does not have; "
                    "is BASE the model it was trained on?"
                )
        elif tuple(update.shape) != tuple(base_shapes[name]):
            raise UserError(
                f"{source}: update for '{name}' has shape {list(update.shape)} but the base weight is "
                f"{list(base_shapes[name])}; is BASE the model it was trained on?"
            )
    return [n for n, shape in base_shapes.items() if is_analysed(n, shape, include_embeddings)]


def adapter_summary(config: Mapping) -> dict:
    """The adapter settings worth reporting next to the spectra."""
    keys = ("r", "lora_alpha", "use_rslora", "target_modules", "base_model_name_or_path")
    out = {k: config.get(k) for k in keys}
    if isinstance(out["target_modules"], set | list | tuple):
        out["target_modules"] = sorted(out["target_modules"])
    return out


def spectrum_of_state_dicts(
    base_sd: Mapping[str, torch.Tensor],
    tuned_sd: Mapping[str, torch.Tensor] | None = None,
    variance: float = 0.9,
    top_k: int = 10,
    epsilon: float = 0.5,
    include_embeddings: bool = False,
    updates: Mapping[str, Tuned] | None = None,
    device: str | torch.device | None = None,
    progress: bool | OnMatrix = False,
    cache_dir: str | Path | None = None,
) -> dict:
    """Spectra of tuned_sd − base_sd in memory (the study calls this at every milestone).

    `tuned_sd` is a full state dict with base_sd's names; or `updates` gives ΔW per changed matrix
    (`arms.delta.adapter_updates`: factored LoRA updates and replaced modules).
    Base and tuned matrices may lie on different devices (base weights kept on the CPU, the model on a
    GPU): each pair is moved to `device`, by default the tuned weights' accelerator, else `_device(None)`.
    Returns the same dict as `compare_checkpoints`.
    """
    _check_settings(variance, top_k, epsilon)
    tensors = tuned_sd if updates is None else {n: getattr(u, "left", u) for n, u in updates.items()}
    device = device or _accelerator_of(tensors)
    settings = dict(variance=variance, top_k=top_k, epsilon=epsilon, device=device, cache_dir=cache_dir)
    base_shapes = {n: tuple(t.shape) for n, t in base_sd.items()}
    if updates is None:
        tuned_shapes = {n: tuple(t.shape) for n, t in tuned_sd.items()}
        names, skipped = _pair_names(base_shapes, tuned_shapes, include_embeddings)
        result = _spectra(names, base_sd.__getitem__, tuned_sd.__getitem__, settings, progress)
    else:
        names, skipped = _update_names(updates, base_shapes, include_embeddings, "adapter"), []
        result = _spectra(names, base_sd.__getitem__, updates.get, settings, progress)
    result["skipped"] = skipped
    return result


def compare_checkpoints(
    base: str,
    finetuned: str,
    variance: float = 0.9,
    top_k: int = 10,
    epsilon: float = 0.5,
    include_embeddings: bool = False,
    device: str | None = None,
    progress: bool | OnMatrix = True,
    cache_dir: str | Path | None = None,
) -> dict:
    """Spectra of FINETUNED − BASE, read matrix by matrix from HF model dirs / hub ids / a LoRA adapter dir.

    Returns {"variance", "top_k", "epsilon", "base", "finetuned", "matrices": [...], "summary": {...},
    "skipped": [...], "_curves": {...}} (plus "adapter" when FINETUNED is a PEFT LoRA adapter).
    """
    _check_settings(variance, top_k, epsilon)
    settings = dict(variance=variance, top_k=top_k, epsilon=epsilon, device=device, cache_dir=cache_dir)
    base_dir, tuned_dir = resolve_model_dir(base), resolve_model_dir(finetuned)
    with CheckpointReader(base_dir) as base_reader:
        base_shapes = {n: base_reader.shape(n) for n in base_reader.names()}
        if is_adapter_dir(tuned_dir):
            result = _adapter_spectra(
                base_reader, base_shapes, base_dir, tuned_dir, include_embeddings, settings, progress
            )
            skipped = result.pop("skipped")
        else:
            with CheckpointReader(tuned_dir) as tuned_reader:
                tuned_shapes = {n: tuned_reader.shape(n) for n in tuned_reader.names()}
                names, skipped = _pair_names(base_shapes, tuned_shapes, include_embeddings)
                result = _spectra(names, base_reader.get, tuned_reader.get, settings, progress)
    result["skipped"] = skipped
    return {"base": str(base), "finetuned": str(finetuned), **result}


def _adapter_spectra(
    base_reader, base_shapes, base_dir, adapter_dir, include_embeddings, settings, progress
) -> dict:
    """Spectra of a saved adapter on its base: ΔW from the peft model's own modules (`arms.delta`),
    factored for plain LoRA, else of the merged weights."""
    model = adapter_model(base_dir, adapter_dir)
    updates = adapter_updates(model)
    if updates is None:
        merged = merged_weights(model)
        shapes = {n: tuple(t.shape) for n, t in merged.items()}
        names, skipped = _pair_names(base_shapes, shapes, include_embeddings)
        return {
            **_spectra(names, base_reader.get, merged.__getitem__, settings, progress),
            "skipped": skipped,
        }
    names = _update_names(updates, base_shapes, include_embeddings, str(adapter_dir))
    result = _spectra(names, base_reader.get, updates.get, settings, progress)
    summary = adapter_summary(next(iter(model.peft_config.values())).to_dict())
    return {**result, "adapter": summary, "skipped": []}


def spectrum_of_model(
    base_sd: Mapping[str, torch.Tensor],
    model: torch.nn.Module | None,
    merged_weights: Callable[[], Mapping[str, torch.Tensor]],
    **settings,
) -> dict:
    """Spectra of a training model against `base_sd` (the study's milestones): from the adapter's factors
    for plain LoRA, else of `merged_weights()` (`arms.delta.merged_weights`, W_base + ΔW under base names).
    `settings`: those of `spectrum_of_state_dicts`."""
    updates = adapter_updates(model)
    if updates is None:
        return spectrum_of_state_dicts(base_sd, merged_weights(), **settings)
    return spectrum_of_state_dicts(base_sd, updates=updates, **settings)
