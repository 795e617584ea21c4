"""The metrics measured at every milestone, by suite: learning on the target domain, forgetting on the source.

Suites (metric names are '<domain>/<measure>'):
- loss:       <source corpus>/loss (english by default), <domain>/loss — mean NLL of held-out packed text;
- choice:     english/mc_acc, english/mc_acc_norm — HellaSwag-style multiple choice on held-out passages;
- generation: code/pass@1 (greedy, sandboxed) or math/strict_match and math/flexible_match;
- reference:  <domain>/ref_nll — per-token NLL of held-out reference solutions;
- diversity:  <domain>/distinct_fraction (n samples per prompt at temperature T), and for code
              code/sampled_pass@k from those samples;
- harness:    harness/<task>/<metric> through lm-evaluation-harness, and harness/paper_forgetting
              (mean of HellaSwag, ARC-Challenge, WinoGrande) when those three ran; lm-eval's own
              direction of each task metric (higher_is_better) goes to `evaluate_suites`' `directions`.

Generation and diversity share one decoding loop when both are on (greedy rows ride along with the
sampled ones, see generate.py); their time is then recorded under generation.

Which metrics are the study's learning and forgetting axes is decided by `learning_metric` and
`forgetting_metric` (configurable in `eval`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from learnforget.config.study import StudyConfig
from learnforget.data.templates import PLAIN, render_prompt, render_response, resolve_template
from learnforget.evaluate.choice import score_choices
from learnforget.evaluate.diversity import diversity_report
from learnforget.evaluate.generate import generate
from learnforget.evaluate.harness import PAPER_FORGETTING_METRICS, paper_forgetting_score, run_harness
from learnforget.evaluate.likelihood import completion_nll, mean_token_loss
from learnforget.evaluate.math_answers import score_generation
from learnforget.evaluate.passk import score_completions
from learnforget.evaluate.sets import CODE_STOP, MATH_STOP
from learnforget.runtime.distributed import is_main_process

Measure = Callable[[], dict[str, float]]
OnSuite = Callable[[str, float | None], None]


def evaluate_suites(
    model,
    tokenizer,
    study: StudyConfig,
    eval_sets: dict,
    timings: dict[str, float] | None = None,
    on_suite: OnSuite | None = None,
    directions: dict[str, bool] | None = None,
) -> dict[str, float]:
    """Every metric of one model on the study's evaluation sets. `timings`, if given, receives the
    seconds each suite took (loss, choice, reference, generation, diversity, harness); `on_suite`, if
    given, is told when each suite starts (name, None) and ends (name, seconds): progress for callers
    that evaluate one slow model outside a study. `directions`, if given, receives lm-eval's own
    higher_is_better of each harness metric recorded ('harness/<task>/<metric>': bool; see
    `config.metrics.higher_is_better`)."""
    # Prompts go through the training template; a data.pt from before templates were saved gets the
    # template of that time (chat template if any, else the prompt as is).
    template = eval_sets.get("template") or resolve_template(None, tokenizer, builtin_data=True)
    metrics: dict[str, float] = {}
    timings = {} if timings is None else timings
    for name, measure in _suites(model, tokenizer, study, eval_sets, template, directions):
        _run_suite(name, measure, metrics, timings, on_suite)
    return metrics


def _run_suite(
    name: str,
    measure: Measure,
    metrics: dict[str, float],
    timings: dict[str, float],
    on_suite: OnSuite | None,
) -> None:
    """Run one suite: its metrics into `metrics`, its seconds added to `timings[name]`, `on_suite` told."""
    if on_suite:
        on_suite(name, None)
    started = time.perf_counter()
    metrics.update(measure())
    seconds = time.perf_counter() - started
    timings[name] = timings.get(name, 0.0) + seconds
    if on_suite:
        on_suite(name, seconds)


def _suites(
    model, tokenizer, study: StudyConfig, eval_sets: dict, template: str, directions: dict[str, bool] | None
) -> Iterator[tuple[str, Measure]]:
    """(suite name, measure) of each suite the evaluation sets and settings ask for, in the order they run."""
    ev, domain = study.eval, study.domain
    yield "loss", lambda: loss_metrics(model, eval_sets["loss"], ev.batch_size)
    if eval_sets.get("choice"):
        yield "choice", lambda: choice_metrics(model, tokenizer, study, eval_sets["choice"])
    if eval_sets.get("reference"):
        pairs = reference_pairs(tokenizer, eval_sets["reference"], template)
        yield (
            "reference",
            lambda: {f"{domain}/ref_nll": completion_nll(model, tokenizer, pairs, ev.batch_size)},
        )
    greedy, sampled = eval_sets.get("generation"), eval_sets.get("diversity")
    if greedy and sampled:  # one decoding loop for both (generate.py): timed as generation
        yield (
            "generation",
            lambda: generation_and_diversity(model, tokenizer, study, greedy, sampled, template),
        )
    elif greedy:
        yield "generation", lambda: generation_metrics(model, tokenizer, study, greedy, template)
    elif sampled:
        yield "diversity", lambda: diversity_metrics(model, tokenizer, study, sampled, template)
    if ev.harness_tasks:
        yield "harness", lambda: harness_metrics(model, tokenizer, study, directions)


def loss_metrics(model, loss_sets: dict, batch_size: int) -> dict[str, float]:
    """'<corpus>/loss': mean per-token loss of each corpus's held-out rows."""
    return {f"{corpus}/loss": mean_token_loss(model, rows, batch_size) for corpus, rows in loss_sets.items()}


def choice_metrics(model, tokenizer, study: StudyConfig, items: list[dict]) -> dict[str, float]:
    """'<source>/mc_acc' and '<source>/mc_acc_norm' on the multiple-choice items (the first source corpus)."""
    source = study.eval.source_corpora[0]
    scores = score_choices(model, tokenizer, items, study.eval.batch_size)
    return {f"{source}/mc_acc": scores["acc"], f"{source}/mc_acc_norm": scores["acc_norm"]}


def reference_pairs(tokenizer, problems: list[dict], template: str) -> list[tuple[str, str]]:
    """(prompt, reference solution) of each problem, rendered through the template as in training."""
    return [
        (render_prompt(tokenizer, p["prompt"], template), render_response(p["reference"], template))
        for p in problems
    ]


def _completions(
    model, tokenizer, study: StudyConfig, greedy: list[dict], sampled: list[dict], template: str
) -> tuple[list[list[str]], list[list[str]]]:
    """Greedy completions of `greedy` problems and the diversity samples of `sampled` ones, decoded
    together."""
    ev = study.eval
    stop = CODE_STOP if study.domain == "code" else MATH_STOP
    prompts = [render_prompt(tokenizer, p["prompt"], template) for p in greedy + sampled]
    completions = generate(
        model, tokenizer, prompts, ev.max_new_tokens, stop=stop, batch_size=ev.batch_size,
        temperature=ev.diversity_temperature if sampled else 0.0, num_samples=ev.diversity_samples,
        seed=study.seed, greedy=[True] * len(greedy) + [False] * len(sampled),
    )  # fmt: skip
    return [texts[:1] for texts in completions[: len(greedy)]], completions[len(greedy) :]


def _score_code(problems: list[dict], completions: list[list[str]], ks: list[int]) -> dict:
    """pass@k of the completions in the sandbox (NaN on every process but the main one)."""
    if not is_main_process():  # a sharded model is evaluated by every process; the main one keeps the score
        return {f"pass@{k}": float("nan") for k in ks}
    samples = [(p["task_id"], c) for p, outs in zip(problems, completions, strict=True) for c in outs]
    # One sandbox worker: arms already run in parallel processes, one per core.
    return score_completions({p["task_id"]: p for p in problems}, samples, ks, workers=1)


def generation_and_diversity(
    model, tokenizer, study: StudyConfig, greedy: list[dict], sampled: list[dict], template: str = PLAIN
) -> dict[str, float]:
    """`generation_metrics` and `diversity_metrics`, from one decoding loop."""
    greedy_outputs, samples = _completions(model, tokenizer, study, greedy, sampled, template)
    return {
        **generation_metrics(model, tokenizer, study, greedy, template, greedy_outputs),
        **diversity_metrics(model, tokenizer, study, sampled, template, samples),
    }


def generation_metrics(
    model, tokenizer, study: StudyConfig, problems: list[dict], template: str = PLAIN, completions=None
) -> dict[str, float]:
    """Greedy generation: pass@1 in the sandbox (code) or GSM8K strict/flexible match (math).
    `completions`: the greedy completions, when already decoded."""
    if completions is None:
        completions, _ = _completions(model, tokenizer, study, problems, [], template)
    if study.domain == "code":
        return {"code/pass@1": _score_code(problems, completions, [1])["pass@1"]}
    scores = [score_generation(outs[0], p["answer"]) for p, outs in zip(problems, completions, strict=True)]
    return {
        "math/strict_match": sum(s["strict-match"] for s in scores) / len(scores),
        "math/flexible_match": sum(s["flexible-extract"] for s in scores) / len(scores),
    }


def diversity_metrics(
    model, tokenizer, study: StudyConfig, problems: list[dict], template: str = PLAIN, completions=None
) -> dict[str, float]:
    """n samples per prompt at temperature T: distinct outputs (and pass@k from them, for code).
    `completions`: the samples, when already drawn."""
    ev = study.eval
    if completions is None:
        _, completions = _completions(model, tokenizer, study, [], problems, template)
    metrics = {f"{study.domain}/distinct_fraction": diversity_report(completions)["distinct_fraction"]}
    if study.domain == "code":
        ks = sorted({1, *(k for k in ev.pass_k if k <= ev.diversity_samples)})
        scores = _score_code(problems, completions, ks)
        metrics.update({f"code/sampled_pass@{k}": scores[f"pass@{k}"] for k in ks})
    return metrics


def harness_metrics(
    model, tokenizer, study: StudyConfig, directions: dict[str, bool] | None = None
) -> dict[str, float]:
    """lm-evaluation-harness tasks on the in-memory model: 'harness/<task>/<metric>', and
    'harness/paper_forgetting' when its three benchmarks ran. `directions`, if given, receives lm-eval's
    higher_is_better of each 'harness/<task>/<metric>'."""
    ev = study.eval
    declared: dict[str, bool] = {}
    raw = run_harness(
        model, tokenizer, ev.harness_tasks, num_fewshot=ev.harness_fewshot, limit=ev.harness_limit,
        batch_size=ev.batch_size, include_path=ev.harness_include_path, directions=declared,
    )  # fmt: skip
    metrics = {f"harness/{k}": v for k, v in raw.items()}
    if directions is not None:
        directions.update({f"harness/{k}": higher for k, higher in declared.items()})
    if all(m in raw for m in PAPER_FORGETTING_METRICS):
        metrics["harness/paper_forgetting"] = paper_forgetting_score(raw)
    return metrics
