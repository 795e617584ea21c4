"""Singular values of a LoRA update ΔW = scale·B·A: factored (two thin QRs + an r×r SVD) vs dense svdvals.

    python bench/bench_lora_svd.py                     # 4096×4096, r = 16, dense once
    python bench/bench_lora_svd.py --m 1024 --n 1024   # quick check
    python bench/bench_lora_svd.py --threads 1         # steadier timings on a busy shared machine

Prints both times, their ratio and the largest relative difference between the two sets of top-r σ.
"""

import argparse
import time

import torch

from learnforget.analysis.spectrum import lora_singular_values, rank_for_variance
from learnforget.analysis.weights import LowRankDelta

# ---- flags ----
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


def best_time(fn, reps: int) -> tuple[float, torch.Tensor]:
    """Smallest wall time over `reps` calls (synchronising a GPU), and the last result."""
    best, out = float("inf"), None
    for _ in range(reps):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, out


gen = torch.Generator().manual_seed(0)
delta = LowRankDelta(
    left=torch.randn(args.m, args.r, generator=gen).to(args.device),  # B, as trained: nonzero
    right=(torch.randn(args.r, args.n, generator=gen) / args.n**0.5).to(args.device),  # A
    scale=2.0,  # lora_alpha = 2r, as in the paper
)
lora_singular_values(delta)  # warm up kernels / libraries once
factored_s, factored = best_time(lambda: lora_singular_values(delta), args.factored_reps)
dense_s, dense = best_time(
    lambda: torch.linalg.svdvals(delta.dense(torch.float32, args.device)), args.dense_reps
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
