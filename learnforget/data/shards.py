"""CPT training tokens on disk: packed once into a token file, read a step's rows at a time.

The file holds the packed stream (built-in corpora: that of ``tokens.pack_documents``, so the same rows as
before; user data: documents streamed one at a time, hub datasets in ``datasets``' streaming mode, in a
seeded order shuffled within a buffer), as uint16 when the vocabulary fits, else uint32. It is cached under ``<cache>/tokens/<fingerprint>.bin``,
keyed by the source, the tokenizer, seq_len, the number of rows and the seed, so every arm, process and
later study with the same data shares it, and ``data.pt`` holds only a small descriptor. Training takes
``rows[a:b]`` from a ``TokenRows``: the rows of positions a..b of the seeded row order, as int64, read
from the file on demand; the step stays the data position, so resuming is exact.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def tokenizer_digest(tokenizer) -> str:
    """Hash of the tokenizer's full definition (vocabulary, merges, normalisation, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{text}|eos={tokenizer.eos_token_id}".encode()).hexdigest()[:16]


def shard_key(source: dict, tokenizer, seq_len: int, n_rows: int, seed: int) -> str:
    """Fingerprint of a token file: what was read, how it was tokenized, and how it was packed."""
    spec = json.dumps({"source": source, "tokenizer": tokenizer_digest(tokenizer), "seq_len": seq_len,
                       "rows": n_rows, "seed": seed}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


def write_token_file(pieces: Iterable, n_tokens: int, dtype: str, path: Path) -> Path:
    """Write a packed stream of ``n_tokens`` tokens to ``path`` (a temporary file, then renamed: never half
    a file), showing progress and tokens/s on stderr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    done = 0
    # Plain writes, not a writable memory map: written pages would stay mapped, counted in this process's
    # resident memory as the file grows.
    try:
        with open(tmp, "wb") as out, token_progress(n_tokens) as advance:
            for piece in pieces:
                out.write(np.asarray(piece, dtype=dtype).tobytes())
                done += len(piece)
                advance(done)
        if done != n_tokens:
            raise ValueError(f"{path}: the stream had {done:,} tokens, not {n_tokens:,}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def token_progress(total: int, unit: str = "tokens"):
    """``advance(done, tokens=done)``: ``done`` of ``total`` tokens (or other ``unit``) with tokens/s, as a
    rich progress bar on a terminal, else a log line every ~10%."""
    started = time.perf_counter()

    def rate(tokens: int) -> str:
        return f"{tokens / max(time.perf_counter() - started, 1e-9):,.0f}"

    if sys.stderr.isatty():
        columns = (TextColumn("tokenizing"), BarColumn(), TextColumn(f"{{task.completed:,.0f}}/{{task.total:,.0f}} {unit}"),
                   TextColumn("{task.fields[rate]} tokens/s"), TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("tokenizing", total=total, rate="–")

            shown = [0]

            def advance(done: int, tokens: int | None = None) -> None:
                if done - shown[0] >= total // 1000 or done == total:  # at most ~1000 redraws
                    shown[0] = done
                    progress.update(task, completed=done, rate=rate(done if tokens is None else tokens))

            yield advance
        return
    step, next_report = max(1, total // 10), [max(1, total // 10)]

    def advance(done: int, tokens: int | None = None) -> None:
        if done >= next_report[0] or done == total:
            next_report[0] = (done // step + 1) * step
            print(f"tokenizing: {done:,}/{total:,} {unit} ({100 * done // total}%), "
                  f"{rate(done if tokens is None else tokens)} tokens/s", file=sys.stderr, flush=True)  # fmt: skip

    yield advance


class TokenRows:
    """``n_rows`` rows of ``seq_len`` tokens of a token file, in a seeded order; ``rows[a:b]`` reads those.

    Each row is read with a plain read, not through a memory map: pages of a map stay mapped once read,
    so a long run's resident memory would grow to the whole file; read rows only pass through the page
    cache, which the kernel reclaims."""

    def __init__(self, path: str, n_rows: int, seq_len: int, dtype: str, seed: int):
        self.path, self.n_rows, self.seq_len, self.dtype, self.seed = path, n_rows, seq_len, dtype, seed
        # Whole files are packed one after another; the shuffled order makes a batch a mix of many files.
        self._order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed)).numpy()

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, index) -> torch.Tensor:
        picked = np.atleast_1d(self._order[index])
        rows = np.empty((len(picked), self.seq_len), dtype=self.dtype)
        row_bytes = rows.itemsize * self.seq_len
        with open(self.path, "rb") as f:
            for out, row in zip(rows, picked, strict=True):
                f.seek(int(row) * row_bytes)
                if f.readinto(out) != row_bytes:
                    raise ValueError(f"{self.path}: shorter than {self.n_rows} rows of {self.seq_len} tokens")
        return torch.from_numpy(rows.astype(np.int64))
