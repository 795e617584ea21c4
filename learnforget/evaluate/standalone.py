"""`learnforget evaluate`: one checkpoint (HF directory or hub id, optionally + a LoRA adapter), one suite.

Suites reuse the study's evaluation sets and metrics, so a standalone number and a study's number
for the same model are the same number:
- code:   held-out code loss, built-in (or HumanEval) pass@1, reference NLL;
- math:   held-out math loss, GSM8K-style strict/flexible match, reference NLL;
- source: held-out English loss and the HellaSwag-style multiple choice (forgetting);
- paper:  the paper's benchmarks through lm-evaluation-harness (HellaSwag, ARC-Challenge,
          WinoGrande → harness/paper_forgetting; GSM8K) plus HumanEval pass@1 in the sandbox.
`evaluate_tasks` runs any lm-eval tasks by name instead (`--tasks`), built-in or from `--include-path`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from learnforget.base.load import check_base_model, load_causal_lm, load_tokenizer
from learnforget.config.study import EvalConfig, StudyConfig
from learnforget.errors import UserError
from learnforget.evaluate.arm_model import merge_refusal
from learnforget.evaluate.harness import run_harness
from learnforget.evaluate.sets import evaluation_sets
from learnforget.evaluate.suites import evaluate_suites
from learnforget.runtime.device import model_device
from learnforget.runtime.distributed import device
from learnforget.runtime.precision import autocast

SUITES = ("code", "math", "source", "paper")
PAPER_HARNESS_TASKS = ["hellaswag", "arc_challenge", "winogrande", "gsm8k"]


def load_checkpoint(model: str, adapter: str | None = None, precision: str = "fp32"):
    """(model, tokenizer) from an HF directory or hub id, with a peft adapter applied when given."""
    check_base_model(model)
    loaded = load_causal_lm(model, precision)
    tokenizer_source = model
    if adapter is not None:
        from peft import PeftModel  # slow to import (about 2 s): only when an adapter is given

        if not (Path(adapter) / "adapter_config.json").exists():
            raise UserError(f"--adapter {adapter}: not a peft adapter directory (no adapter_config.json)")
        loaded = PeftModel.from_pretrained(loaded, adapter)
        if (Path(adapter) / "tokenizer_config.json").exists():
            tokenizer_source = adapter
        # Measured as a study measures its adapter arms (evaluate/arm_model.py).
        if merge_refusal(loaded, precision, quantized=False, sharded=False) is None:
            loaded = loaded.merge_and_unload()
    loaded.eval()
    return loaded.to(device()), load_tokenizer(tokenizer_source)


def suite_study(
    suite: str, model, limit: int, code_problems: str, include_path: str | None, harness_limit: int | None
) -> StudyConfig:
    """A study config whose evaluation sets are exactly the suite's."""
    if suite not in SUITES:
        raise UserError(f"--suite {suite!r}: choose one of {', '.join(SUITES)}")
    context = getattr(model.config, "max_position_embeddings", 2048)
    seq_len = min(context, 1024)
    common = dict(loss_tokens=16 * seq_len, diversity_prompts=0, batch_size=8)
    if suite == "source":
        ev = EvalConfig(choice_items=limit, generation_problems=0, reference_problems=0, **common)
    elif suite == "paper":
        ev = EvalConfig(
            choice_items=0, generation_problems=limit, reference_problems=0, code_problems="humaneval",
            max_new_tokens=512, harness_tasks=PAPER_HARNESS_TASKS, harness_limit=harness_limit,
            harness_include_path=include_path, **common,
        )  # fmt: skip
    else:
        ev = EvalConfig(
            choice_items=0,
            generation_problems=limit,
            reference_problems=limit,
            code_problems=code_problems,
            **common,
        )
    domain = "math" if suite == "math" else "code"
    return StudyConfig(base_model="local", domain=domain, seq_len=seq_len, eval=ev)


def evaluate_checkpoint(
    model_path: str,
    suite: str,
    adapter: str | None = None,
    limit: int = 64,
    code_problems: str = "builtin",
    include_path: str | None = None,
    harness_limit: int | None = None,
    precision: str = "fp32",
    on_suite=None,
) -> dict[str, float]:
    """Every metric of the suite for one checkpoint (under autocast for the mixed precisions);
    `on_suite` hears when each of its suites starts and ends (see `evaluate_suites`)."""
    model, tokenizer = load_checkpoint(model_path, adapter, precision)
    study = suite_study(suite, model, limit, code_problems, include_path, harness_limit)
    sets = evaluation_sets(study, tokenizer)
    if suite == "source":
        sets["loss"] = {"english": sets["loss"]["english"]}
    elif suite == "paper":
        sets["loss"] = {}
    else:
        sets["loss"] = {study.domain: sets["loss"][study.domain]}
    torch.manual_seed(0)
    with autocast(precision, model_device(model)):
        return evaluate_suites(model, tokenizer, study, sets, on_suite=on_suite)


def local_task_names(include_path: str) -> set[str]:
    """Task names defined by the YAML files under an lm-eval include path (`task: NAME` lines)."""
    names = set()
    for path in Path(include_path).rglob("*.y*ml"):
        names.update(re.findall(r"^task:\s*['\"]?([\w.-]+)", path.read_text(errors="replace"), flags=re.M))
    return names


def evaluate_tasks(
    model_path: str,
    tasks: list[str],
    adapter: str | None = None,
    include_path: str | None = None,
    limit: int | None = None,
    precision: str = "fp32",
    num_fewshot: int | None = None,
) -> dict[str, float]:
    """lm-eval tasks by name ({"task/metric": value}) for one checkpoint. lm-eval's ~15k built-in tasks are
    indexed only when some task is not defined under `include_path` (indexing takes ~10 s)."""
    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include-path {include_path}: not a directory of lm-eval task YAMLs")
    builtin = include_path is None or not set(tasks) <= local_task_names(include_path)
    model, tokenizer = load_checkpoint(model_path, adapter, precision)
    with autocast(precision, model_device(model)):
        return run_harness(
            model, tokenizer, tasks, num_fewshot=num_fewshot, limit=limit, include_path=include_path,
            include_builtin_tasks=builtin,
        )  # fmt: skip
