"""A study: prepare data once, evaluate the base, train every arm to every milestone, resumably.

Each arm runs `run_arm`, in this process or in a worker process (independent arms use both cores
better as separate single-threaded processes than as one process with two threads). An arm writes
its metrics to the store at each milestone and then an atomic checkpoint (trainable weights,
optimizer, scheduler, RNG, step); a rerun skips finished arms and continues unfinished ones from
their last checkpoint, with numbers identical to an uninterrupted run.

`run_arm_safely` wraps it: the arm is claimed with a lease (several processes on one directory split
the arms), its checkpoint is checked against the sha256 and the milestones in the store before it is
trusted, and any exception marks the arm failed with its reason while the study goes on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.managers import SyncManager
from pathlib import Path

import torch

from learnforget.base.gguf import named_base_label
from learnforget.config.arms import Arm
from learnforget.config.study import StudyConfig
from learnforget.errors import StorageError, UserError
from learnforget.files import atomic_save, file_sha256, writing
from learnforget.runtime.precision import grad_scaler
from learnforget.study.divergence import divergence
from learnforget.study.store import FAILED, FINISHED, Store

DATA_FILE = "data.pt"
EVAL_DIGEST = "eval_digest"  # store info: content digest of the evaluation sets (check_same_evaluation)


def arm_dir(study_dir: Path, arm: str) -> Path:
    return study_dir / "arms" / arm


def recorder(store: Store, study_dir: Path, path: Path):
    """A `record` callback for atomic_save that puts the checksum in the store."""
    return lambda digest, size: store.record_file(str(path.relative_to(study_dir)), digest, size)


def warn(message: str) -> None:
    """One warning line on stderr (also from worker processes)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def verified_load(store: Store, study_dir: Path, path: Path):
    """torch.load a file whose checksum is on record; (object, None) or (None, what is wrong)."""
    if path.stat().st_size == 0:
        return None, "empty file"
    recorded = store.checksums(str(path.relative_to(study_dir)))
    if recorded and file_sha256(path) not in recorded:
        return None, "checksum mismatch (the file changed after it was written)"
    try:
        return torch.load(path, weights_only=False, map_location="cpu"), None
    except Exception as e:  # a damaged zip or pickle raises any of several types
        return None, f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def reset_peak_memory() -> None:
    """Start this process's peak-memory count afresh: a worker runs arm after arm, and each arm records
    its own peak. Linux resets the resident high-water mark (VmHWM) on a write of 5 to clear_refs;
    ru_maxrss, which never resets, is the fallback elsewhere."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Peak memory of this process since `reset_peak_memory`: GPU memory allocated when on CUDA, else the
    peak resident set size (VmHWM where /proc has it, else ru_maxrss)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------------
# Data and evaluation shared by every arm


def prepare_data(study: StudyConfig, study_dir: Path, base_path: str) -> dict:
    """Training rows and evaluation sets, built once per study and saved in it (`data.pt`; training rows
    stay in a cached token file (CPT, data/shards.py) or example file (IFT, data/examples.py) that it
    names)."""
    path = study_dir / DATA_FILE
    from learnforget.base.load import load_tokenizer
    from learnforget.data.datasets import evaluation_sets, training_rows

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
        from learnforget.data.datasets import describe_stats

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
    from learnforget.data.examples import read_meta

    return Path(path).is_file() or read_meta(Path(path)) is not None


def evaluate_model(
    model, tokenizer, study: StudyConfig, data: dict, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """Every milestone metric of one model (deterministic; does not touch the training RNG), under the
    study's precision, so a milestone measures the model as it trains. A sharded model is evaluated by
    every process together, in lockstep on identical inputs. `timings` receives seconds per suite."""
    from learnforget.evaluate.suites import evaluate_suites
    from learnforget.runtime.device import forked_rng, model_device
    from learnforget.runtime.precision import autocast
    from learnforget.runtime.sharding import evaluating

    device = model_device(model)
    # Layers compiled for training (compiling.py) run eagerly here: exact eager numbers, no recompiles.
    with forked_rng(device), evaluating(model), torch.compiler.set_stance("force_eager"):
        with autocast(study.precision, device):
            return evaluate_suites(model, tokenizer, study, data["eval"], timings)


# ---------------------------------------------------------------------------------------------------
# One arm


def run_base(study: StudyConfig, study_dir: Path, base_path: str) -> dict[str, float]:
    """Evaluate the untouched base model (arm 'base', 0 tokens) unless already done (under its lease:
    a second process on the directory waits for the first's numbers instead of computing them again)."""
    from learnforget.study.lease import Lease

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
    from learnforget.base.load import load_causal_lm, load_tokenizer

    store = Store(study_dir)
    store.register_arm("base", {"method": "base"})
    if store.finished_steps("base"):
        return {}
    data = prepare_data(study, study_dir, base_path)
    from learnforget.runtime.distributed import device

    model = load_causal_lm(base_path, study.precision, study.attn_implementation).to(device())
    trainable, total = 0, sum(p.numel() for p in model.parameters())
    suites: dict[str, float] = {}
    started = time.perf_counter()
    metrics = evaluate_model(model, load_tokenizer(base_path), study, data, suites)
    store.add_metrics("base", 0, 0, metrics)
    store.add_stage_times("base", 0, {f"eval/{name}": seconds for name, seconds in suites.items()})
    store.update_arm(
        "base", trainable_params=trainable, total_params=total, status="done",
        wall_seconds=time.perf_counter() - started,
    )  # fmt: skip
    store.refresh_snapshot()
    return metrics


def run_arm(study_json: str, arm_json: str, study_dir: str, base_path: str, queue=None) -> dict:
    """Train one arm through its milestones (resuming from its checkpoint) and record everything."""
    from learnforget.base.load import load_tokenizer
    from learnforget.evaluate.arm_model import ArmEvaluator
    from learnforget.runtime import distributed, sharding
    from learnforget.train.loop import (
        count_parameters,
        load_arm_model,
        make_optimizer,
        merged_weights,
        train_steps,
    )

    arm_started = time.perf_counter()
    reset_peak_memory()  # the peak recorded for this arm is this arm's, not an earlier one's in this worker
    warnings.filterwarnings("ignore", category=FutureWarning)  # spawned workers start with default filters
    study = StudyConfig.model_validate_json(study_json)
    arm = Arm.model_validate_json(arm_json)
    study.check_last_batch(distributed.world_size())
    study_dir = Path(study_dir)
    torch.set_num_threads(study.threads_per_worker)
    store = Store(study_dir)
    if (store.arm(arm.name) or {}).get("status") in FINISHED:
        return {"arm": arm.name, "skipped": True}
    main = distributed.is_main_process()  # only the main process writes (store, checkpoints, files)
    sharded = distributed.is_distributed() and study.sharding == "fsdp"
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
    if sharded:
        distributed.accelerator()  # the process group (gloo on the CPU)
        sharding.shard_model(model, study.precision)
    if study.compile:
        from learnforget.runtime.compiling import compile_layers

        compile_layers(model)
    from learnforget.data.datasets import epoch_rows, trained_tokens

    steps = study.steps

    def tokens_at(step: int) -> int:  # real tokens: IFT padding is not counted
        return trained_tokens(data["train"], step, study.batch_size, study.seq_len)

    optimizer, scheduler = make_optimizer(
        model, arm.learning_rate, arm.weight_decay, round(study.warmup_fraction * steps), steps, arm.optimizer
    )
    scaler = grad_scaler(study.precision, distributed.device())
    checkpoint_path = arm_dir(study_dir, arm.name) / "checkpoint.pt"
    initial_adapter = save_initial_adapter(model, arm, arm_dir(study_dir, arm.name)) if main else None
    # QLoRA: ΔW against the dequantized base the adapter trains on (read before any step, when the update
    # is zero), not the full-precision one, whose difference would be mostly quantization error.
    quantized_base = (
        {k: v.clone() for k, v in merged_weights(model).items()} if arm.quantization and main else None
    )
    step, earlier_wall = 0, 0.0
    if checkpoint_path.exists():
        step = restore_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler)
        earlier_wall = (store.arm(arm.name) or {}).get("wall_seconds") or 0.0  # the processes before this one
    accelerator, trained = None, model
    if sharded:
        accelerator = sharding.Collective()
    elif distributed.is_distributed():
        # The scheduler stays unprepared: a prepared one would step once per process.
        accelerator = distributed.accelerator()
        trained, optimizer = accelerator.prepare(model, optimizer)
    base_weights = quantized_base
    evaluator = ArmEvaluator(model, arm, study, base_path, sharded)
    trained_tokens_count, train_seconds = 0, 0.0
    diverged = None  # why the arm diverged (divergence.py), once it has
    from learnforget.study.tracking import StepLog, hyperparameters

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
                scaler=scaler, on_record=step_log.record, epoch_rows=epoch_rows(data["train"]),
            )  # fmt: skip
            stages = {"train": time.perf_counter() - started}
            train_seconds += stages["train"]
            trained_tokens_count += tokens_at(milestone) - tokens_at(step)
            step = milestone
            suites: dict[str, float] = {}
            metrics = evaluator.evaluate(tokenizer, data, suites) if main or sharded else {}
            stages.update({f"eval/{name}": seconds for name, seconds in suites.items()})
            gathered = sharding.gather(model, optimizer) if sharded else None  # every process takes part
            if main:
                if study.eval.spectra:
                    started = time.perf_counter()
                    base_weights = base_weights or load_base_weights(base_path, study)
                    metrics.update(record_spectra(
                        store, arm.name, tokens_at(step), base_weights, None if sharded else model,
                        functools.partial(evaluator.weights, gathered and gathered["model"]),
                        lambda done, total, _: tell("spectra", arm.name, done, total),
                    ))  # fmt: skip
                    evaluator.drop_weights()
                    stages["spectra"] = time.perf_counter() - started
                store.add_metrics(arm.name, step, tokens_at(step), metrics)
                step_log.milestone(step, metrics)
                diverged = diverged or divergence(metrics, base_metrics(store), len(tokenizer))
                if diverged and not distributed.is_distributed():  # launched processes all go on to the end
                    store.add_stage_times(arm.name, step, stages)
                    store.update_arm(arm.name, status="diverged", error=diverged,
                                     wall_seconds=earlier_wall + time.perf_counter() - arm_started)  # fmt: skip
                    checkpoint_path.unlink(missing_ok=True)  # a rerun does not train it again
                    tell("diverged", arm.name, diverged)
                    return {"arm": arm.name, "diverged": diverged}
                started = time.perf_counter()
                atomic_save(
                    checkpoint_state(model, optimizer, scheduler, step, scaler, gathered), checkpoint_path,
                    recorder(store, study_dir, checkpoint_path),
                )  # fmt: skip
                stages["checkpoint"] = time.perf_counter() - started
                store.add_stage_times(arm.name, step, stages)
                store.update_arm(arm.name, wall_seconds=earlier_wall + time.perf_counter() - arm_started)
                tell("milestone", arm.name, step, tokens_at(step), metrics)
            distributed.wait_for_everyone()
    except FloatingPointError as e:
        if main:
            step_log.milestone(step, {})  # the steps up to the divergence show where it happened
            store.update_arm(arm.name, status="failed", error=str(e))
        tell("failed", arm.name, str(e))
        return {"arm": arm.name, "failed": str(e)}
    finally:
        step_log.close()
    final_weights = sharding.full_state_dict(model) if sharded else None
    if not main:
        return {"arm": arm.name}
    started = time.perf_counter()
    with writing(arm_dir(study_dir, arm.name), "the arm's final weights and model card"):
        save_final(model, tokenizer, arm_dir(study_dir, arm.name), base_path, final_weights, initial_adapter)
        write_model_card(arm_dir(study_dir, arm.name), study, arm, base_path, store, merged=evaluator.merge)
    store.add_stage_times(arm.name, step, {"save": time.perf_counter() - started})
    tokens_per_s = trained_tokens_count / train_seconds if train_seconds else None
    store.update_arm(
        arm.name,
        status="diverged" if diverged else "done",
        error=diverged,
        tokens_per_s=tokens_per_s,
        peak_memory_mb=peak_memory_mb(),
        train_seconds=train_seconds,
        wall_seconds=earlier_wall + time.perf_counter() - arm_started,
    )
    checkpoint_path.unlink(missing_ok=True)  # the final weights are saved; optimizer state is not needed
    if diverged:
        tell("diverged", arm.name, diverged)
        return {"arm": arm.name, "diverged": diverged}
    tell("done", arm.name)
    return {"arm": arm.name}


def run_arm_safely(study_json: str, arm_json: str, study_dir: str, base_path: str, queue=None) -> dict:
    """`run_arm` under the arm's lease, after checking its checkpoint and final files against the store.

    Returns {"arm", ...} with "claimed" (another live process holds the arm), "skipped" (done and
    intact) or "failed" (any exception: recorded as the arm's error, the study goes on)."""
    from learnforget.runtime import distributed
    from learnforget.study.lease import Lease

    study = StudyConfig.model_validate_json(study_json)
    arm = Arm.model_validate_json(arm_json)
    directory = Path(study_dir)
    store = Store(directory)
    lease = None
    if not distributed.is_distributed():  # launched processes train every arm together
        lease = Lease(directory, arm.id)
        if not lease.acquire():
            return {"arm": arm.name, "claimed": lease.holder()}
    try:
        status = (store.arm(arm.name) or {}).get("status")
        if status == "diverged":  # the same settings would diverge again
            return {"arm": arm.name, "skipped": True, "diverged": store.arm(arm.name).get("error")}
        if status == "done":
            problem = check_final_files(store, directory, arm)
            if problem is None:
                return {"arm": arm.name, "skipped": True}
            warn(f"{arm.name}: {problem}; retraining the arm")
            store.update_arm(arm.name, status="pending")
        if distributed.is_main_process():  # one process decides, so every process resumes alike
            check_checkpoint(store, study, directory, arm)
            store.record_start(arm.name, arm.id)
        distributed.wait_for_everyone()
        result = run_arm(study_json, arm_json, study_dir, base_path, queue)
        if "failed" not in result and "diverged" not in result and distributed.is_main_process():
            record_final_files(store, directory, arm)
        return result
    except StorageError:  # a full or read-only disk stops the study: no arm can record anything
        raise
    except Exception as e:  # OOM, a bug, a bad file: the arm failed, the study goes on
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        if distributed.is_main_process():
            store.update_arm(arm.name, status="failed", error=reason)
            if queue is not None:
                queue.put(("failed", arm.name, reason))
        return {"arm": arm.name, "failed": reason}
    finally:
        if lease is not None:
            lease.release()
        store.refresh_snapshot()


def check_checkpoint(store: Store, study: StudyConfig, study_dir: Path, arm: Arm) -> None:
    """Delete (with a warning) a checkpoint that cannot be trusted: damaged, or ahead of the store's
    milestones (results lost with a deleted store part), so the arm recomputes them from scratch."""
    path = arm_dir(study_dir, arm.name) / "checkpoint.pt"
    if not path.exists():
        return
    state, problem = verified_load(store, study_dir, path)
    if problem is None:
        step = int(state.get("step", 0)) if isinstance(state, dict) else 0
        finished = store.finished_steps(arm.name)
        missing = [m for m in study.milestone_steps() if m <= step and m not in finished]
        if missing:
            problem = f"at step {step}, but the store lacks milestones at steps {missing}"
    if problem is not None:
        warn(f"{arm.name}: checkpoint {path}: {problem}; retraining the arm from the start")
        path.unlink(missing_ok=True)


def final_files(study_dir: Path, arm: Arm) -> list[Path]:
    """The arm's saved artifacts (everything in its directory but the checkpoint)."""
    directory = arm_dir(study_dir, arm.name)
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != "checkpoint.pt"
                  and not p.name.startswith("."))  # fmt: skip


def record_final_files(store: Store, study_dir: Path, arm: Arm) -> None:
    for path in final_files(study_dir, arm):
        store.record_file(str(path.relative_to(study_dir)), file_sha256(path), path.stat().st_size)


def check_final_files(store: Store, study_dir: Path, arm: Arm) -> str | None:
    """What is wrong with a finished arm's saved files, or None."""
    prefix = f"{arm_dir(study_dir, arm.name).relative_to(study_dir)}/"
    recorded = [
        r for r in store.files() if r["path"].startswith(prefix) and not r["path"].endswith("checkpoint.pt")
    ]
    for row in recorded:
        path = study_dir / row["path"]
        if not path.exists():
            return f"{path} is missing"
        if file_sha256(path) not in store.checksums(row["path"]):
            return f"{path}: checksum mismatch"
    return None


def checkpoint_state(
    model, optimizer, scheduler, step: int, scaler=None, gathered: dict | None = None
) -> dict:
    """What resuming needs; `gathered`: a sharded arm's full weights and optimizer state (`sharding.gather`)."""
    from learnforget.runtime.sharding import trainable_names
    from learnforget.train.loop import trainable_state

    if gathered is None:
        trainable, optimizer_state = trainable_state(model), optimizer.state_dict()
    else:
        trainable = {name: gathered["model"][name] for name in trainable_names(model)}
        optimizer_state = gathered["optimizer"]
    return {
        "step": step,
        "sharded": gathered is not None,
        "trainable": trainable,
        "optimizer": optimizer_state,
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_checkpoint(path: Path, model, optimizer, scheduler, scaler=None) -> int:
    """Load a checkpoint into a freshly built arm (sharded arms: already sharded, every process loads the
    full state and keeps its shard); returns the step it was taken at."""
    from learnforget.runtime.sharding import is_sharded, load_full_state

    # Memory-mapped for sharded arms: every process reads only the pages of its own shards.
    state = torch.load(path, weights_only=False, mmap=is_sharded(model))
    if state.get("sharded"):
        load_full_state(model, optimizer, state["trainable"], state["optimizer"])
    else:
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


def save_initial_adapter(model, arm: Arm, directory: Path) -> Path | None:
    """The adapter as initialised, for methods that rewrite the base weights (PiSSA, OLoRA): peft turns
    the final adapter into a plain LoRA on the *original* base from it (`save_final`). The initialisation
    is deterministic (seeded), so a resumed arm writes the same one again."""
    from learnforget.config.peft import rewrites_base

    if not rewrites_base(arm.peft):
        return None
    path = directory / "initial-adapter"
    model.save_pretrained(path)
    return path


def save_final(
    model, tokenizer, directory: Path, base_path: str, state_dict: dict | None = None,
    initial_adapter: Path | None = None,
) -> None:  # fmt: skip
    """The trained arm as users load it: a peft adapter directory or a full model directory.

    A full model is saved in the base's own dtype. An adapter names its base by absolute path or hub id,
    and carries the embeddings / LM head when the arm trained them (peft's `save_embedding_layers`), so
    the saved arm is the model that was measured. `state_dict`: a sharded arm's full weights, gathered
    (`sharding.full_state_dict`). `initial_adapter`: a PiSSA/OLoRA arm's adapter at initialisation; the
    saved adapter is then peft's conversion to a plain LoRA (rank 2r) on the original base.
    """
    from learnforget.runtime.precision import base_dtype
    from learnforget.runtime.sharding import saved_as_unsharded

    if hasattr(model, "get_base_model"):
        target = directory / "adapter"
        inner = model.get_base_model()
        trained_embeddings = inner.get_input_embeddings().weight.requires_grad
        with saved_as_unsharded(model):
            model.save_pretrained(
                target, save_embedding_layers=trained_embeddings, state_dict=state_dict,
                path_initial_model_for_weight_conversion=str(initial_adapter) if initial_adapter else None,
            )  # fmt: skip
    else:
        target = directory / "model"
        dtype = base_dtype(base_path)
        if state_dict is not None:
            state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        elif any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
            model.to(dtype)  # the arm's last use: nothing is measured after saving
        with saved_as_unsharded(model):
            model.save_pretrained(target, state_dict=state_dict)
    tokenizer.save_pretrained(target)


def write_model_card(
    directory: Path, study: StudyConfig, arm: Arm, base_path: str, store: Store, merged: bool = False
) -> None:
    """`README.md` in the arm directory: base, settings, budget and final metrics, for whoever finds it.
    `merged`: the metrics were measured on the adapter's merged weights (eval_model.py)."""
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
    if merged:
        load += ".merge_and_unload()  # the metrics below were measured on the merged weights"
    text = f"""# {arm.name}

One arm of the learnforget study `{study.name}`: {study.domain} {study.regime.upper()}, finetuned from
`{base_path}`{named_base_label(study.base_model)} with {arm.method} finetuning.

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


def base_metrics(store: Store) -> dict[str, float]:
    """The base model's metrics (empty until it has been evaluated)."""
    return {r["metric"]: r["value"] for r in store.metrics("base") if r["tokens"] == 0}


def load_base_weights(base_path: str, study: StudyConfig) -> dict[str, torch.Tensor]:
    from learnforget.base.load import load_causal_lm

    return load_causal_lm(base_path, study.precision, study.attn_implementation).state_dict()


def record_spectra(
    store: Store, arm: str, tokens: int, base_weights: dict, model, merged_weights, on_matrix=None
) -> dict[str, float]:
    """ΔW spectra of every linear layer at this milestone: from a plain LoRA `model`'s factors, else of
    `merged_weights()` (the arm's `train.merged_weights`; `model` None for a sharded arm), with W_base's
    factors cached on disk (`analysis.spectrum_cache`); returns summary metrics for the metrics table."""
    from learnforget.analyse.spectrum import spectrum_of_model
    from learnforget.files import cache_dir

    result = spectrum_of_model(
        base_weights, model, merged_weights, progress=on_matrix or False, cache_dir=cache_dir() / "spectra"
    )
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
        "spectrum/intruders": sum(m["intruders"] for m in changed),  # Shuttleworth et al.'s, all matrices
    }


# ---------------------------------------------------------------------------------------------------
# The whole study


def check_same_study(store: Store, study: StudyConfig, arms: list[Arm] | None = None) -> None:
    """Refuse to mix two different studies in one directory: resuming needs the same config, and results
    belong to the arm (settings) that produced them. Adding arms is allowed: finished ones stay valid."""
    from learnforget.config.arms import ARM_SETTINGS, expand_arms

    saved = store.info("config")
    current = json.loads(study.model_dump_json())
    arms = expand_arms(study) if arms is None else arms
    if saved is not None:
        try:  # fill fields added since the study was stored with their defaults
            saved_study = StudyConfig.model_validate(saved)
            saved = json.loads(saved_study.model_dump_json())
            saved_ids = {a.id for a in expand_arms(saved_study)}
        except Exception:  # noqa: BLE001 (a stored config that no longer validates differs anyway)
            saved_study, saved_ids = None, None
        # Workers change how fast, not what (threads do change reduction order: they must match);
        # trackers change who watches.
        ignore = {"workers", "log_with"} | (
            {"arms"} if saved_ids is not None and saved_ids <= {a.id for a in arms} else set()
        )
        old = {k: v for k, v in _flatten(saved).items() if k.split(".")[0] not in ignore}
        new = {k: v for k, v in _flatten(current).items() if k.split(".")[0] not in ignore}
        diff = [f"{k}: {_show(old.get(k))} → {_show(new.get(k))}" for k in sorted(set(old) | set(new), key=_key_order)
                if old.get(k, _ABSENT) != new.get(k, _ABSENT)]  # fmt: skip
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise UserError(
                f"{store.study_dir}: holds a study with a different config ({shown}); rerun with its config, "
                "or use another --out"
            )
    for arm in arms:  # names of older versions could stand for other settings: the arm's results must match
        stored = store.arm(arm.name)
        if stored is None or stored.get("method") == "base":
            continue
        if stored.get("arm_id") not in (None, arm.id) or any(
            stored.get(k) is not None and stored.get(k) != v
            for k, v in arm.model_dump(include=set(ARM_SETTINGS)).items()
        ):
            raise UserError(
                f"{store.study_dir}: arm {arm.name} is stored with other settings than this config gives it; "
                "use another --out"
            )
    store.set_info("config", current)  # the grid as last run


_ABSENT = object()


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): value}


def _show(value) -> str:
    return "(absent)" if value is None else json.dumps(value)


def _key_order(key: str):
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def check_arms_fit(arms: list[Arm], model_config: dict | None) -> None:
    """A LoRA rank above the width of the matrices it adapts is an error, named by the arm."""
    widths = [(model_config or {}).get(k) for k in ("hidden_size", "intermediate_size")]
    widths = [w for w in widths if isinstance(w, int) and w > 0]
    if not widths:
        return
    for arm in arms:
        if arm.method == "lora" and arm.peft is None and arm.rank > min(widths):
            raise UserError(
                f"arm {arm.name}: LoRA rank {arm.rank} exceeds the width {min(widths)} of the base model's "
                "matrices; lower the rank"
            )


def shard_arms(arms: list[Arm], shard: tuple[int, int] | None) -> list[Arm]:
    """Arms of shard I of N (round robin over the expanded grid), for Slurm arrays and the like."""
    if shard is None:
        return arms
    index, count = shard
    return [a for i, a in enumerate(arms) if i % count == index]


def uses_pool(study: StudyConfig, arms: list[Arm]) -> bool:
    """Whether `run_arms` trains these arms in a pool of worker processes (else in this process)."""
    from learnforget.runtime.distributed import is_distributed

    return study.workers > 1 and len(arms) > 1 and not is_distributed()


def run_arms(
    study: StudyConfig, study_dir: Path, base_path: str, arms: list[Arm], on_message, with_base: bool = False
) -> list[dict]:
    """Train arms, in this process (workers = 1) or a pool of worker processes, relaying progress;
    `with_base`: the pool also evaluates the base (`run_base`), as its first job.

    Arms that another live process holds (its lease) are waited for, and taken over if their lease goes
    stale. Returns one result per arm (see `run_arm_safely`)."""
    store = Store(study_dir)
    results = dict(
        zip(
            [a.name for a in arms],
            _run_pass(study, study_dir, base_path, arms, on_message, with_base),
            strict=True,
        )
    )
    waiting = [a for a in arms if results[a.name].get("claimed")]
    from learnforget.study.lease import Lease

    while waiting:
        time.sleep(POLL_SECONDS)
        free = [a for a in waiting if Lease(study_dir, a.id).holder() is None]
        for arm in free:
            status = (store.arm(arm.name) or {}).get("status")
            if status in ("done", *FAILED):  # the other process finished it
                results[arm.name] = {"arm": arm.name, "by_other": status}
        retry = [a for a in free if "by_other" not in results[a.name]]
        for arm, result in zip(retry, _run_pass(study, study_dir, base_path, retry, on_message), strict=True):
            results[arm.name] = result
        waiting = [a for a in waiting if results[a.name].get("claimed")]
    return [results[a.name] for a in arms]


POLL_SECONDS = 2.0


def _run_pass(
    study: StudyConfig, study_dir: Path, base_path: str, arms: list[Arm], on_message, with_base: bool = False
) -> list[dict]:
    if not arms:
        return []
    study_json = study.model_dump_json()
    if not uses_pool(study, arms):  # launched processes each run every arm
        threads = torch.get_num_threads()
        try:
            return [
                run_arm_safely(
                    study_json, arm.model_dump_json(), str(study_dir), base_path, _Relay(on_message)
                )
                for arm in arms
            ]
        finally:
            torch.set_num_threads(threads)
    from learnforget.study import workers

    ctx = workers.context()
    manager = SyncManager(ctx=ctx)
    manager.start(workers.exit_with, (os.getpid(),))
    results = []
    with manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(
            max_workers=min(study.workers, len(arms)), mp_context=ctx,
            initializer=workers.initialize, initargs=workers.initializer_args(),
        ) as pool:  # fmt: skip
            base = pool.submit(run_base, study, study_dir, base_path) if with_base else None
            futures = [
                pool.submit(run_arm_safely, study_json, a.model_dump_json(), str(study_dir), base_path, queue)
                for a in arms
            ]
            while not all(f.done() for f in futures):
                _drain(queue, on_message, timeout=0.2)
            _drain(queue, on_message, timeout=0)
            for arm, future in zip(arms, futures, strict=True):
                try:
                    results.append(future.result())
                except StorageError:
                    raise
                except Exception as e:  # the worker died (killed for memory, a crash in native code)
                    reason = f"worker process died ({type(e).__name__})"
                    Store(study_dir).update_arm(arm.name, status="failed", error=reason)
                    on_message(("failed", arm.name, reason))
                    results.append({"arm": arm.name, "failed": reason})
            if base is not None:
                base.result()  # raises what failed the base's evaluation, now that the arms are safe
    return results


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
