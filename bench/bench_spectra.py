"""ΔW spectra at one study milestone: cached base factors + factored LoRA vs the dense path, no cache.

    python bench/bench_spectra.py            # SmolLM2-135M (the named base smollm2-135m), LoRA r16 and full
    python bench/bench_spectra.py --quick    # a tiny Llama, seconds
    BENCH_SPECTRUM_MODEL=/path/to/hf_dir python bench/bench_spectra.py   # another model directory

The arm is a LoRA r16 on the paper's "All" modules (q, k, v, o, up, down) with random B (ΔW ≠ 0), and a
"full finetune" that adds small noise to every weight. Ours: `spectrum_of_model` as a milestone runs it,
W_base's factors already on disk (the first milestone of a study pays the one-time factorisation, given
in the note). Baseline: the old milestone path's work (the merged weights' dense ΔW, W_base decomposed
anew, no cache) run by today's code, so in float32 too: the old code's float64 took ~2.5× longer again.
Without the model the full mode prints why and adds no row. Single-threaded, as a study worker often is.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `learnforget` as a script too

import torch

from bench.common import Row, alternate

ALL_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def model_dir(quick: bool) -> tuple[str | None, str]:
    """(HF directory, description), or (None, why not): a tiny Llama saved to a temporary directory when
    quick, else $BENCH_SPECTRUM_MODEL or the named base smollm2-135m (converted from its GGUF once)."""
    if quick:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                             vocab_size=128)  # fmt: skip
        path = tempfile.mkdtemp(prefix="bench-spectra-")
        LlamaForCausalLM(config).save_pretrained(path)
        return path, "tiny Llama"
    if os.environ.get("BENCH_SPECTRUM_MODEL"):
        return os.environ["BENCH_SPECTRUM_MODEL"], Path(os.environ["BENCH_SPECTRUM_MODEL"]).name
    from learnforget.base.gguf import converted_base

    try:
        return str(converted_base("smollm2-135m")), "SmolLM2-135M"
    except Exception as err:  # not installed, no gguf package, ...: the row is skipped, not the benchmark
        return None, f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def lora_model(path: str, r: int):
    from peft import LoraConfig, get_peft_model

    from learnforget.base.load import load_causal_lm

    model = get_peft_model(
        load_causal_lm(path), LoraConfig(r=r, lora_alpha=2 * r, target_modules=ALL_MODULES)
    )
    gen = torch.Generator().manual_seed(1)
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            parameter.data = 1e-3 * torch.randn(parameter.shape, generator=gen)
    return model


def run(quick: bool = False) -> list[Row]:
    """One row per arm kind (quick: LoRA r16 on a tiny Llama, 1 repeat; full: LoRA r16 and full, 2)."""
    from learnforget.analyse.spectrum import spectrum_of_model, spectrum_of_state_dicts
    from learnforget.arms.delta import merged_weights
    from learnforget.base.load import load_causal_lm

    path, description = model_dir(quick)
    if path is None:
        print(f"spectra: skipped, no smollm2-135m ({description}); set BENCH_SPECTRUM_MODEL", file=sys.stderr)
        return []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        base_sd = load_causal_lm(path).state_dict()
        lora = lora_model(path, 16)
        full = {n: t + 1e-3 * t.std() * torch.randn_like(t) if t.ndim == 2 else t for n, t in base_sd.items()}
        arms = [("LoRA r16", lora, lambda: merged_weights(lora))]
        if not quick:
            arms.append(("full finetuning", None, lambda: full))
        rows = []
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            first = spectrum_of_model(base_sd, lora, lambda: merged_weights(lora), cache_dir=cache)
            factorise_s = time.perf_counter() - started
            for name, model, merged in arms:
                ours, dense, _, _ = alternate(
                    lambda: spectrum_of_model(base_sd, model, merged, cache_dir=cache),  # noqa: B023
                    lambda: spectrum_of_state_dicts(base_sd, merged()),  # noqa: B023
                    1 if quick else 2,
                )
                note = (f"{description}, {len(first['matrices'])} matrices, 1 thread; the first milestone also "
                        f"factorises W_base once (with LoRA r16: {factorise_s:.3g} s in all)")  # fmt: skip
                rows.append(Row(f"ΔW milestone spectra, {name}", ours, dense, "dense, no cache", note=note))
        return rows
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    from bench.common import format_table

    print(format_table(run(quick="--quick" in sys.argv)))
