"""What a study trains and evaluates on: the training rows every arm shares, and the held-out sets.

- CPT rows: target-domain documents packed into `seq_len` rows, loss on every token.
- IFT rows: right-padded; labels are -100 on the prompt and the padding, so only assistant turns carry
  loss. A row is one conversation (most often one prompt/response pair) rendered by the study's template
  (templates.py): the tokenizer's chat template when it has one; otherwise the built-in tasks' response
  simply continues the prompt (HumanEval style for code, "Question: …\\nAnswer:" for math), and user
  data gets DEFAULT_TEMPLATE. Training trims each batch to its longest row (train.py); rows grouped by
  length make that trim large.

Training rows depend on the study's seed (data order); evaluation sets use a fixed seed so that every
arm, seed and rerun is measured on the same held-out examples.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import torch

from learnforget.config import StudyConfig
from learnforget.data import corpora
from learnforget.data.formats import Conversation, pair
from learnforget.data.templates import (
    IGNORE_INDEX,
    PLAIN,
    encode_conversation,
    resolve_template,
    special_prefix,
)
from learnforget.data.tokens import pack_documents, pack_texts, packed_stream, shuffled
from learnforget.errors import UserError

EVAL_SEED = 1234
SOURCE_DOMAIN = "english"
LENGTH_GROUP_BATCHES = 50  # rows are sorted by length within groups of this many batches, as in transformers
MATH_TEMPLATE = "Question: {question}\nAnswer:"
CODE_STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]  # HumanEval's stop sequences
MATH_STOP = ["\nQuestion:", "\n\n"]


# ---------------------------------------------------------------------------------------------------
# Training data


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


def study_template(study: StudyConfig, tokenizer) -> str:
    """The template every training and evaluation prompt of the study goes through. CPT trains on raw
    text: its evaluation prompts get the chat template if the tokenizer has one, else none."""
    if study.regime == "cpt":
        return resolve_template(None, tokenizer, builtin_data=True)
    return resolve_template(study.data.prompt_template, tokenizer, study.data.train == "builtin")


def training_conversations(study: StudyConfig) -> Iterator[tuple[str, Conversation]]:
    """(location, conversation) of the training pool, lazily: built-in tasks or the user's data."""
    d = study.data
    if d.train == "builtin":
        pairs = builtin_pairs(study.domain, "train", d.examples, study.seed)
        return ((f"built-in {study.domain} task {n}", pair(p, r)) for n, (p, r) in enumerate(pairs, start=1))
    from learnforget.data.loaders import iter_conversations

    return iter_conversations(
        d.train, fmt=d.format, prompt_field=d.prompt_field, response_field=d.response_field,
        messages_field=d.messages_field, split=d.split, name=d.dataset_name, data_dir=d.data_dir,
        limit=None if d.overlong == "drop" else d.examples,  # dropping reads on until enough are kept
    )  # fmt: skip


Encoded = tuple[list[int], list[int]]  # (input ids, labels)


def training_examples(study: StudyConfig, tokenizer) -> tuple[list[Encoded], int]:
    """``data.examples`` encoded conversations, and how many were longer than seq_len (cut, or dropped
    and replaced by the next records, as ``data.overlong`` says)."""
    n, template, prefix = study.data.examples, study_template(study, tokenizer), special_prefix(tokenizer)
    encoded, overlong = [], 0
    for location, conversation in training_conversations(study):
        try:
            ids, labels, cut = encode_conversation(tokenizer, conversation, template, study.seq_len, prefix)
        except ValueError as error:
            raise UserError(f"{location}: {error}") from None
        overlong += cut
        if cut and study.data.overlong == "drop":
            continue
        encoded.append((ids, labels))
        if len(encoded) == n:
            break
    if len(encoded) < n:
        dropped = f" after dropping {overlong} longer than seq_len={study.seq_len}" if overlong else ""
        raise UserError(
            f"{study.data.train}: has {len(encoded)} conversations{dropped}, fewer than "
            f"data.examples={n}; lower it"
        )
    return encoded, overlong


def encode_pair(tokenizer, prompt: str, response: str, seq_len: int, template: str = PLAIN) -> Encoded:
    """(input ids, labels) of one prompt/response pair (see ``templates.encode_conversation``)."""
    ids, labels, _ = encode_conversation(tokenizer, pair(prompt, response), template, seq_len)
    return ids, labels


def row_order(
    lengths: list[int], n_rows: int, batch_size: int, seed: int, group_by_length: bool
) -> list[int]:
    """Example index of each of ``n_rows`` rows: epoch after epoch, each epoch in its own seeded order.

    With ``group_by_length``, each epoch's order is cut into groups of LENGTH_GROUP_BATCHES batches; a
    group is sorted by length into batches, whose order is then shuffled (seeded): batches of similar
    lengths need little padding, and every epoch is still exactly one pass over the examples.
    """
    rng, group_rng = random.Random(seed), random.Random(f"{seed}-length-groups")
    rows: list[int] = []
    while len(rows) < n_rows:
        order = list(range(len(lengths)))
        rng.shuffle(order)
        if group_by_length:
            size = batch_size * LENGTH_GROUP_BATCHES
            grouped = []
            for start in range(0, len(order), size):
                group = sorted(order[start : start + size], key=lambda i: -lengths[i])
                batches = [group[b : b + batch_size] for b in range(0, len(group), batch_size)]
                group_rng.shuffle(batches)
                grouped += [i for batch in batches for i in batch]
            order = grouped
        rows += order
    return rows[:n_rows]


def ift_rows(
    tokenizer,
    examples: list[Encoded],
    seq_len: int,
    n_rows: int,
    seed: int,
    batch_size: int = 1,
    group_by_length: bool = False,
) -> dict[str, torch.Tensor]:
    """`n_rows` right-padded rows of encoded examples in ``row_order``, with each row's length."""
    order = row_order([len(ids) for ids, _ in examples], n_rows, batch_size, seed, group_by_length)
    ids = torch.full((n_rows, seq_len), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((n_rows, seq_len), IGNORE_INDEX, dtype=torch.long)
    for row, index in enumerate(order):
        x, y = examples[index]
        ids[row, : len(x)] = torch.tensor(x)
        labels[row, : len(y)] = torch.tensor(y)
    lengths = torch.tensor([len(examples[i][0]) for i in order], dtype=torch.int32)
    return {"input_ids": ids, "labels": labels, "lengths": lengths}


def padding_stats(lengths: torch.Tensor, batch_size: int, seq_len: int) -> dict[str, int]:
    """Tokens of the rows: the real ones, and the rows' size padded to seq_len or to each batch's longest."""
    return {
        "real_tokens": int(lengths.sum()),
        "padded_to_seq_len": len(lengths) * seq_len,
        "padded_to_batch_longest": sum(len(b) * int(b.max()) for b in lengths.split(batch_size)),
    }


def trained_tokens(train: dict, steps: int, batch_size: int, seq_len: int) -> int:
    """Tokens trained on in the first ``steps`` steps: real tokens of IFT rows, every token of CPT rows."""
    if "lengths" in train:
        return int(train["lengths"][: steps * batch_size].sum())
    return steps * batch_size * seq_len


def training_rows(study: StudyConfig, tokenizer) -> dict:
    """Exactly steps × batch_size rows, in the study's seeded order (the same for every arm).

    IFT rows come with their ``lengths`` and ``stats`` (real and padding tokens, overlong examples)."""
    n_rows = study.steps * study.batch_size
    if study.regime == "ift":
        examples, overlong = training_examples(study, tokenizer)
        d = study.data
        rows = ift_rows(
            tokenizer, examples, study.seq_len, n_rows, study.seed, study.batch_size, d.group_by_length
        )
        stats = padding_stats(rows["lengths"], study.batch_size, study.seq_len)
        rows["stats"] = {
            "examples": len(examples),
            "overlong": overlong,
            "overlong_policy": d.overlong,
            **stats,
        }
        return rows
    return {"input_ids": cpt_token_rows(study, tokenizer, n_rows)}


def cpt_token_rows(study: StudyConfig, tokenizer, n_rows: int):
    """CPT rows in a cached token file (shards.py), packed on first use: the rows of ``pack_documents``
    in a seeded shuffled order (a batch mixes many files instead of a run of one, which would make
    held-out loss jump with whatever file comes next)."""
    from learnforget.data.shards import TokenRows, shard_key, token_dtype, write_token_file
    from learnforget.model import cache_dir

    d = study.data
    if d.train == "builtin":
        source: dict = {"builtin": study.domain, "corpora": corpora.fingerprint()}
    else:
        source = d.model_dump(
            include={"train", "data_dir", "dataset_name", "split", "text_field", "max_documents"}
        )
        local = Path(d.train).expanduser()
        if local.is_file():  # an edited file is new data
            source["file"] = [local.stat().st_size, local.stat().st_mtime_ns]
    key = shard_key(source, tokenizer, study.seq_len, n_rows, study.seed)
    path = cache_dir() / "tokens" / f"{key}.bin"
    dtype, need = token_dtype(len(tokenizer)), n_rows * study.seq_len
    if not path.exists():
        from learnforget.data.parallel import tokenize_workers, tokenizer_threads

        workers = tokenize_workers(need)  # the same stream whatever the number of processes
        if d.train == "builtin":
            docs = corpora.documents(study.domain, "finetune")
            stream = packed_stream(tokenizer, docs, need, study.seed, workers)
        else:
            stream = pack_texts(tokenizer, user_text_pass(study), need, workers)
        with tokenizer_threads():
            write_token_file(stream, need, dtype, path)
    return TokenRows(str(path), n_rows, study.seq_len, dtype, study.seed)


STREAM_SHUFFLE_BUFFER = 10_000  # user CPT documents are streamed, shuffled within a buffer this large


def user_text_pass(study: StudyConfig):
    """A function giving one pass over the user's CPT documents, streamed in a seeded buffered order."""
    from learnforget.data.loaders import iter_text_records

    d, rng = study.data, random.Random(study.seed)

    def one_pass():
        texts = iter_text_records(d.train, d.text_field, d.split, d.max_documents, d.dataset_name, d.data_dir)
        return shuffled(texts, STREAM_SHUFFLE_BUFFER, rng)

    return one_pass


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
        "loss": {corpus: heldout_rows(corpus, tokenizer, study) for corpus in (SOURCE_DOMAIN, study.domain)},
        "template": study_template(study, tokenizer),  # evaluation prompts are rendered as in training
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


def describe_stats(stats: dict) -> str:
    """One line about an IFT study's training rows: overlong examples and padding."""
    real, full, trimmed = stats["real_tokens"], stats["padded_to_seq_len"], stats["padded_to_batch_longest"]
    action = "truncated" if stats["overlong_policy"] == "truncate" else "dropped"
    return (
        f"IFT data: {stats['examples']:,} examples, {stats['overlong']:,} longer than seq_len ({action}); "
        f"{real:,} real tokens in {full:,} row tokens padded to seq_len, {trimmed:,} computed with batches "
        f"trimmed to their longest row ({100 * (trimmed - real) / max(1, trimmed):.1f}% padding)"
    )
