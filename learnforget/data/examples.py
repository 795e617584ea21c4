"""IFT training examples on disk: encoded once into an example file, read a step's rows at a time.

An example file is a directory ``<cache>/examples/<fingerprint>/``:

- ``tokens.bin``: every example's token ids end to end, uint16 when the vocabulary fits, else uint32;
- ``loss.bin``: one byte a token, 1 where it carries loss (assistant turns), else 0 (the labels are the
  token ids there, -100 elsewhere: what ``templates.encode_conversation`` gives);
- ``offsets.bin``: int64, example i is tokens ``offsets[i]:offsets[i + 1]``;
- ``meta.json``: the number of examples and of overlong ones.

The fingerprint covers what was read, the tokenizer, the template, seq_len and the overlong policy, so
every arm, process and later study with the same data shares the file, and ``data.pt`` holds only a
small descriptor (``ExampleRows``). The row order (epochs of seeded shuffles, grouped by length) is
computed from the stored lengths alone; ``rows.input_ids[a:b]`` and ``rows.labels[a:b]`` read the rows at
positions a..b from the file, padded to the longest of them. The step stays the data position, so
resuming is exact: ``step_rows`` gives a step's positions. With exact epochs (``epoch_rows``), the last
step of each epoch takes only the rows left over, so every epoch is exactly one pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from array import array
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from learnforget.data.shards import token_progress, tokenizer_digest
from learnforget.data.templates import IGNORE_INDEX

LENGTH_GROUP_BATCHES = 50  # rows are sorted by length within groups of this many batches, as in transformers
FILES = ("tokens.bin", "loss.bin", "offsets.bin", "meta.json")


def example_key(source: dict, tokenizer, template: str, seq_len: int, overlong: str) -> str:
    """Fingerprint of an example file: what was read, how it was rendered and tokenized, and cut."""
    chat = getattr(tokenizer, "chat_template", None) if template == "chat" else None
    if chat:  # responses lose their separating space under a chat template (templates.chat_response)
        chat = {"template": chat, "response": "no separating space"}
    spec = json.dumps({"source": source, "tokenizer": tokenizer_digest(tokenizer), "template": template,
                       "chat_template": chat, "seq_len": seq_len, "overlong": overlong}, sort_keys=True)  # fmt: skip
    return hashlib.sha256(spec.encode()).hexdigest()[:20]


def write_example_file(examples: Iterable, n_examples: int, dtype: str, path: Path, counts: dict) -> dict:
    """Write ``n_examples`` encoded examples ((ids, labels) pairs, streamed) to the directory ``path``
    (a temporary directory, then renamed: never half a file), showing progress and tokens/s on stderr.
    ``counts`` is filled by the examples' producer (``overlong``); returns the file's meta."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    offsets = array("q", [0])  # 8 bytes an example, not a list of every example
    try:
        with (
            open(tmp / "tokens.bin", "wb") as tokens,
            open(tmp / "loss.bin", "wb") as loss,
            token_progress(n_examples, "examples") as advance,
        ):
            for ids, labels in examples:
                tokens.write(np.asarray(ids, dtype=dtype).tobytes())
                loss.write((np.asarray(labels) != IGNORE_INDEX).astype(np.uint8).tobytes())
                offsets.append(offsets[-1] + len(ids))
                advance(len(offsets) - 1, offsets[-1])
        if len(offsets) - 1 != n_examples:
            raise ValueError(f"{path}: {len(offsets) - 1:,} examples were written, not {n_examples:,}")
        np.frombuffer(offsets, dtype=np.int64).tofile(tmp / "offsets.bin")
        meta = {"examples": n_examples, "tokens": offsets[-1], "dtype": dtype, **counts}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, path)
        except OSError:  # another process wrote the same file meanwhile: keep theirs
            if not (path / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def read_meta(path: Path) -> dict | None:
    """The meta of a complete example file, else None."""
    try:
        return json.loads((Path(path) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def rows_before(step: int, batch_size: int, epoch_rows: int | None = None) -> int:
    """Rows taken by the first ``step`` steps: ``step`` full batches, or with exact epochs of
    ``epoch_rows`` rows, whole epochs plus full batches of the current one (its last step is short)."""
    if epoch_rows is None:
        return step * batch_size
    per_epoch = -(-epoch_rows // batch_size)
    return step // per_epoch * epoch_rows + min(step % per_epoch * batch_size, epoch_rows)


def step_rows(step: int, batch_size: int, epoch_rows: int | None = None) -> tuple[int, int]:
    """Row positions (start, stop) of one step."""
    return rows_before(step, batch_size, epoch_rows), rows_before(step + 1, batch_size, epoch_rows)


def row_order(
    lengths, n_rows: int, batch_size: int, seed: int, group_by_length: bool, short_batch_last: bool = False
) -> np.ndarray:
    """Example index of each of ``n_rows`` rows: epoch after epoch, each epoch in its own seeded order.

    With ``group_by_length``, each epoch's order is cut into groups of LENGTH_GROUP_BATCHES batches; a
    group is sorted by length into batches, whose order is then shuffled (seeded): batches of similar
    lengths need little padding, and every epoch is still exactly one pass over the examples.
    ``short_batch_last`` (exact epochs): a group's short batch (the epoch's last group, when the
    examples are no multiple of the batch) stays at its end, so it is the epoch's short last step.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    rng, group_rng = random.Random(seed), random.Random(f"{seed}-length-groups")
    rows = np.empty(n_rows, dtype=np.int64)
    filled, size = 0, batch_size * LENGTH_GROUP_BATCHES
    while filled < n_rows:
        shuffled = list(range(len(lengths)))
        rng.shuffle(shuffled)
        order = np.array(shuffled, dtype=np.int64)
        if group_by_length:
            for start in range(0, len(order), size):
                group = order[start : start + size]
                group = group[np.argsort(-lengths[group], kind="stable")]  # longest first, ties in order
                full = len(group) // batch_size if short_batch_last else -(-len(group) // batch_size)
                batches = list(range(full))
                group_rng.shuffle(batches)
                batches += list(range(full, -(-len(group) // batch_size)))
                order[start : start + size] = np.concatenate(
                    [group[b * batch_size : (b + 1) * batch_size] for b in batches]
                )
        take = min(len(order), n_rows - filled)
        rows[filled : filled + take] = order[:take]
        filled += take
    return rows


class ExampleRows:
    """``n_rows`` training rows of an example file in ``row_order``: ``input_ids[a:b]`` and ``labels[a:b]``
    are the rows at positions a..b, right-padded to the longest of them (labels -100 on padding).
    ``epoch_rows``: exact epochs of that many rows (``step_rows``); None, steps of whole batches.

    Rows are read with plain reads, not a memory map (see ``shards.TokenRows``): resident memory holds the
    offsets (8 bytes an example) and the row order (8 bytes a row), not the tokens."""

    def __init__(
        self, path: str, n_rows: int, batch_size: int, seed: int, group_by_length: bool, pad_id: int,
        epoch_rows: int | None = None,
    ):  # fmt: skip
        self.path, self.n_rows, self.batch_size, self.seed = path, n_rows, batch_size, seed
        self.group_by_length, self.pad_id, self.epoch_rows = group_by_length, pad_id, epoch_rows
        self.dtype = read_meta(Path(path))["dtype"]
        self._cache: dict = {}

    def __getstate__(self) -> dict:  # data.pt holds the descriptor; each process recomputes the order
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict) -> None:  # descriptors saved before exact epochs had none
        self.__dict__.update({"epoch_rows": None, **state}, _cache={})

    def __len__(self) -> int:
        return self.n_rows

    @property
    def offsets(self) -> np.ndarray:
        if "offsets" not in self._cache:
            self._cache["offsets"] = np.fromfile(Path(self.path) / "offsets.bin", dtype=np.int64)
        return self._cache["offsets"]

    @property
    def order(self) -> np.ndarray:
        if "order" not in self._cache:
            lengths = np.diff(self.offsets)
            self._cache["order"] = row_order(
                lengths, self.n_rows, self.batch_size, self.seed, self.group_by_length,
                short_batch_last=self.epoch_rows is not None,
            )  # fmt: skip
        return self._cache["order"]

    def lengths(self) -> np.ndarray:
        """Real tokens of each row, in row order."""
        return np.diff(self.offsets)[self.order]

    def real_tokens(self, n_rows: int) -> int:
        """Tokens of the first ``n_rows`` rows, padding not counted."""
        offsets, picked = self.offsets, self.order[:n_rows]
        return int((offsets[picked + 1] - offsets[picked]).sum())

    @property
    def input_ids(self) -> RowColumn:
        return RowColumn(self, 0)

    @property
    def labels(self) -> RowColumn:
        return RowColumn(self, 1)

    def rows(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input ids, labels) of the rows at positions start..stop; the last rows read are kept, as a step
        reads its input ids and then its labels."""
        if self._cache.get("rows", (None,))[0] != (start, stop):
            self._cache["rows"] = ((start, stop), self._read(self.order[start:stop]))
        return self._cache["rows"][1]

    def _read(self, picked: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        offsets = self.offsets
        starts, ends = offsets[picked], offsets[picked + 1]
        width = int((ends - starts).max()) if len(picked) else 0
        ids = np.full((len(picked), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(picked), width), IGNORE_INDEX, dtype=np.int64)
        itemsize = np.dtype(self.dtype).itemsize
        folder = Path(self.path)
        with open(folder / "tokens.bin", "rb") as tokens, open(folder / "loss.bin", "rb") as loss:
            for row, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
                n = end - start
                tokens.seek(start * itemsize)
                row_ids = np.frombuffer(tokens.read(n * itemsize), dtype=self.dtype).astype(np.int64)
                loss.seek(start)
                mask = np.frombuffer(loss.read(n), dtype=np.uint8).astype(bool)
                if len(row_ids) != n or len(mask) != n:
                    raise ValueError(f"{self.path}: shorter than its offsets say (damaged example file)")
                ids[row, :n] = row_ids
                labels[row, :n] = np.where(mask, row_ids, IGNORE_INDEX)
        return torch.from_numpy(ids), torch.from_numpy(labels)


class RowColumn:
    """The input ids or the labels of ``ExampleRows``, sliced like a tensor of rows: ``column[a:b]``."""

    def __init__(self, rows: ExampleRows, which: int):
        self.source, self.which = rows, which

    @property
    def path(self) -> str:
        return self.source.path

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError("example rows are read by position ranges: rows[a:b]")
        start, stop, _ = index.indices(len(self.source))
        return self.source.rows(start, max(start, stop))[self.which]
