"""What a study trains and evaluates on: the training rows every arm shares, and the held-out sets.

Training rows depend on the study's seed (data order); evaluation sets use a fixed seed so that every
arm, seed and rerun is measured on the same held-out examples.
"""

from __future__ import annotations

import torch

from learnforget.config import StudyConfig
from learnforget.data import corpora
from learnforget.data.corpora import Document
from learnforget.data.tokens import pack_documents

EVAL_SEED = 1234
SOURCE_DOMAIN = "english"


def finetune_documents(study: StudyConfig) -> list[Document]:
    """CPT documents of the target domain: built-in finetuning split, or the user's data."""
    if study.data.train == "builtin":
        return corpora.documents(study.domain, "finetune")
    from learnforget.data.loaders import load_text_records

    texts = load_text_records(study.data.train, text_field=study.data.text_field, split=study.data.split)
    return [Document(f"{study.data.train}:{i}", t) for i, t in enumerate(texts)]


def training_rows(study: StudyConfig, tokenizer) -> dict[str, torch.Tensor]:
    """Exactly steps × batch_size rows, in the study's seeded order (the same for every arm)."""
    rows = pack_documents(
        tokenizer, finetune_documents(study), study.seq_len, study.steps * study.batch_size, study.seed
    )
    return {"input_ids": rows}


def heldout_rows(corpus: str, tokenizer, study: StudyConfig) -> torch.Tensor:
    """Packed held-out rows of a built-in corpus for loss metrics."""
    n_rows = max(1, study.eval.loss_tokens // study.seq_len)
    return pack_documents(tokenizer, corpora.documents(corpus, "heldout"), study.seq_len, n_rows, EVAL_SEED)


def evaluation_sets(study: StudyConfig, tokenizer) -> dict:
    """Held-out data of the source domain (forgetting) and the target domain (learning)."""
    return {
        "loss": {corpus: heldout_rows(corpus, tokenizer, study) for corpus in (SOURCE_DOMAIN, study.domain)}
    }
