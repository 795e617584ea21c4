"""Peak memory of packing CPT tokens: streamed into a token file (shards.py, as user data
is) vs in memory (`pack_documents` over a document list, what data.pt used to hold), on a synthetic
corpus, one process per measurement.

    python bench/bench_token_file.py 5000000 20000000        # token counts; each runs file, then memory
    python bench/bench_token_file.py file 200000000          # one measurement

The streamed run generates its documents lazily; the in-memory run holds them (about 4 bytes per token).
"""

from __future__ import annotations

import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "def return self import class for in if else while yield lambda value index result data".split()


def synthetic_texts(n_tokens: int):
    """Documents of random code-like words, ~4 characters per token, a little more than n_tokens."""
    rng = random.Random(0)
    size = 0
    while size < 4 * n_tokens:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 2000))) + "\n"
        size += len(text)
        yield text


def measure(method: str, n_tokens: int) -> None:
    from learnforget.data.corpora import Document
    from learnforget.data.shards import write_token_file
    from learnforget.data.tokens import pack_documents, pack_texts, train_tokenizer

    tokenizer = train_tokenizer([t for _, t in zip(range(200), synthetic_texts(10**6), strict=False)], 1000)
    seq_len = 1024
    n_rows = n_tokens // seq_len
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if method == "file":
        with tempfile.TemporaryDirectory() as tmp:
            stream = pack_texts(tokenizer, lambda: synthetic_texts(n_tokens), n_rows * seq_len)
            write_token_file(stream, n_rows * seq_len, "uint16", Path(tmp) / "tokens.bin")
    else:
        docs = [Document(str(i), t) for i, t in enumerate(synthetic_texts(n_tokens))]
        pack_documents(tokenizer, docs, seq_len, n_rows, 0)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{method:6s} {n_rows * seq_len:>12,} tokens: peak RSS {peak:,.0f} MB (before packing {baseline:,.0f} MB), "
        f"{n_rows * seq_len / seconds:,.0f} tokens/s",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] in ("file", "memory"):
        measure(sys.argv[1], int(sys.argv[2]))
    else:
        for n in sys.argv[1:]:
            for method in ("file", "memory"):
                subprocess.run([sys.executable, __file__, method, n], check=True)
