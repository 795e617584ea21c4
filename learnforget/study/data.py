"""The data every arm of a study shares, prepared once and saved in the study (`data.pt`)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from learnforget.base.load import load_tokenizer
from learnforget.config.study import StudyConfig
from learnforget.data.datasets import describe_stats, training_rows
from learnforget.data.examples import read_meta
from learnforget.errors import UserError, warn
from learnforget.evaluate.sets import evaluation_sets
from learnforget.files import atomic_save
from learnforget.study.checkpoints import recorder, verified_load
from learnforget.study.store import Store

DATA_FILE = "data.pt"
EVAL_DIGEST = "eval_digest"  # store info: content digest of the evaluation sets (check_same_evaluation)


def prepare_data(study: StudyConfig, study_dir: Path, base_path: str) -> dict:
    """Training rows and evaluation sets, built once per study and saved in it (`data.pt`; training rows
    stay in a cached token file (CPT, data/shards.py) or example file (IFT, data/examples.py) that it
    names)."""
    path = study_dir / DATA_FILE

    store = Store(study_dir)
    if path.exists():
        data, problem = verified_load(store, study_dir, path)
        if problem is None:
            rows = data["train"]["input_ids"]
            if not isinstance(rows, torch.Tensor) and not training_file_present(rows.path):  # cache cleared
                data["train"] = training_rows(study, load_tokenizer(base_path))
            return data
        warn(f"{path}: {problem}; rebuilding it")

    tokenizer = load_tokenizer(base_path)
    data = {"train": training_rows(study, tokenizer), "eval": evaluation_sets(study, tokenizer)}
    check_same_evaluation(store, data["eval"])
    atomic_save(data, path, recorder(store, study_dir, path))
    if "stats" in data["train"]:  # IFT: padding and overlong examples, for the log and summary.md
        store.set_info("data_stats", data["train"]["stats"])
        print(describe_stats(data["train"]["stats"]), file=sys.stderr, flush=True)
    return data


def check_same_evaluation(store: Store, eval_sets: dict) -> None:
    """Record the digest of a study's evaluation sets, and refuse a rebuilt data.pt (damaged or lost) whose
    sets differ from those its stored milestones were measured on (as when another learnforget version
    builds them otherwise): new milestones would not be comparable with the old."""
    digest = content_digest(eval_sets)
    recorded = store.info(EVAL_DIGEST)
    if recorded not in (None, digest) and store.metrics():
        raise UserError(
            f"{store.study_dir}: {DATA_FILE} was rebuilt with other evaluation sets than the stored milestones "
            "were measured on (a different learnforget version?); rerun it with that version, or use another --out"
        )
    store.set_info(EVAL_DIGEST, digest)


def content_digest(value) -> str:
    """sha256 of nested dicts, lists, tensors and plain values (order of dict keys ignored)."""
    text = json.dumps(value, sort_keys=True, default=lambda t: [str(t.dtype), t.tolist()])
    return hashlib.sha256(text.encode()).hexdigest()


def training_file_present(path: str) -> bool:
    """Whether a token file, or a complete example file (a directory), is still in the cache."""
    return Path(path).is_file() or read_meta(Path(path)) is not None
