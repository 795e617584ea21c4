"""Real benchmarks through lm-evaluation-harness (lm-eval 0.4) on an in-memory model.

``run_harness`` wraps a loaded ``transformers`` model and tokenizer in lm-eval's ``HFLM`` and runs
``lm_eval.simple_evaluate`` on named tasks (built-in ones such as ``hellaswag``, or task YAMLs found
under ``include_path``), returning flat metrics such as ``{"hellaswag/acc_norm": 0.76}`` and, when asked,
lm-eval's own direction of each (``{"hellaswag/acc_norm": True}``: higher is better).
``paper_forgetting_score`` turns those into the paper's source-domain forgetting metric.

lm-eval is an optional dependency (``pip install learnforget[harness]``) and slow to import, so it is
imported only when tasks are checked or run.
"""

import contextlib
import functools
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learnforget.errors import UserError
from learnforget.runtime.device import model_device

# The paper's source-domain ("forgetting") benchmarks and target-domain ("learning") benchmarks.
PAPER_FORGETTING_TASKS = ("hellaswag", "arc_challenge", "winogrande")
PAPER_LEARNING_TASKS = {"code": "humaneval", "math": "gsm8k"}
# The metric read from each forgetting task: lm-eval's standard reported metric for it.
PAPER_FORGETTING_METRICS = ("hellaswag/acc_norm", "arc_challenge/acc_norm", "winogrande/acc")


def run_harness(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    include_path: str | None = None,
    device: str | None = None,
    include_builtin_tasks: bool = True,
    confirm_run_unsafe_code: bool = False,
    directions: dict[str, bool] | None = None,
) -> dict[str, float]:
    """Evaluate ``model`` on lm-eval ``tasks`` and return flat ``{"task/metric": value}`` results.

    Args:
        model: a ``transformers`` causal LM (a ``PreTrainedModel``, or a peft model wrapping one).
        tokenizer: its tokenizer (``PreTrainedTokenizer`` or ``PreTrainedTokenizerFast``).
        tasks: lm-eval task, group or tag names (``hellaswag``, ``gsm8k``, ...) or task YAML paths.
        num_fewshot: few-shot examples per prompt; None keeps each task's default (0 if it has none).
        limit: evaluate only the first ``limit`` documents of each task (for quick checks).
        batch_size: documents per forward pass.
        include_path: a directory of extra task YAMLs (e.g. a benchmark over a local JSON file).
        device: move the model there first (e.g. ``"cuda"``); None leaves it where it is.
        include_builtin_tasks: index lm-eval's ~15k built-in tasks too; False looks only in
            ``include_path``, which skips ~10 s of indexing.
        confirm_run_unsafe_code: allow tasks that execute model-written code (lm-eval's ``humaneval``);
            learnforget's own HumanEval path runs code in its sandbox instead.
        directions: if given, receives lm-eval's ``higher_is_better`` of each returned metric, under
            the same names (``flatten_directions``).

    Returns:
        One entry per task and metric: ``"task/metric"`` for the unfiltered score
        (``"hellaswag/acc_norm"``, ``"winogrande/acc"``) and ``"task/metric,filter"`` when the task
        scores filtered outputs (``"gsm8k/exact_match,strict-match"``). Standard errors are not
        computed (``bootstrap_iters=0``). The model's train/eval mode and the caller's random number
        generator states (lm-eval reseeds python, numpy and torch) are restored afterwards.
    """
    task_manager = check_tasks(tasks, include_path, include_builtin_tasks)
    if device is not None:
        model.to(device)
    with _caller_state_kept(model), _user_errors():
        results = _simple_evaluate(
            model, tokenizer, tasks, num_fewshot, limit, batch_size, task_manager, confirm_run_unsafe_code
        )
    if results is None:  # under a launcher lm-eval reports on local rank 0 only; the main process keeps it
        return {}
    if directions is not None:
        directions.update(flatten_directions(results))
    return flatten_results(results)


def _simple_evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    num_fewshot: int | None,
    limit: int | None,
    batch_size: int,
    task_manager: Any,
    confirm_run_unsafe_code: bool,
) -> dict[str, Any] | None:
    """lm-eval's ``simple_evaluate`` on the in-memory model, wrapped in ``HFLM``; its results (None on
    processes other than local rank 0)."""
    # lm-eval is optional and slow to import (seconds): only when harness tasks run
    import lm_eval
    from lm_eval.models.huggingface import HFLM  # optional and slow, as lm_eval

    # HFLM builds its input tensors on lm.device, which for an in-memory model is `model.device`
    # (its `device` argument only places models HFLM loads itself); we pass ours so both agree.
    # Log-softmax in float32: a bfloat16 model's log-likelihoods must not be rounded to bfloat16.
    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=str(model_device(model)),
        softmax_dtype=torch.float32,
    )
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=task_manager,
        bootstrap_iters=0,  # no stderr: bootstrapping costs minutes on large tasks
        log_samples=False,
        confirm_run_unsafe_code=confirm_run_unsafe_code,
    )


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """lm-eval's failures to get a task's data, and its refusal of unsafe code, as one-line UserErrors."""
    try:
        yield
    except ConnectionError as error:
        raise UserError(
            f"an lm-eval task's dataset could not be fetched from the Hugging Face hub ({error}); "
            "download it once with network access (it is then cached, and HF_DATASETS_OFFLINE=1 "
            "reuses the cache), or point include_path at a task YAML over local data files"
        ) from None
    except FileNotFoundError as error:
        raise UserError(
            f"an lm-eval task's dataset was not found ({error}); check the task's dataset_path and data_files"
        ) from None
    except ValueError as error:
        if "unsafe" in str(error):
            raise UserError(
                f"{error} (it executes model-written code; pass confirm_run_unsafe_code=True)"
            ) from None
        raise


def check_tasks(tasks: list[str], include_path: str | None = None, include_builtin_tasks: bool = True) -> Any:
    """The TaskManager that knows every one of ``tasks``, or a one-line error naming those it does not
    know (also run before any training: ``run --dry-run`` and a study's start check its harness_tasks)."""
    try:  # lm-eval is optional and slow to import: only when harness tasks are asked for
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("lm-eval benchmarks need lm-eval: pip install 'learnforget[harness]'") from None
    if not tasks:
        raise UserError("no lm-eval tasks given (e.g. hellaswag, arc_challenge, winogrande, gsm8k)")
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"{include_path}: include_path must be a directory of lm-eval task YAMLs")
    task_manager = _task_manager(include_path, include_builtin_tasks)
    unknown = [t for t in tasks if t not in task_manager.all_tasks and not Path(t).is_file()]
    if unknown:
        searched = [str(include_path)] if include_path else []
        if include_builtin_tasks:
            searched.insert(0, "lm-eval's built-in tasks")
        raise UserError(
            f"unknown lm-eval task(s): {', '.join(unknown)} (searched {' and '.join(searched) or 'nothing'}; "
            "list built-in tasks with `lm-eval ls tasks`, or add a task YAML under include_path)"
        )
    return task_manager


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """Turn lm-eval's nested ``results["results"]`` into ``{"task/metric[,filter]": value}``."""
    return {name: float(value) for name, _, _, value in _scores(results)}


def flatten_directions(results: dict[str, Any]) -> dict[str, bool]:
    """lm-eval's own ``results["higher_is_better"]`` under ``flatten_results``'s names:
    ``{"task/metric[,filter]": higher is better}``. A metric lm-eval gives no direction (None: a group
    whose tasks disagree) is left out."""
    declared = results.get("higher_is_better") or {}
    directions = {}
    for name, task, metric, _ in _scores(results):
        higher = (declared.get(task) or {}).get(metric)
        if higher is not None:
            directions[name] = bool(higher)
    return directions


def _scores(results: dict[str, Any]) -> Iterator[tuple[str, str, str, int | float]]:
    """(flat name, task, metric, value) of each score in lm-eval's ``results["results"]``."""
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, comma, filter_name = key.partition(",")
            # Metric keys read "metric,filter"; skip "alias"/"sample_len", stderr and "N/A" entries.
            if not comma or metric.endswith("_stderr") or not isinstance(value, int | float):
                continue
            name = metric if filter_name == "none" else f"{metric},{filter_name}"
            yield f"{task}/{name}", task, metric, value


def paper_forgetting_score(metrics: dict[str, float]) -> float:
    """The paper's forgetting metric: the mean of HellaSwag, ARC-Challenge and WinoGrande accuracy.

    Biderman et al. (2024) average the three source-domain accuracies (≈0.67 for Llama-2-7B). We read
    each benchmark's standard lm-eval metric: length-normalized accuracy ``acc_norm`` for HellaSwag and
    ARC-Challenge (their answers differ in length, which biases raw ``acc``) and ``acc`` for
    WinoGrande (lm-eval reports only ``acc`` there: its two options share the scored continuation).
    Absolute values depend on few-shot settings, so compare arms with the same ``num_fewshot``.
    ``metrics`` is ``run_harness`` output for ``PAPER_FORGETTING_TASKS``.
    """
    missing = [name for name in PAPER_FORGETTING_METRICS if name not in metrics]
    if missing:
        raise UserError(
            f"forgetting score needs {', '.join(missing)}: run the harness on {', '.join(PAPER_FORGETTING_TASKS)}"
        )
    return sum(metrics[name] for name in PAPER_FORGETTING_METRICS) / len(PAPER_FORGETTING_METRICS)


@contextlib.contextmanager
def _caller_state_kept(model: Any) -> Iterator[None]:
    """Undo lm-eval's side effects, so evaluating mid-training does not change what follows.

    HFLM switches the model to eval mode, and simple_evaluate reseeds python, numpy and torch.
    """
    was_training = model.training
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


@functools.cache
def _task_manager(include_path: str | None, include_builtin_tasks: bool) -> Any:
    """A TaskManager, built once per setting: indexing the built-in tasks takes seconds."""
    # lm-eval is optional and slow to import: only when harness tasks are asked for
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_builtin_tasks)
