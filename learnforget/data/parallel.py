"""Tokenizing on every core, the result unchanged token for token: CPT text packed into a stream, and
IFT conversations encoded in batches (``conversation_encoder``).

Two ways: the fast tokenizer's own (Rust) threads, which the CLI turns off elsewhere
(TOKENIZERS_PARALLELISM=false) and packing turns back on; or a pool of processes, each tokenizing batches
of texts and returning a batch as one array (its texts' ids, each followed by EOS), read back in order.
The threads leave the ids' conversion to Python lists on one core; processes spread that too but pay for
the texts' and ids' transfer. On this project's 2 shared, fully loaded cores neither gained reliably
(bench/bench_cpt_stream.py speed, two runs: threads 1.14x and 0.86x one process, 2 processes 0.91x and
0.78x), so below POOL_MIN_CORES cores one process packs with the threads on (free when cores are idle);
the pool is for many-core machines, where one core would cap the threads (not measured here).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import chain
from multiprocessing import get_context

import numpy as np

from learnforget.data.encoding import BYTES_PER_TOKEN_BOUND, encode_texts, text_batch
from learnforget.data.templates import encode_conversations

PARALLEL_BATCH_BYTES = 1_000_000  # text a worker tokenizes per task
PARALLEL_MIN_TOKENS = 5_000_000  # below this, starting a pool costs more than it saves
PARALLEL_MIN_EXAMPLES = 20_000  # the same for IFT examples (a few hundred tokens each)
POOL_MIN_CORES = 8
MAX_WORKERS = 16

_tokenizer = None
_encoding: tuple = ()  # a worker's (template, seq_len, prefix) for IFT conversations


def tokenize_workers(need: int, minimum: int = PARALLEL_MIN_TOKENS) -> int:
    """Processes to tokenize ``need`` tokens (or examples, with ``minimum`` PARALLEL_MIN_EXAMPLES) with:
    one (and the tokenizer's threads) for small jobs and few cores, else the cores this process may use."""
    cores = len(os.sched_getaffinity(0))
    if need < minimum or cores < POOL_MIN_CORES:
        return 1
    return min(cores, MAX_WORKERS)


@contextmanager
def tokenizer_threads():
    """The fast tokenizer's own threads on while packing in this process, the setting restored after."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def _start(tokenizer) -> None:
    global _tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread a process: the processes are the parallelism
    _tokenizer = tokenizer


@contextmanager
def _worker_pool(workers: int, initializer: Callable, initargs: tuple):
    """``submit(function, batch)`` -> its AsyncResult, run by a pool of ``workers`` forked processes (fork:
    they start at once with the tokenizer in memory; spawn would re-import transformers).

    Before the pool is shut down, every batch submitted has finished, also when the caller stops early.
    Pool.terminate (leaving ``with Pool()``) can otherwise hang for good: its task thread may be pickling
    a batch when the pool drains the workers' pipe and locks the workers out of it, and then blocks
    writing that batch into the full pipe, which nobody reads any more. Seen once in the test suite."""
    in_flight: deque = deque()
    with get_context("fork").Pool(workers, initializer=initializer, initargs=initargs) as pool:

        def submit(function: Callable, batch):
            while in_flight and in_flight[0].ready():  # results come back about in order
                in_flight.popleft()
            in_flight.append(pool.apply_async(function, (batch,)))
            return in_flight[-1]

        try:
            yield submit
        finally:
            for result in in_flight:
                result.wait()


def _encode(batch: list[str]) -> np.ndarray:
    ids = encode_texts(_tokenizer, batch)
    eos = [_tokenizer.eos_token_id]
    count = sum(len(x) for x in ids) + len(ids)
    return np.fromiter(chain.from_iterable(x + eos for x in ids), dtype=np.uint32, count=count)


def parallel_pack_texts(
    tokenizer, one_pass: Callable[[], Iterable[str]], need: int, workers: int
) -> Iterator[np.ndarray]:
    """``pack_texts``' stream (exactly ``need`` tokens over as many passes as needed), tokenized by
    ``workers`` processes: two batches a worker in flight, never much more text than the missing tokens
    need, so memory stays flat and the last pass reads about what one process would."""
    with _worker_pool(workers, _start, (tokenizer,)) as submit:
        done = 0
        while done < need:
            texts, before, exhausted = iter(one_pass()), done, False
            pending: deque = deque()
            ahead = 0  # characters in flight
            while done < need:
                while not exhausted and len(pending) < 2 * workers:
                    room = BYTES_PER_TOKEN_BOUND * (need - done) - ahead
                    if room <= 0:
                        break
                    batch, exhausted = text_batch(texts, min(PARALLEL_BATCH_BYTES, room))
                    if batch:
                        size = sum(map(len, batch))
                        pending.append((submit(_encode, batch), size))
                        ahead += size
                if not pending:
                    break
                result, size = pending.popleft()
                ahead -= size
                piece = result.get()[: need - done]
                done += len(piece)
                if len(piece):
                    yield piece
            if done == before:
                raise ValueError("no documents to pack")


def _start_conversations(tokenizer, template: str, seq_len: int, prefix: list[int]) -> None:
    global _encoding
    _start(tokenizer)
    _encoding = (template, seq_len, prefix)


def _encode_conversations(conversations: list) -> list:
    return encode_conversations(_tokenizer, conversations, *_encoding)


@contextmanager
def conversation_encoder(tokenizer, template: str, seq_len: int, prefix: list[int], workers: int):
    """``submit(conversations)``, giving a function that returns their ``encode_conversations``: computed
    at once in this process with the tokenizer's threads on (one worker), else by a pool of ``workers``
    processes, so that several batches can be in flight and are read back in order."""
    if workers <= 1:

        def submit(batch: list):
            done = encode_conversations(tokenizer, batch, template, seq_len, prefix)
            return lambda: done

        with tokenizer_threads():
            yield submit
        return
    with _worker_pool(workers, _start_conversations, (tokenizer, template, seq_len, prefix)) as submit:
        yield lambda batch: submit(_encode_conversations, batch).get
