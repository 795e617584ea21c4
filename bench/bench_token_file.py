"""Peak memory of packing CPT tokens: into a memory-mapped token file (shards.py) vs in memory
(`pack_documents`, what data.pt used to hold), on a synthetic corpus, one process per measurement.

    python bench/bench_token_file.py 5000000 20000000     # token counts; each runs file, then memory

The synthetic documents themselves are held in memory (as the built-in corpora and loaded user text are),
about 4 bytes per token; the bench reports their size next to the peak RSS.
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


def synthetic_documents(n_tokens: int):
    from learnforget.data.corpora import Document

    rng = random.Random(0)
    docs, size = [], 0
    while size < 4 * n_tokens:  # ~4 characters per token with this vocabulary
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(100, 2000))) + "\n"
        docs.append(Document(f"doc{len(docs)}", text))
        size += len(text)
    return docs, size


def measure(method: str, n_tokens: int) -> None:
    from learnforget.data.shards import write_token_file
    from learnforget.data.tokens import pack_documents, train_tokenizer

    docs, size = synthetic_documents(n_tokens)
    tokenizer = train_tokenizer([d.text for d in docs[:200]], 1000)
    seq_len = 1024
    n_rows = n_tokens // seq_len
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if method == "file":
        with tempfile.TemporaryDirectory() as tmp:
            write_token_file(tokenizer, docs, seq_len, n_rows, 0, Path(tmp) / "tokens.bin")
    else:
        pack_documents(tokenizer, docs, seq_len, n_rows, 0)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{method:6s} {n_rows * seq_len:>12,} tokens: peak RSS {peak:,.0f} MB (before packing {baseline:,.0f} MB, "
        f"documents {size / 2**20:,.0f} MB), {n_rows * seq_len / seconds:,.0f} tokens/s",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] in ("file", "memory"):
        measure(sys.argv[1], int(sys.argv[2]))
    else:
        for n in sys.argv[1:]:
            for method in ("file", "memory"):
                subprocess.run([sys.executable, __file__, method, n], check=True)
