"""What a study trains on: the training rows every arm shares, built-in or the user's, cached once encoded.

- CPT rows: target-domain documents packed into `seq_len` rows, loss on every token, in a cached token
  file (shards.py).
- IFT rows: one conversation each (most often one prompt/response pair) rendered by the study's template
  (templates.py): the tokenizer's chat template when it has one; otherwise the built-in tasks' response
  simply continues the prompt (HumanEval style for code, "Question: …\\nAnswer:" for math), and user
  data gets DEFAULT_TEMPLATE. Encoded once into a cached example file (examples.py) and read a step at a
  time, right-padded to the batch's longest row; labels are -100 on the prompt and the padding, so only
  assistant turns carry loss. Rows grouped by length keep that padding small.

Training rows depend on the study's seed (data order). The held-out evaluation sets are built in
`learnforget.evaluate.sets`, with the template (`study_template`) and math prompt format
(`MATH_TEMPLATE`) defined here.
"""

from __future__ import annotations

import random
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import numpy as np

from learnforget.config.study import StudyConfig
from learnforget.data import corpora, parallel
from learnforget.data.code_tasks import code_tasks
from learnforget.data.examples import ExampleRows, example_key, read_meta, rows_before, write_example_file
from learnforget.data.formats import Conversation, pair
from learnforget.data.loaders import iter_conversations, iter_text_records
from learnforget.data.math_tasks import math_problems
from learnforget.data.shards import TokenRows, shard_key, token_dtype, write_token_file
from learnforget.data.templates import (
    PLAIN,
    encode_conversation,
    resolve_template,
    special_prefix,
)
from learnforget.data.tokens import pack_texts, packed_stream, shuffled
from learnforget.errors import UserError
from learnforget.files import cache_dir

MATH_TEMPLATE = "Question: {question}\nAnswer:"


# ---------------------------------------------------------------------------------------------------
# Training data


def builtin_pairs(domain: str, split: str, n: int, seed: int) -> list[tuple[str, str]]:
    """(prompt, response) pairs of the built-in generated tasks."""
    if domain == "code":
        return [(t["prompt"], t["canonical_solution"]) for t in code_tasks(split, n, seed)]
    return [
        (MATH_TEMPLATE.format(question=p["question"]), " " + p["solution"])
        for p in math_problems(split, n, seed)
    ]


def template_setting(study: StudyConfig) -> str | None:
    """``data.prompt_template`` as the study applies it. CPT trains on raw documents (the built-in math
    ones read "Question: …\nAnswer: …"), so its evaluation prompts go as they are ('none') unless the
    setting names a template for them; IFT leaves an unset template to ``resolve_template``."""
    if study.regime == "cpt":
        return study.data.prompt_template or "none"
    return study.data.prompt_template


def study_template(study: StudyConfig, tokenizer) -> str:
    """The template every training and evaluation prompt of the study goes through (CPT: evaluation
    prompts only; its training text is documents)."""
    builtin_prompts = study.regime == "cpt" or study.data.train == "builtin"  # CPT evaluates built-in tasks
    return resolve_template(template_setting(study), tokenizer, builtin_prompts)


def training_conversations(study: StudyConfig) -> Iterator[tuple[str, Conversation]]:
    """(location, conversation) of the training pool, lazily: built-in tasks or the user's data."""
    d = study.data
    if d.train == "builtin":
        pairs = builtin_pairs(study.domain, "train", d.examples, study.seed)
        return ((f"built-in {study.domain} task {n}", pair(p, r)) for n, (p, r) in enumerate(pairs, start=1))
    return iter_conversations(
        d.train, fmt=d.format, prompt_field=d.prompt_field, response_field=d.response_field,
        messages_field=d.messages_field, split=d.split, name=d.dataset_name, data_dir=d.data_dir,
        limit=None if d.overlong == "drop" else d.examples,  # dropping reads on until enough are kept
    )  # fmt: skip


Encoded = tuple[list[int], list[int]]  # (input ids, labels)
ENCODE_BATCH = 256  # conversations tokenized per call


def training_examples(study: StudyConfig, tokenizer, counts: dict | None = None) -> Iterator[Encoded]:
    """Exactly ``data.examples`` encoded conversations, streamed (tokenized in batches, on every core:
    parallel.py); ``counts["overlong"]`` counts those longer than seq_len (cut, or dropped and replaced
    by the next records, as ``data.overlong`` says). Never reads a record that the examples do not need,
    so a malformed record after them is no error."""
    n, template, prefix = study.data.examples, study_template(study, tokenizer), special_prefix(tokenizer)
    drop = study.data.overlong == "drop"
    counts = {} if counts is None else counts
    counts["overlong"] = kept = 0
    records = iter(training_conversations(study))
    workers = parallel.tokenize_workers(n, parallel.PARALLEL_MIN_EXAMPLES)
    with parallel.conversation_encoder(tokenizer, template, study.seq_len, prefix, workers) as submit:
        in_flight: deque = deque()
        reading, exhausted = 0, False  # records in flight: each may become one example
        while kept < n:
            while not exhausted and len(in_flight) < 2 * workers and n - kept - reading > 0:
                want = min(ENCODE_BATCH, n - kept - reading)
                batch = list(islice(records, want))
                exhausted = len(batch) < want
                if batch:
                    in_flight.append((batch, submit([conversation for _, conversation in batch])))
                    reading += len(batch)
            if not in_flight:
                break
            batch, result = in_flight.popleft()
            reading -= len(batch)
            for (location, _), encoded in zip(batch, result(), strict=True):
                if isinstance(encoded, str):
                    raise UserError(f"{location}: {encoded}")
                ids, labels, cut = encoded
                counts["overlong"] += cut
                if cut and drop:
                    continue
                kept += 1
                yield ids, labels
    if kept < n:
        overlong = counts["overlong"]
        dropped = f" after dropping {overlong} longer than seq_len={study.seq_len}" if overlong else ""
        raise UserError(
            f"{study.data.train}: has {kept} conversations{dropped}, fewer than data.examples={n}; lower it"
        )


def encode_pair(tokenizer, prompt: str, response: str, seq_len: int, template: str = PLAIN) -> Encoded:
    """(input ids, labels) of one prompt/response pair (see ``templates.encode_conversation``)."""
    ids, labels, _ = encode_conversation(tokenizer, pair(prompt, response), template, seq_len)
    return ids, labels


def padding_stats(lengths, batch_size: int, seq_len: int, epoch_rows: int | None = None) -> dict[str, int]:
    """Tokens of the rows: the real ones, and the rows' size padded to seq_len or to each batch's longest.
    ``epoch_rows``: exact epochs of that many rows, each ending with its own short batch."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if epoch_rows is not None and len(lengths) > epoch_rows:
        epochs = [padding_stats(lengths[a : a + epoch_rows], batch_size, seq_len)
                  for a in range(0, len(lengths), epoch_rows)]  # fmt: skip
        return {key: sum(e[key] for e in epochs) for key in epochs[0]}
    full = len(lengths) // batch_size * batch_size
    longest = lengths[:full].reshape(-1, batch_size).max(axis=1).sum() * batch_size if full else 0
    if full < len(lengths):
        longest += (len(lengths) - full) * lengths[full:].max()
    return {
        "real_tokens": int(lengths.sum()),
        "padded_to_seq_len": len(lengths) * seq_len,
        "padded_to_batch_longest": int(longest),
    }


def epoch_rows(train: dict) -> int | None:
    """Rows of one exact epoch of these training rows (examples.py), or None: steps of whole batches."""
    return getattr(train.get("rows"), "epoch_rows", None)


def trained_tokens(train: dict, steps: int, batch_size: int, seq_len: int) -> int:
    """Tokens trained on in the first ``steps`` steps: real tokens of IFT rows, every token of CPT rows."""
    if "rows" in train:
        return train["rows"].real_tokens(rows_before(steps, batch_size, epoch_rows(train)))
    if "lengths" in train:  # IFT rows held in a data.pt written before example files
        return int(train["lengths"][: steps * batch_size].sum())
    return steps * batch_size * seq_len


def training_rows(study: StudyConfig, tokenizer) -> dict:
    """Exactly ``study.train_rows`` rows (whole epochs, or steps × batch_size), in the study's seeded
    order (the same for every arm).

    CPT: ``input_ids``, rows of a token file. IFT: ``input_ids`` and ``labels`` of an example file's
    ``rows`` (examples.py), and ``stats`` (real and padding tokens, overlong examples)."""
    n_rows = study.train_rows
    if study.regime == "ift":
        rows = ift_example_rows(study, tokenizer, n_rows)
        meta, d = read_meta(Path(rows.path)), study.data
        stats = padding_stats(rows.lengths(), study.batch_size, study.seq_len, study.epoch_rows)
        return {
            "input_ids": rows.input_ids,
            "labels": rows.labels,
            "rows": rows,
            "stats": {"examples": meta["examples"], "overlong": meta["overlong"], "overlong_policy": d.overlong, **stats},
        }  # fmt: skip
    return {"input_ids": cpt_token_rows(study, tokenizer, n_rows)}


def data_source(study: StudyConfig, fields: set[str]) -> dict:
    """What training reads, for a cache fingerprint: the built-in data's identity, or the data settings
    ``fields`` and, for local files, their sizes and modification times (an edited file is new data)."""
    d = study.data
    if d.train == "builtin":
        return {"builtin": study.domain, "corpora": corpora.fingerprint()}
    source = d.model_dump(include=fields)
    local = Path(d.train).expanduser()
    if local.is_file():
        source["file"] = [local.stat().st_size, local.stat().st_mtime_ns]
    elif local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        source["files"] = [[str(p.relative_to(local)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    return source


IFT_FIELDS = {"train", "data_dir", "dataset_name", "split", "format", "prompt_field", "response_field",
              "messages_field", "examples"}  # fmt: skip


def ift_example_rows(study: StudyConfig, tokenizer, n_rows: int):
    """IFT rows of a cached example file (examples.py), encoded on first use."""
    source = data_source(study, IFT_FIELDS)
    if study.data.train == "builtin":  # the built-in tasks drawn depend on the seed and their number
        source.update(seed=study.seed, examples=study.data.examples)
    template = study_template(study, tokenizer)
    key = example_key(source, tokenizer, template, study.seq_len, study.data.overlong)
    path = cache_dir() / "examples" / key
    if read_meta(path) is None:
        counts: dict = {}
        examples = training_examples(study, tokenizer, counts)
        write_example_file(examples, study.data.examples, token_dtype(len(tokenizer)), path, counts)
    d = study.data
    return ExampleRows(
        str(path), n_rows, study.batch_size, study.seed, d.group_by_length, tokenizer.pad_token_id,
        study.epoch_rows,
    )  # fmt: skip


def cpt_token_rows(study: StudyConfig, tokenizer, n_rows: int):
    """CPT rows in a cached token file (shards.py), packed on first use: the rows of ``pack_documents``
    in a seeded shuffled order (a batch mixes many files instead of a run of one, which would make
    held-out loss jump with whatever file comes next)."""
    d = study.data
    source = data_source(study, {"train", "data_dir", "dataset_name", "split", "text_field", "max_documents"})
    key = shard_key(source, tokenizer, study.seq_len, n_rows, study.seed)
    path = cache_dir() / "tokens" / f"{key}.bin"
    dtype, need = token_dtype(len(tokenizer)), n_rows * study.seq_len
    if not path.exists():
        workers = parallel.tokenize_workers(need)  # the same stream whatever the number of processes
        if d.train == "builtin":
            docs = corpora.documents(study.domain, "finetune")
            stream = packed_stream(tokenizer, docs, need, study.seed, workers)
        else:
            stream = pack_texts(tokenizer, user_text_pass(study), need, workers)
        with parallel.tokenizer_threads():
            write_token_file(stream, need, dtype, path)
    return TokenRows(str(path), n_rows, study.seq_len, dtype, study.seed)


STREAM_SHUFFLE_BUFFER = 10_000  # user CPT documents are streamed, shuffled within a buffer this large


def user_text_pass(study: StudyConfig):
    """A function giving one pass over the user's CPT documents, streamed in a seeded buffered order."""
    d, rng = study.data, random.Random(study.seed)

    warned = []

    def one_pass():
        texts = iter_text_records(d.train, d.text_field, d.split, d.max_documents, d.dataset_name, d.data_dir)
        return shuffled(non_empty(texts, d.train, warned), STREAM_SHUFFLE_BUFFER, rng)

    return one_pass


def non_empty(texts: Iterable[str], source: str, warned: list) -> Iterator[str]:
    """The documents with text: an empty or blank one would train on a bare EOS. Skipped ones are
    counted (one warning, at the end of the first pass); a source with none left is an error."""
    kept = blank = 0
    for text in texts:
        if text.strip():
            kept += 1
            yield text
        else:
            blank += 1
    if not kept:
        raise UserError(f"{source}: all {blank:,} documents are empty or blank; give documents with text")
    if blank and not warned:
        warned.append(blank)
        print(f"warning: {source}: {blank:,} of {blank + kept:,} documents are empty or blank; skipped",
              file=sys.stderr, flush=True)  # fmt: skip


def describe_stats(stats: dict) -> str:
    """One line about an IFT study's training rows: overlong examples and padding."""
    real, full, trimmed = stats["real_tokens"], stats["padded_to_seq_len"], stats["padded_to_batch_longest"]
    action = "truncated" if stats["overlong_policy"] == "truncate" else "dropped"
    return (
        f"IFT data: {stats['examples']:,} examples, {stats['overlong']:,} longer than seq_len ({action}); "
        f"{real:,} real tokens in {full:,} row tokens padded to seq_len, {trimmed:,} computed with batches "
        f"trimmed to their longest row ({100 * (trimmed - real) / max(1, trimmed):.1f}% padding)"
    )
