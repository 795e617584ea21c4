"""Streaming CPT at scale: tokenize a large corpus into a token file, then train a few steps reading it;
peak resident memory per process, and tokenizing speed against the alternatives.

    python bench/bench_cpt_stream.py memory 50000000 200000000   # one process per size: RSS stays flat
    BENCH_WORKERS=2 python bench/bench_cpt_stream.py memory 50000000   # with a pool of 2 processes
    python bench/bench_cpt_stream.py speed 5000000                # tokens/s: 1 process, Rust threads,
                                                                  # a pool, and a plain datasets.map

The corpus is the built-in code corpus (~7 MB) streamed pass after pass in a new seeded order each pass,
so any size can be asked for without holding it; the tokenizer is byte-level BPE trained on it.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEQ_LEN, BATCH, STEPS = 512, 8, 5


def corpus_pass(seed: int = 0):
    from learnforget.data.corpora import documents

    docs, rng = [d.text for d in documents("code", "finetune")], random.Random(seed)

    def one_pass():  # several passes' worth of documents, reshuffled each pass
        for _ in range(1000):
            order = list(range(len(docs)))
            rng.shuffle(order)
            yield from (docs[i] for i in order)

    return one_pass


def bench_tokenizer(sample_bytes: int = 2_000_000, vocab_size: int = 4000):
    from learnforget.data.corpora import documents
    from learnforget.data.tokens import sample_text, train_tokenizer

    return train_tokenizer(sample_text(documents("code", "finetune"), sample_bytes, 0), vocab_size)


def peak_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest child (the tokenizing workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def pack_to_file(tokenizer, n_tokens: int, workers: int, path: Path) -> float:
    """Tokenize ``n_tokens`` into a token file; tokens/s."""
    from learnforget.data.shards import write_token_file
    from learnforget.data.tokens import pack_texts

    started = time.perf_counter()
    write_token_file(pack_texts(tokenizer, corpus_pass(), n_tokens, workers), n_tokens, "uint16", path)
    return n_tokens / (time.perf_counter() - started)


def memory(n_tokens: int) -> None:
    """Tokenize ``n_tokens`` with every core, then train STEPS steps of a tiny Llama on rows of the file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from learnforget.data.parallel import tokenize_workers, tokenizer_threads
    from learnforget.data.shards import TokenRows

    tokenizer = bench_tokenizer()
    n_rows = n_tokens // SEQ_LEN
    workers = int(os.environ.get("BENCH_WORKERS", 0)) or tokenize_workers(n_rows * SEQ_LEN)
    before, _ = peak_mb()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "tokens.bin"
        with tokenizer_threads():  # as a study packs (a pool's workers turn the threads off)
            rate = pack_to_file(tokenizer, n_rows * SEQ_LEN, workers, path)
        after_packing, worker_peak = peak_mb()
        rows = TokenRows(str(path), n_rows, SEQ_LEN, "uint16", 0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN)  # fmt: skip
        model = LlamaForCausalLM(config)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses = []
        for step in range(STEPS):  # the rows of a step far into the file, as a late step would read them
            batch = rows[n_rows - (step + 1) * BATCH : n_rows - step * BATCH]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        size_mb = path.stat().st_size / 2**20
    own, _ = peak_mb()
    pool = f", largest tokenizing worker {worker_peak:,.0f} MB" if workers > 1 else ""
    print(
        f"{n_rows * SEQ_LEN:>12,} tokens, {workers} tokenizing process(es), {rate:,.0f} tokens/s, file "
        f"{size_mb:,.0f} MB; peak RSS: main {own:,.0f} MB (before packing {before:,.0f}, after packing "
        f"{after_packing:,.0f}){pool}; {STEPS} steps, loss {losses[0]:.2f} -> {losses[-1]:.2f}",
        flush=True,
    )


def datasets_map_rate(tokenizer, n_tokens: int) -> float:
    """Baseline: a plain ``datasets`` pipeline (Dataset.from_generator, map(batched=True)) over the same
    texts; tokens/s of tokenizing them into its Arrow cache."""
    from datasets import Dataset

    chars = 4 * n_tokens  # about the text the token file's n_tokens take

    def texts():
        size = 0
        for text in corpus_pass()():
            if size >= chars:
                return
            size += len(text)
            yield {"text": text}

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        started = time.perf_counter()
        data = Dataset.from_generator(texts, cache_dir=tmp)
        data = data.map(lambda b: tokenizer(b["text"], add_special_tokens=False), batched=True,
                        remove_columns=["text"], cache_file_name=f"{tmp}/tok.arrow")  # fmt: skip
        tokens = sum(len(x) for x in data["input_ids"])
        return tokens / (time.perf_counter() - started)


def speed(n_tokens: int) -> None:
    """tokens/s of tokenizing + writing the token file, per way of using the cores, and the baseline."""
    import transformers

    transformers.logging.set_verbosity_error()
    tokenizer = bench_tokenizer()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        single = pack_to_file(tokenizer, n_tokens, 1, Path(tmp) / "a.bin")
        pool = pack_to_file(tokenizer, n_tokens, cores, Path(tmp) / "b.bin")
        same = Path(tmp, "a.bin").read_bytes() == Path(tmp, "b.bin").read_bytes()
        os.environ["TOKENIZERS_PARALLELISM"] = "true"
        threads = pack_to_file(tokenizer, n_tokens, 1, Path(tmp) / "c.bin")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    baseline = datasets_map_rate(tokenizer, n_tokens)
    print(
        f"{n_tokens:,} tokens, {cores} cores, token file written: 1 process {single:,.0f} tokens/s; "
        f"tokenizer threads {threads:,.0f} ({threads / single:.2f}x); {cores} processes {pool:,.0f} "
        f"({pool / single:.2f}x, same file: {same}). Plain datasets.map (1 process, Arrow cache): "
        f"{baseline:,.0f} tokens/s; token file / datasets.map: {single / baseline:.2f}x (1 process), "
        f"{threads / baseline:.2f}x (threads), {pool / baseline:.2f}x ({cores} processes)",
        flush=True,
    )


def quiet(fn, *args):
    """fn(*args) without its progress lines on stderr."""
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        return fn(*args)


def run(quick: bool = False) -> list:
    """`python -m bench`'s row: tokenizing + writing the token file (1 process, as the tokenizer threads
    are off) vs the plain datasets.map pipeline, alternating (1M tokens, 3 repeats; quick: 20k, 1)."""
    import datasets

    from bench.common import Row, alternate

    datasets.disable_progress_bars()
    n_tokens, repeats = (20_000, 1) if quick else (1_000_000, 3)
    tokenizer = bench_tokenizer(200_000, 1000) if quick else bench_tokenizer()
    parallelism = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            ours, theirs, _, _ = alternate(
                lambda: n_tokens / quiet(pack_to_file, tokenizer, n_tokens, 1, Path(tmp) / "tokens.bin"),
                lambda: n_tokens / datasets_map_rate(tokenizer, n_tokens),  # seconds for n_tokens at its rate
                repeats,
                self_timed=True,
            )
    finally:
        if parallelism is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = parallelism
    note = (
        f"{n_tokens:,} tokens of the built-in code corpus, 1 process, byte-level BPE {len(tokenizer)} tokens"
    )
    return [Row("tokenising + token file", ours, theirs, "datasets.map", note=note)]


if __name__ == "__main__":
    mode, sizes = sys.argv[1], [int(n) for n in sys.argv[2:]]
    if mode == "speed":
        speed(sizes[0])
    elif mode == "one":
        memory(sizes[0])
    else:  # one fresh process per size, so each peak is its own
        for n in sizes:
            subprocess.run([sys.executable, __file__, "one", str(n)], check=True)
