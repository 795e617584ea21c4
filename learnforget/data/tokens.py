"""Text to token tensors: the built-in tokenizer, and packing documents into fixed-length sequences.

CPT packs documents end to end (each followed by EOS) and cuts the stream into `seq_len` rows, the
usual continued-pretraining layout; the loss is on every token. Texts become ids in ``encoding.py``; with
several workers, ``parallel.py`` tokenizes the stream in a pool of processes.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from learnforget.data.corpora import Document
from learnforget.data.encoding import BYTES_PER_TOKEN_BOUND, encode_texts, text_batch
from learnforget.data.parallel import parallel_pack_texts, tokenizer_threads

EOS = "<|endoftext|>"
BATCH_BYTES = 4_000_000  # text tokenized per call when packing


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style: any byte sequence is encodable), wrapped for transformers."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, unk_token=EOS
    )


def sample_text(docs: Sequence[Document], max_bytes: int, seed: int) -> list[str]:
    """A seeded sample of whole documents up to about max_bytes (for tokenizer training)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out, size = [], 0
    for i in order:
        if size >= max_bytes:
            break
        text = docs[i].text[: max_bytes - size]
        out.append(text)
        size += len(text)
    return out


def pack_documents(
    tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document], seq_len: int, n_rows: int, seed: int
) -> torch.Tensor:
    """`n_rows` rows of `seq_len` tokens from documents in a seeded order (cycling with a new order if
    the documents run out). Only as many documents are tokenized as needed."""
    stream: list[int] = []
    for ids in packed_stream(tokenizer, docs, n_rows * seq_len, seed):
        stream.extend(ids)
    return torch.tensor(stream, dtype=torch.long).view(n_rows, seq_len)


def sample_packed_rows(
    tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document], seq_len: int, n_rows: int, seed: int
) -> torch.Tensor:
    """`n_rows` rows of `seq_len` tokens drawn at random (seeded, without replacement, in stream order)
    from the packed rows of every document (one pass in a seeded order), so that each token of the
    documents is equally likely to be measured. A split of a few long documents (held-out source files,
    two plays) is then measured across all of them, not on the first one or two the order reaches. With
    fewer packed rows than `n_rows`, `pack_documents`'s rows (every document, then a new order)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    stream: list[int] = []
    with tokenizer_threads():  # the whole split at once: the tokenizer's threads share it out
        encoded = encode_texts(tokenizer, [docs[i].text for i in order])
    for ids in encoded:
        stream.extend(ids)
        stream.append(tokenizer.eos_token_id)  # as pack_texts: each text, then EOS
    available = len(stream) // seq_len
    if available <= n_rows:
        return pack_documents(tokenizer, docs, seq_len, n_rows, seed)
    picked = sorted(random.Random(seed).sample(range(available), n_rows))
    rows = torch.tensor(stream[: available * seq_len], dtype=torch.long).view(available, seq_len)
    return rows[picked]


def packed_stream(
    tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document], need: int, seed: int, workers: int = 1
) -> Iterator[list[int]]:
    """The packed token stream of documents in a seeded order, a new order each pass (see ``pack_texts``)."""
    if not docs:
        raise ValueError("no documents to pack")
    rng = random.Random(seed)

    def one_pass() -> Iterator[str]:
        order = list(range(len(docs)))
        rng.shuffle(order)
        return (docs[i].text for i in order)

    return pack_texts(tokenizer, one_pass, need, workers)


def pack_texts(
    tokenizer: PreTrainedTokenizerFast, one_pass: Callable[[], Iterable[str]], need: int, workers: int = 1
) -> Iterator[list[int]]:
    """The packed token stream in pieces (a text's ids, then EOS), exactly ``need`` tokens in all, over
    as many passes (``one_pass()``) as needed. Only as many texts are tokenized as needed.

    With ``workers`` > 1, batches of texts are tokenized by that many processes (parallel.py); the stream
    is the same, piece boundaries aside."""
    if workers > 1:
        yield from parallel_pack_texts(tokenizer, one_pass, need, workers)
        return
    done = 0
    while done < need:
        texts, before = iter(one_pass()), done
        exhausted = False
        while not exhausted and done < need:
            # Tokenize just enough texts: a few bytes per missing token (whole plays are large), and at
            # most BATCH_BYTES a call so that memory stays flat (the stream is the same whatever the
            # batches: texts in order, each followed by EOS).
            batch, exhausted = text_batch(texts, min(BATCH_BYTES, BYTES_PER_TOKEN_BOUND * (need - done)))
            for ids in encode_texts(tokenizer, batch) if batch else []:
                piece = (ids + [tokenizer.eos_token_id])[: need - done]
                done += len(piece)
                if piece:
                    yield piece
        if done == before:
            raise ValueError("no documents to pack")


def shuffled(items: Iterable, buffer_size: int, rng: random.Random) -> Iterator:
    """``items`` in a seeded order, holding at most ``buffer_size`` of them (a stream cannot be shuffled
    whole): each new item swaps with a random one of the buffer, which comes out."""
    buffer: list = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= buffer_size:
            i = rng.randrange(len(buffer))
            buffer[i], buffer[-1] = buffer[-1], buffer[i]
            yield buffer.pop()
    rng.shuffle(buffer)
    yield from buffer


def interleave(parts: Sequence[torch.Tensor], seed: int) -> torch.Tensor:
    """Rows of several packed tensors in one seeded random order (a pretraining mixture)."""
    rows = torch.cat(list(parts))
    g = torch.Generator().manual_seed(seed)
    return rows[torch.randperm(len(rows), generator=g)]
