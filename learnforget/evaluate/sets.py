"""The held-out evaluation sets of a study: loss rows, multiple-choice items and generation problems.

- loss: held-out packed rows of each source corpus (forgetting) and of the target domain (learning);
- choice: HellaSwag-style items from the first source corpus's held-out documents (choice.py);
- generation, reference, diversity: held-out target-domain problems (built-in code tasks, a HumanEval
  format file, or built-in math problems with few-shot prompts);
- template: the template evaluation prompts go through, as in training (`data.datasets.study_template`).

They use a fixed seed (EVAL_SEED), so that every arm, seed and rerun is measured on the same held-out
examples. CODE_STOP and MATH_STOP end the generated completions.
"""

from __future__ import annotations

import torch

from learnforget.config.study import StudyConfig
from learnforget.data import corpora
from learnforget.data.code_tasks import code_tasks
from learnforget.data.datasets import MATH_TEMPLATE, study_template
from learnforget.data.math_tasks import math_problems
from learnforget.data.tokens import sample_packed_rows
from learnforget.evaluate.choice import build_choice_items
from learnforget.evaluate.math_answers import math_fewshot_prompt
from learnforget.evaluate.passk import load_problems

EVAL_SEED = 1234
CODE_STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]  # HumanEval's stop sequences
MATH_STOP = ["\nQuestion:", "\n\n"]


def heldout_rows(corpus: str, tokenizer, study: StudyConfig) -> torch.Tensor:
    """Held-out rows of a built-in corpus for loss metrics: `eval.loss_tokens` worth, drawn from the whole
    held-out split (`sample_packed_rows`)."""
    n_rows = max(1, study.eval.loss_tokens // study.seq_len)
    docs = corpora.documents(corpus, "heldout")
    return sample_packed_rows(tokenizer, docs, study.seq_len, n_rows, EVAL_SEED)


def generation_problems(study: StudyConfig, n: int) -> list[dict]:
    """Held-out target-domain problems for generation metrics, in a common shape:
    {"task_id", "prompt", "reference"} plus the code problem's fields (test, entry_point) for the sandbox."""
    if n == 0:
        return []
    if study.domain == "code":
        if study.eval.code_problems == "builtin":
            problems = code_tasks("test", n, EVAL_SEED)
        else:
            problems = list(load_problems(study.eval.code_problems).values())[:n]
        return [dict(p, reference=p["canonical_solution"]) for p in problems]
    shots = math_problems("train", study.eval.fewshot, EVAL_SEED) if study.eval.fewshot else []
    return [
        {"task_id": f"math/{i}", "prompt": math_fewshot_prompt(p["question"], shots, MATH_TEMPLATE),
         "reference": " " + p["solution"], "answer": p["answer"]}
        for i, p in enumerate(math_problems("test", n, EVAL_SEED))
    ]  # fmt: skip


def evaluation_sets(study: StudyConfig, tokenizer) -> dict:
    """Held-out data of the source domain (forgetting) and the target domain (learning)."""
    sets: dict = {
        "loss": {
            corpus: heldout_rows(corpus, tokenizer, study)
            for corpus in (*study.eval.source_corpora, study.domain)
        },
        "template": study_template(study, tokenizer),  # evaluation prompts are rendered as in training
    }
    if study.eval.choice_items:
        texts = [d.text for d in corpora.documents(study.eval.source_corpora[0], "heldout")]
        sets["choice"] = build_choice_items(texts, tokenizer, study.eval.choice_items, seed=EVAL_SEED)
    n_problems = max(
        study.eval.generation_problems, study.eval.reference_problems, study.eval.diversity_prompts
    )
    problems = generation_problems(study, n_problems)
    sets["generation"] = problems[: study.eval.generation_problems]
    sets["reference"] = problems[: study.eval.reference_problems]
    sets["diversity"] = problems[: study.eval.diversity_prompts]
    return sets
