"""Singular values of a LoRA update ΔW = scale·B·A: factored (two thin QRs + an r×r SVD) vs dense svdvals.

    python bench/bench_lora_svd.py                     # 4096×4096, r = 16, dense once
    python bench/bench_lora_svd.py --m 1024 --n 1024   # quick check
    python bench/bench_lora_svd.py --threads 1         # steadier timings on a busy shared machine

Prints both times, their ratio and the largest relative difference between the two sets of top-r σ.
`python -m bench` runs it through `run` (alternating repeats, a row of the common table).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `learnforget` as a script too

import torch

from bench.common import Row, alternate
from learnforget.analyse.spectrum import lora_singular_values, rank_for_variance
from learnforget.arms.delta import LowRankDelta


def make_delta(m: int, n: int, r: int, device: str) -> LowRankDelta:
    gen = torch.Generator().manual_seed(0)
    return LowRankDelta(
        left=torch.randn(m, r, generator=gen).to(device),  # B, as trained: nonzero
        right=(torch.randn(r, n, generator=gen) / n**0.5).to(device),  # A
        scale=2.0,  # lora_alpha = 2r, as in the paper
    )


def run(quick: bool = False) -> list[Row]:
    """Factored vs dense, alternating (4096×4096 and 3 repeats; quick: 256×256, 1 repeat)."""
    m, r, repeats = (256, 16, 1) if quick else (4096, 16, 3)
    delta = make_delta(m, m, r, "cpu")
    lora_singular_values(delta)  # warm up libraries once
    factored, dense, sigma, full = alternate(
        lambda: lora_singular_values(delta),
        lambda: torch.linalg.svdvals(delta.dense(torch.float32, "cpu")),
        repeats,
    )
    top = full[:r].double()
    error = ((sigma - top).abs() / top).max().item()
    note = f"ΔW {m}×{m}, r = {r}; largest relative difference of the top-{r} σ {error:.1e}"
    return [Row("LoRA ΔW spectrum, factored", factored, dense, "dense svdvals", note=note)]


def best_time(fn, reps: int, device: str) -> tuple[float, torch.Tensor]:
    """Smallest wall time over `reps` calls (synchronising a GPU), and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=4096, help="rows of ΔW")
    parser.add_argument("--n", type=int, default=4096, help="columns of ΔW")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--factored-reps", type=int, default=50, help="runs of the factored path (best kept)")
    parser.add_argument(
        "--dense-reps", type=int, default=1, help="runs of the dense path (best kept), at least 1"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # on a shared machine, 1 thread avoids OpenMP spin-waits

    delta = make_delta(args.m, args.n, args.r, args.device)
    lora_singular_values(delta)  # warm up kernels / libraries once
    factored_s, factored = best_time(lambda: lora_singular_values(delta), args.factored_reps, args.device)
    dense_s, dense = best_time(
        lambda: torch.linalg.svdvals(delta.dense(torch.float32, args.device)), args.dense_reps, args.device
    )

    dense_top = dense[: args.r].double().cpu()
    rel_err = ((factored.cpu() - dense_top).abs() / dense_top).max().item()
    print(f"ΔW {args.m}×{args.n}, r={args.r}, device={args.device}, threads={torch.get_num_threads()}")
    print(
        f"factored (QR + {args.r}×{args.r} SVD, float64): {factored_s * 1e3:9.2f} ms  (best of {args.factored_reps})"
    )
    print(f"dense svdvals on the product (float32):     {dense_s * 1e3:9.2f} ms  (best of {args.dense_reps})")
    print(f"speed-up dense / factored: {dense_s / factored_s:.0f}×")
    print(f"max relative difference of the top-{args.r} σ: {rel_err:.2e}")
    print(
        f"rank for 90% variance: factored {rank_for_variance(factored, 0.9)}, dense {rank_for_variance(dense, 0.9)}"
    )


if __name__ == "__main__":
    main()
