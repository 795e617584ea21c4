"""The base model's place in a study: arm 'base' at 0 tokens, measured once, and its weights for ΔW."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from learnforget.base.load import load_causal_lm, load_tokenizer
from learnforget.config.study import StudyConfig
from learnforget.evaluate.arm_model import evaluate_model
from learnforget.runtime.distributed import device
from learnforget.study.data import prepare_data
from learnforget.study.lease import POLL_SECONDS, Lease
from learnforget.study.store import Store


def run_base(study: StudyConfig, study_dir: Path, base_path: str) -> dict[str, float]:
    """Evaluate the untouched base model (arm 'base', 0 tokens) unless already done (under its lease:
    a second process on the directory waits for the first's numbers instead of computing them again)."""
    lease = Lease(study_dir, "base")
    while not lease.acquire():
        time.sleep(POLL_SECONDS)
    threads = torch.get_num_threads()
    torch.set_num_threads(study.threads_per_worker)  # as the arms: the same numbers in a worker or here
    try:
        return _evaluate_base(study, study_dir, base_path)
    finally:
        torch.set_num_threads(threads)
        lease.release()


def _evaluate_base(study: StudyConfig, study_dir: Path, base_path: str) -> dict[str, float]:
    store = Store(study_dir)
    store.register_arm("base", {"method": "base"})
    if store.finished_steps("base"):
        return {}
    data = prepare_data(study, study_dir, base_path)

    model = load_causal_lm(base_path, study.precision, study.attn_implementation).to(device())
    trainable, total = 0, sum(p.numel() for p in model.parameters())
    suites: dict[str, float] = {}
    started = time.perf_counter()
    directions: dict[str, bool] = {}  # lm-eval's own, for the metric registry (config/metrics.py)
    metrics = evaluate_model(model, load_tokenizer(base_path), study, data, suites, directions)
    if directions:
        store.set_info("metric_directions", directions)
    store.add_metrics("base", 0, 0, metrics)
    store.add_stage_times("base", 0, {f"eval/{name}": seconds for name, seconds in suites.items()})
    store.update_arm(
        "base", trainable_params=trainable, total_params=total, status="done",
        wall_seconds=time.perf_counter() - started,
    )  # fmt: skip
    store.refresh_snapshot()
    return metrics


def base_metrics(store: Store) -> dict[str, float]:
    """The base model's metrics (empty until it has been evaluated)."""
    return {r["metric"]: r["value"] for r in store.metrics("base") if r["tokens"] == 0}


def load_base_weights(base_path: str, study: StudyConfig) -> dict[str, torch.Tensor]:
    return load_causal_lm(base_path, study.precision, study.attn_implementation).state_dict()
