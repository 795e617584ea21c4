"""A study: prepare data once, evaluate the base, train every arm to every milestone, resumably.

Each arm runs `run_arm`, in this process or in a worker process (independent arms use both cores
better as separate single-threaded processes than as one process with two threads). An arm writes
its metrics to the store at each milestone and then an atomic checkpoint (trainable weights,
optimizer, scheduler, RNG, step); a rerun skips finished arms and continues unfinished ones from
their last checkpoint, with numbers identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.managers import SyncManager
from pathlib import Path

import torch

from learnforget.config import Arm, StudyConfig
from learnforget.errors import UserError
from learnforget.precision import grad_scaler
from learnforget.store import Store

DATA_FILE = "data.pt"


def arm_dir(study_dir: Path, arm: str) -> Path:
    return study_dir / "arms" / arm


def atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file, then rename: a kill leaves the old file or the new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU memory allocated when on CUDA, else peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------
# Data and evaluation shared by every arm


def prepare_data(study: StudyConfig, study_dir: Path, base_path: str) -> dict:
    """Training rows and evaluation sets, built once per study and saved in it (`data.pt`)."""
    path = study_dir / DATA_FILE
    if path.exists():
        return torch.load(path, weights_only=False)
    from learnforget.data.datasets import evaluation_sets, training_rows
    from learnforget.model import load_tokenizer

    tokenizer = load_tokenizer(base_path)
    data = {"train": training_rows(study, tokenizer), "eval": evaluation_sets(study, tokenizer)}
    atomic_save(data, path)
    return data


def evaluate_model(model, tokenizer, study: StudyConfig, data: dict) -> dict[str, float]:
    """Every milestone metric of one model (deterministic; does not touch the training RNG), under the
    study's precision, so a milestone measures the model as it trains."""
    from learnforget.evaluate.device import forked_rng, model_device
    from learnforget.evaluate.suites import evaluate_suites
    from learnforget.precision import autocast

    device = model_device(model)
    with forked_rng(device):
        with autocast(study.precision, device):
            return evaluate_suites(model, tokenizer, study, data["eval"])


# ---------------------------------------------------------------------------------------------------
# One arm


def run_base(study: StudyConfig, study_dir: Path, base_path: str) -> dict[str, float]:
    """Evaluate the untouched base model (arm 'base', 0 tokens) unless already done."""
    from learnforget.model import load_causal_lm, load_tokenizer

    store = Store(study_dir)
    store.register_arm("base", {"method": "base"})
    if store.finished_steps("base"):
        return {}
    data = prepare_data(study, study_dir, base_path)
    from learnforget.distributed import device

    model = load_causal_lm(base_path, study.precision, study.attn_implementation).to(device())
    trainable, total = 0, sum(p.numel() for p in model.parameters())
    metrics = evaluate_model(model, load_tokenizer(base_path), study, data)
    store.add_metrics("base", 0, 0, metrics)
    store.update_arm("base", trainable_params=trainable, total_params=total, status="done")
    return metrics


def run_arm(study_json: str, arm_json: str, study_dir: str, base_path: str, queue=None) -> dict:
    """Train one arm through its milestones (resuming from its checkpoint) and record everything."""
    from learnforget import distributed
    from learnforget.model import load_tokenizer
    from learnforget.train import count_parameters, load_arm_model, make_optimizer, train_steps

    warnings.filterwarnings("ignore", category=FutureWarning)  # spawned workers start with default filters
    study = StudyConfig.model_validate_json(study_json)
    arm = Arm.model_validate_json(arm_json)
    study_dir = Path(study_dir)
    torch.set_num_threads(study.threads_per_worker)
    store = Store(study_dir)
    if (store.arm(arm.name) or {}).get("status") == "done":
        return {"arm": arm.name, "skipped": True}
    main = distributed.is_main_process()  # only the main process writes (store, checkpoints, files)
    if main:
        store.update_arm(arm.name, status="running")

    def tell(*message):
        if queue is not None and main:
            queue.put(message)

    data = prepare_data(study, study_dir, base_path)
    tokenizer = load_tokenizer(base_path)
    torch.manual_seed(arm.seed)
    model = load_arm_model(
        base_path, arm, study.precision, study.attn_implementation, study.gradient_checkpointing
    ).to(distributed.device())
    trainable, total = count_parameters(model)
    if main:
        store.update_arm(arm.name, trainable_params=trainable, total_params=total)
    steps, tokens_per_step = study.steps, study.tokens_per_step
    optimizer, scheduler = make_optimizer(
        model, arm.learning_rate, arm.weight_decay, round(study.warmup_fraction * steps), steps, arm.optimizer
    )
    scaler = grad_scaler(study.precision, distributed.device())
    checkpoint_path = arm_dir(study_dir, arm.name) / "checkpoint.pt"
    step = 0
    if checkpoint_path.exists():
        step = restore_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler)
    accelerator, trained = None, model
    if distributed.is_distributed():
        # The scheduler stays unprepared: a prepared one would step once per process.
        accelerator = distributed.accelerator()
        trained, optimizer = accelerator.prepare(model, optimizer)
    base_weights = None
    trained_steps, train_seconds = 0, 0.0
    from learnforget.tracking import StepLog, hyperparameters

    step_log = StepLog(
        store, arm.name, study.log_with if main else [], study_dir,
        hyperparameters(json.loads(study_json), json.loads(arm_json)), study.name,
    )  # fmt: skip
    try:
        for milestone in study.milestone_steps():
            if milestone <= step:
                continue
            started = time.perf_counter()
            train_steps(
                trained, optimizer, scheduler, data["train"]["input_ids"], study.batch_size, step, milestone,
                labels=data["train"].get("labels"), on_step=lambda s, loss: tell("step", arm.name, s + 1, steps, loss),
                accelerator=accelerator, micro_batch_size=study.micro_batch_size, precision=study.precision,
                scaler=scaler, on_record=step_log.record,
            )  # fmt: skip
            train_seconds += time.perf_counter() - started
            trained_steps += milestone - step
            step = milestone
            if main:
                metrics = evaluate_model(model, tokenizer, study, data)
                if study.eval.spectra:
                    base_weights = base_weights or load_base_weights(base_path, study)
                    metrics.update(
                        record_spectra(store, arm.name, step * tokens_per_step, base_weights, model)
                    )
                store.add_metrics(arm.name, step, step * tokens_per_step, metrics)
                step_log.milestone(step, metrics)
                atomic_save(checkpoint_state(model, optimizer, scheduler, step, scaler), checkpoint_path)
                tell("milestone", arm.name, step * tokens_per_step, metrics)
            distributed.wait_for_everyone()
    except FloatingPointError as e:
        if main:
            step_log.milestone(step, {})  # the steps up to the divergence show where it happened
            store.update_arm(arm.name, status="failed", error=str(e))
        tell("failed", arm.name, str(e))
        return {"arm": arm.name, "failed": str(e)}
    finally:
        step_log.close()
    if not main:
        return {"arm": arm.name}
    save_final(model, tokenizer, arm_dir(study_dir, arm.name), base_path)
    write_model_card(arm_dir(study_dir, arm.name), study, arm, base_path, store)
    tokens_per_s = trained_steps * tokens_per_step / train_seconds if train_seconds else None
    store.update_arm(
        arm.name,
        status="done",
        tokens_per_s=tokens_per_s,
        peak_memory_mb=peak_memory_mb(),
        train_seconds=train_seconds,
    )
    checkpoint_path.unlink(missing_ok=True)  # the final weights are saved; optimizer state is not needed
    tell("done", arm.name)
    return {"arm": arm.name}


def checkpoint_state(model, optimizer, scheduler, step: int, scaler=None) -> dict:
    from learnforget.train import trainable_state

    return {
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> int:
    """Load a checkpoint into a freshly built arm; returns the step it was taken at."""
    state = torch.load(path, weights_only=False)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["trainable"].items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"]


def save_final(model, tokenizer, directory: Path, base_path: str) -> None:
    """The trained arm as users load it: a peft adapter directory or a full model directory.

    A full model is saved in the base's own dtype. An adapter names its base by absolute path or hub id,
    and carries the embeddings / LM head when the arm trained them (peft's `save_embedding_layers`), so
    the saved arm is the model that was measured.
    """
    from learnforget.precision import base_dtype

    if hasattr(model, "get_base_model"):
        target = directory / "adapter"
        inner = model.get_base_model()
        trained_embeddings = inner.get_input_embeddings().weight.requires_grad
        model.save_pretrained(target, save_embedding_layers=trained_embeddings)
    else:
        target = directory / "model"
        dtype = base_dtype(base_path)
        if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
            model.to(dtype)  # the arm's last use: nothing is measured after saving
        model.save_pretrained(target)
    tokenizer.save_pretrained(target)


def write_model_card(directory: Path, study: StudyConfig, arm: Arm, base_path: str, store: Store) -> None:
    """`README.md` in the arm directory: base, settings, budget and final metrics, for whoever finds it."""
    rows = store.metrics(arm.name)
    final_tokens = max((r["tokens"] for r in rows), default=0)
    final = {r["metric"]: r["value"] for r in rows if r["tokens"] == final_tokens}
    artifact = "adapter" if arm.method != "full" else "model"
    settings = "\n".join(f"| {k} | {v} |" for k, v in arm.model_dump().items())
    metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(final.items()))
    load = (
        f"from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained('{directory / artifact}')"
        if artifact == "adapter"
        else f"from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained('{directory / artifact}')"
    )  # fmt: skip
    text = f"""# {arm.name}

One arm of the learnforget study `{study.name}`: {study.domain} {study.regime.upper()}, finetuned from
`{base_path}` with {arm.method} finetuning.

- Budget: {study.steps} steps × {study.tokens_per_step:,} tokens = {study.steps * study.tokens_per_step:,} tokens
  (batch {study.batch_size} × sequence length {study.seq_len}), precision {study.precision}, data seed {study.seed}.
- Weights: `{artifact}/`. Load it with:

```python
{load}
```

## Settings

| setting | value |
|---|---|
{settings}

## Final metrics ({final_tokens:,} tokens)

| metric | value |
|---|---|
{metrics}
"""
    (directory / "README.md").write_text(text)


def load_base_weights(base_path: str, study: StudyConfig) -> dict[str, torch.Tensor]:
    from learnforget.model import load_causal_lm

    return load_causal_lm(base_path, study.precision, study.attn_implementation).state_dict()


def record_spectra(store: Store, arm: str, tokens: int, base_weights: dict, model) -> dict[str, float]:
    """ΔW spectra of every linear layer at this milestone; returns summary metrics for the metrics table."""
    from learnforget.analysis.spectrum import spectrum_of_state_dicts
    from learnforget.train import merged_weights

    result = spectrum_of_state_dicts(base_weights, merged_weights(model), progress=False)
    store.add_matrices(arm, tokens, result["matrices"])
    # Matrices an arm does not train (LoRA on attention only leaves the MLP's ΔW = 0) are left out of the
    # median: it describes the updates the arm makes.
    changed = [m for m in result["matrices"] if m["delta_fro"] > 0]
    fractions = sorted(m["rank_delta"] / min(m["shape"]) for m in changed)
    random_fractions = sorted(m["rank_random"] / min(m["shape"]) for m in changed)
    if not fractions:
        return {}
    mid = len(fractions) // 2
    return {
        "spectrum/rank_delta_fraction": fractions[mid],
        "spectrum/rank_random_fraction": random_fractions[mid],
    }


# ---------------------------------------------------------------------------------------------------
# The whole study


def check_same_study(store: Store, study: StudyConfig) -> None:
    """Refuse to mix two different studies in one directory (resuming needs the same config)."""
    saved = store.info("config")
    current = json.loads(study.model_dump_json())
    if saved is None:
        store.set_info("config", current)
        return
    # Workers change how fast, not what (threads do change reduction order: they must match). Arms may
    # be added to a study: an arm's name encodes its settings, so finished arms stay valid.
    ignore = {"workers", "arms", "log_with"}
    diff = sorted(k for k in set(saved) | set(current) if k not in ignore and saved.get(k) != current.get(k))
    if diff:
        raise UserError(
            f"{store.path.parent}: holds a different study (differs in {', '.join(diff)}); use another --out"
        )
    store.set_info("config", current)  # the grid as last run


def shard_arms(arms: list[Arm], shard: tuple[int, int] | None) -> list[Arm]:
    """Arms of shard I of N (round robin over the expanded grid), for Slurm arrays and the like."""
    if shard is None:
        return arms
    index, count = shard
    return [a for i, a in enumerate(arms) if i % count == index]


def run_arms(study: StudyConfig, study_dir: Path, base_path: str, arms: list[Arm], on_message) -> None:
    """Train arms, in this process (workers = 1) or a pool of worker processes, relaying progress."""
    from learnforget.distributed import is_distributed

    study_json = study.model_dump_json()
    if study.workers == 1 or len(arms) == 1 or is_distributed():  # launched processes each run every arm
        threads = torch.get_num_threads()
        try:
            for arm in arms:
                run_arm(study_json, arm.model_dump_json(), str(study_dir), base_path, _Relay(on_message))
        finally:
            torch.set_num_threads(threads)
        return
    ctx = get_context("spawn")
    manager = SyncManager(ctx=ctx)
    manager.start(exit_with_parent, (os.getpid(),))
    with manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(
            max_workers=min(study.workers, len(arms)), mp_context=ctx,
            initializer=exit_with_parent, initargs=(os.getpid(),),
        ) as pool:  # fmt: skip
            futures = [
                pool.submit(run_arm, study_json, a.model_dump_json(), str(study_dir), base_path, queue)
                for a in arms
            ]
            while not all(f.done() for f in futures):
                _drain(queue, on_message, timeout=0.2)
            _drain(queue, on_message, timeout=0)
            for f in futures:
                f.result()  # re-raise a worker's crash


def exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit once the parent is gone. A SIGKILLed `learnforget run` must not leave
    workers training and writing the study behind the back of the rerun that resumes it."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Relay:
    """Queue-like adapter so an in-process arm reports the same way as a worker."""

    def __init__(self, on_message):
        self.on_message = on_message

    def put(self, message):
        self.on_message(message)


def _drain(queue, on_message, timeout: float) -> None:
    import queue as queue_module

    try:
        message = queue.get(timeout=timeout) if timeout else queue.get_nowait()
        on_message(message)
        while True:
            on_message(queue.get_nowait())
    except queue_module.Empty:
        pass
