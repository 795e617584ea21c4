"""Every benchmark in one command, each figure against its baseline measured in the same run.

    python -m bench            # full sizes, 3 alternating repeats each (minutes)
    python -m bench --quick    # tiny sizes, 1 repeat: the same table in seconds (the test suite runs it)
    python -m bench --only train,eval
    python -m bench --only split   # the time split and memory of a finished `learnforget run smol`

Prints one Markdown table: speed-up = baseline time / our time (above 1: ours is faster), of the
fastest repeats (min) and of the median ones, and a table of evaluation throughput per suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, format_table

BENCHMARKS = ("train", "score", "svd", "spectra", "tokenize", "eval", "split")
# `split` is no timing of its own: it reads a finished real-model study (runs/smol) and prints its time split
# and memory against the targets, after the table (bench_study_split.py).


def run_benchmarks(quick: bool = False, only: tuple[str, ...] = BENCHMARKS) -> list[Row]:
    """The rows of every benchmark named in `only`, in order."""
    from bench import (
        bench_cpt_stream,
        bench_eval,
        bench_lora_svd,
        bench_score_code,
        bench_spectra,
        bench_train,
    )

    modules = {"train": bench_train, "score": bench_score_code, "svd": bench_lora_svd, "spectra": bench_spectra,
               "tokenize": bench_cpt_stream, "eval": bench_eval}  # fmt: skip
    rows: list[Row] = []
    for name in (n for n in only if n != "split"):
        started = time.perf_counter()
        rows += modules[name].run(quick=quick)
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (seconds)")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated of {', '.join(BENCHMARKS)}"
    )
    args = parser.parse_args(argv)
    only = tuple(n for n in args.only.split(",") if n)
    unknown = set(only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHMARKS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    table = format_table(run_benchmarks(args.quick, only))
    cores = len(os.sched_getaffinity(0))
    print(f"{'quick' if args.quick else 'full'} mode, {cores} cores\n\n{table}", flush=True)
    if "split" in only and not args.quick:
        from bench.bench_study_split import memory_report, report

        print(f"\n{report()}\n\n{memory_report()}", flush=True)
    return table


if __name__ == "__main__":
    main()
