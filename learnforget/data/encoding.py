"""Texts to token ids, shared by one-process packing (``tokens.py``) and the process pool (``parallel.py``).

Long texts are encoded in pieces cut where a byte-level BPE splits anyway (``text_pieces``), so that the
ids are the same as the whole text's; ``text_batch`` takes the next texts up to a size, which packing
uses to tokenize only about as much text as the missing tokens need.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

BYTES_PER_TOKEN_BOUND = 6  # BPE tokens average 3-4 bytes: 6 bytes per needed token over-covers it
# Longer texts are encoded in pieces of at most this many characters: fast tokenizers take time
# superlinear in the length of one string (a 35 MB JSON line took minutes), pieces take linear time.
LONG_TEXT_CHARS = 100_000

# Searched in reversed text (the match's first character is the last one of the three).
_LONE_NEWLINE = re.compile(r"\S\n\S")
_LONE_SPACE = re.compile(r"\S \S")


def text_pieces(text: str, limit: int = LONG_TEXT_CHARS) -> list[str]:
    """`text` cut into pieces of at most `limit` characters where a byte-level BPE's pre-tokenizer splits
    anyway, so that the pieces' ids joined are the text's: after a lone newline between non-spaces, else
    before a lone space between non-spaces (the space starts the next word's token), else (no such
    place in the second half of a piece) at the limit."""
    pieces, start = [], 0
    while len(text) - start > limit:
        window = text[start + limit // 2 : start + limit + 1]  # a cut at i keeps window[i - 1] and window[i]
        newline = _LONE_NEWLINE.search(window[::-1])  # reversed: the last one first
        space = None if newline else _LONE_SPACE.search(window[::-1])
        if newline:  # the piece ends with the newline
            cut = start + limit // 2 + len(window) - newline.start() - 1
        elif space:  # the next piece starts with the space
            cut = start + limit // 2 + len(window) - space.start() - 2
        else:
            cut = start + limit
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The ids of each text (no special tokens), long texts encoded in pieces (`text_pieces`)."""
    if all(len(t) <= LONG_TEXT_CHARS for t in texts):
        return tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    owners, pieces = [], []
    for i, text in enumerate(texts):
        for piece in text_pieces(text):
            owners.append(i)
            pieces.append(piece)
    encoded: list[list[int]] = [[] for _ in texts]
    for owner, ids in zip(owners, tokenizer(pieces, add_special_tokens=False)["input_ids"], strict=True):
        encoded[owner].extend(ids)
    return encoded


def text_batch(texts: Iterator[str], max_bytes: int) -> tuple[list[str], bool]:
    """The next texts up to about ``max_bytes`` characters, and whether ``texts`` ran out."""
    batch, size = [], 0
    while size < max_bytes:
        text = next(texts, None)
        if text is None:
            return batch, True
        batch.append(text)
        size += len(text)
    return batch, False
