"""What a study trains and evaluates on: the training rows every arm shares, and the held-out sets.

- CPT rows: target-domain documents packed into `seq_len` rows, loss on every token.
- IFT rows: one prompt/response pair per row, right-padded; labels are -100 on the prompt and the
  padding, so only response tokens carry loss. The prompt goes through the tokenizer's chat template
  when it has one; otherwise the response simply continues the prompt (HumanEval style for code,
  "Question: …\\nAnswer:" for math).

Training rows depend on the study's seed (data order); evaluation sets use a fixed seed so that every
arm, seed and rerun is measured on the same held-out examples.
"""

from __future__ import annotations

import random

import torch

from learnforget.config import StudyConfig
from learnforget.data import corpora
from learnforget.data.corpora import Document
from learnforget.data.tokens import pack_documents
from learnforget.errors import UserError

EVAL_SEED = 1234
SOURCE_DOMAIN = "english"
IGNORE_INDEX = -100
MATH_TEMPLATE = "Question: {question}\nAnswer:"
CODE_STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]  # HumanEval's stop sequences
MATH_STOP = ["\nQuestion:", "\n\n"]


# ---------------------------------------------------------------------------------------------------
# Training data


def finetune_documents(study: StudyConfig) -> list[Document]:
    """CPT documents of the target domain: built-in finetuning split, or the user's data."""
    if study.data.train == "builtin":
        return corpora.documents(study.domain, "finetune")
    from learnforget.data.loaders import load_text_records

    d = study.data
    texts = load_text_records(
        d.train,
        text_field=d.text_field,
        split=d.split,
        limit=d.max_documents,
        name=d.dataset_name,
        data_dir=d.data_dir,
    )
    return [Document(f"{study.data.train}:{i}", t) for i, t in enumerate(texts)]


def builtin_pairs(domain: str, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs of the built-in generated tasks."""
    if domain == "code":
        from learnforget.data.code_tasks import code_tasks

        return [(t["prompt"], t["canonical_solution"]) for t in code_tasks(split, n, seed)]
    from learnforget.data.math_tasks import math_problems

    return [
        (MATH_TEMPLATE.format(question=p["question"]), " " + p["solution"])
        for p in math_problems(split, n, seed)
    ]


def training_pairs(study: StudyConfig) -> list[tuple[str, str]]:
    """IFT pairs of the training pool: built-in tasks, or the user's data (cut to data.examples)."""
    n = study.data.examples
    if study.data.train == "builtin":
        return builtin_pairs(study.domain, "train", n, study.seed)
    from learnforget.data.loaders import load_pairs

    pairs = load_pairs(
        study.data.train, prompt_field=study.data.prompt_field, response_field=study.data.response_field,
        messages_field=study.data.messages_field, split=study.data.split, limit=n,
        name=study.data.dataset_name, data_dir=study.data.data_dir,
    )  # fmt: skip
    if len(pairs) < n:
        raise UserError(f"{study.data.train}: has {len(pairs)} pairs, fewer than data.examples={n}; lower it")
    return pairs


def render_prompt(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: through the chat template when the tokenizer has one."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return prompt


def encode_pair(tokenizer, prompt: str, response: str, seq_len: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one pair: prompt cut from the left if needed, loss on the response + EOS."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    response_ids = response_ids[: seq_len - 1]
    prompt_ids = prompt_ids[-(seq_len - len(response_ids)) :]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


def ift_rows(
    tokenizer, pairs: list[tuple[str, str]], seq_len: int, n_rows: int, seed: int
) -> dict[str, torch.Tensor]:
    """`n_rows` padded rows: epoch after epoch over the pairs, each epoch in its own seeded order."""
    encoded = [encode_pair(tokenizer, p, r, seq_len) for p, r in pairs]
    rng = random.Random(seed)
    ids = torch.full((n_rows, seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n_rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    order: list[int] = []
    for row in range(n_rows):
        if not order:
            order = list(range(len(encoded)))
            rng.shuffle(order)
            order.reverse()  # pop() from the end keeps the shuffled order
        x, y = encoded[order.pop()]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
    return {"input_ids": ids, "labels": labels}


def training_rows(study: StudyConfig, tokenizer) -> dict[str, torch.Tensor]:
    """Exactly steps × batch_size rows, in the study's seeded order (the same for every arm)."""
    n_rows = study.steps * study.batch_size
    if study.regime == "ift":
        return ift_rows(tokenizer, training_pairs(study), study.seq_len, n_rows, study.seed)
    rows = pack_documents(tokenizer, finetune_documents(study), study.seq_len, n_rows, study.seed)
    # Whole files are packed one after another; shuffling the rows makes every batch a mix of many files
    # instead of a run of one file (which makes held-out loss jump with whatever file comes next).
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(study.seed))
    return {"input_ids": rows[order]}


# ---------------------------------------------------------------------------------------------------
# Evaluation sets


def heldout_rows(corpus: str, tokenizer, study: StudyConfig) -> torch.Tensor:
    """Packed held-out rows of a built-in corpus for loss metrics."""
    n_rows = max(1, study.eval.loss_tokens // study.seq_len)
    return pack_documents(tokenizer, corpora.documents(corpus, "heldout"), study.seq_len, n_rows, EVAL_SEED)


def generation_problems(study: StudyConfig, n: int) -> list[dict]:
    """Held-out target-domain problems for generation metrics, in a common shape:
    {"task_id", "prompt", "reference"} plus the code problem's fields (test, entry_point) for the sandbox."""
    if n == 0:
        return []
    if study.domain == "code":
        if study.eval.code_problems == "builtin":
            from learnforget.data.code_tasks import code_tasks

            problems = code_tasks("test", n, EVAL_SEED)
        else:
            from learnforget.evaluate.passk import load_problems

            problems = list(load_problems(study.eval.code_problems).values())[:n]
        return [dict(p, reference=p["canonical_solution"]) for p in problems]
    from learnforget.data.math_tasks import math_problems

    shots = math_problems("train", study.eval.fewshot, EVAL_SEED) if study.eval.fewshot else []
    from learnforget.evaluate.math_answers import math_fewshot_prompt

    return [
        {"task_id": f"math/{i}", "prompt": math_fewshot_prompt(p["question"], shots, MATH_TEMPLATE),
         "reference": " " + p["solution"], "answer": p["answer"]}
        for i, p in enumerate(math_problems("test", n, EVAL_SEED))
    ]  # fmt: skip


def evaluation_sets(study: StudyConfig, tokenizer) -> dict:
    """Held-out data of the source domain (forgetting) and the target domain (learning)."""
    sets: dict = {
        "loss": {corpus: heldout_rows(corpus, tokenizer, study) for corpus in (SOURCE_DOMAIN, study.domain)}
    }
    if study.eval.choice_items:
        from learnforget.evaluate.choice import build_choice_items

        texts = [d.text for d in corpora.documents(SOURCE_DOMAIN, "heldout")]
        sets["choice"] = build_choice_items(texts, tokenizer, study.eval.choice_items, seed=EVAL_SEED)
    n_problems = max(
        study.eval.generation_problems, study.eval.reference_problems, study.eval.diversity_prompts
    )
    problems = generation_problems(study, n_problems)
    sets["generation"] = problems[: study.eval.generation_problems]
    sets["reference"] = problems[: study.eval.reference_problems]
    sets["diversity"] = problems[: study.eval.diversity_prompts]
    return sets
