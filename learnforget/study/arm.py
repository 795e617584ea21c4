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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from learnforget.arms.build import count_parameters, load_arm_model
from learnforget.arms.delta import merged_weights
from learnforget.base.load import load_tokenizer
from learnforget.config.arms import Arm
from learnforget.config.study import StudyConfig
from learnforget.data.datasets import epoch_rows, trained_tokens
from learnforget.errors import StorageError, warn
from learnforget.evaluate.arm_model import ArmEvaluator
from learnforget.files import atomic_save, writing
from learnforget.runtime import distributed, sharding
from learnforget.runtime.compiling import compile_layers
from learnforget.runtime.peak_memory import peak_memory_mb, reset_peak_memory
from learnforget.runtime.precision import grad_scaler
from learnforget.study.base_model import base_metrics, load_base_weights
from learnforget.study.checkpoints import (
    arm_dir,
    check_checkpoint,
    check_final_files,
    checkpoint_state,
    record_final_files,
    recorder,
    restore_checkpoint,
)
from learnforget.study.data import prepare_data
from learnforget.study.divergence import divergence
from learnforget.study.events import Ended, Event, Milestone, Spectra, Step
from learnforget.study.lease import Lease
from learnforget.study.saving import save_final, save_initial_adapter, write_model_card
from learnforget.study.spectra import record_spectra
from learnforget.study.store import Store
from learnforget.study.store_schema import FINISHED
from learnforget.study.tracking import StepLog, hyperparameters
from learnforget.train.loop import make_optimizer, train_steps

# ---------------------------------------------------------------------------------------------------
# One arm, as a recipe: open it (data, model, optimizer, resumed state), then for each milestone train
# to it and measure it (metrics, spectra, checkpoint), then save the arm as users load it.


@dataclass
class ArmRun:
    """One arm in training: what its milestones share. Only the main process writes (store, files)."""

    study: StudyConfig
    arm: Arm
    study_dir: Path
    base_path: str
    store: Store
    data: dict
    tokenizer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object
    evaluator: ArmEvaluator
    step_log: StepLog
    queue: object = None
    step: int = 0
    trained: torch.nn.Module | None = None  # the model as the optimizer steps it (DDP-prepared when launched)
    accelerator: object = None
    initial_adapter: Path | None = None
    base_weights: dict | None = None  # W_base for ΔW (QLoRA: the dequantized base the adapter trains on)
    earlier_wall: float = 0.0  # seconds spent on this arm by processes before this one
    started: float = 0.0  # when this process began the arm (time.perf_counter)
    trained_tokens: int = 0
    train_seconds: float = 0.0
    diverged: str | None = None  # why the arm diverged (study/divergence.py), once it has
    main: bool = True
    sharded: bool = False

    @property
    def directory(self) -> Path:
        return arm_dir(self.study_dir, self.arm.name)

    @property
    def checkpoint_path(self) -> Path:
        return self.directory / "checkpoint.pt"

    def tell(self, event: Event) -> None:
        """A progress event (study/events.py) for the study's display."""
        if self.queue is not None and self.main:
            self.queue.put(event)

    def tokens_at(self, step: int) -> int:
        """Real tokens trained by `step` (IFT padding is not counted)."""
        return trained_tokens(self.data["train"], step, self.study.batch_size, self.study.seq_len)

    def wall_seconds(self) -> float:
        return self.earlier_wall + time.perf_counter() - self.started


def run_arm(study: StudyConfig, arm: Arm, study_dir: Path, base_path: str, queue=None) -> dict:
    """Train one arm through its milestones (resuming from its checkpoint) and record everything."""
    started = time.perf_counter()
    reset_peak_memory()  # the peak recorded for this arm is this arm's, not an earlier one's in this worker
    warnings.filterwarnings("ignore", category=FutureWarning)  # spawned workers start with default filters
    study.check_last_batch(distributed.world_size())
    torch.set_num_threads(study.threads_per_worker)
    store = Store(study_dir)
    if (store.arm(arm.name) or {}).get("status") in FINISHED:
        return {"arm": arm.name, "skipped": True}
    run = open_arm(study, arm, Path(study_dir), base_path, store, queue, started)
    try:
        for milestone in study.milestone_steps():
            if milestone > run.step:
                stages = train_to(run, milestone)
                if measure_milestone(run, stages):
                    return {"arm": arm.name, "diverged": run.diverged}
            distributed.wait_for_everyone()
    except FloatingPointError as e:
        if run.main:
            run.step_log.milestone(run.step, {})  # the steps up to the divergence show where it happened
            store.update_arm(arm.name, status="failed", error=str(e))
        run.tell(Ended(arm.name, "failed", str(e)))
        return {"arm": arm.name, "failed": str(e)}
    finally:
        run.step_log.close()
    return finish_arm(run)


def open_arm(
    study: StudyConfig, arm: Arm, study_dir: Path, base_path: str, store: Store, queue, started: float
) -> ArmRun:
    """Data, the arm's model (sharded, compiled as the study asks), optimizer and schedule, resumed from the
    arm's checkpoint when it has one."""
    main = distributed.is_main_process()
    sharded = distributed.is_distributed() and study.sharding == "fsdp"
    if main:
        store.update_arm(arm.name, status="running")
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
        compile_layers(model)
    optimizer, scheduler = make_optimizer(
        model, arm.learning_rate, arm.weight_decay, round(study.warmup_fraction * study.steps), study.steps,
        arm.optimizer,
    )  # fmt: skip
    step_log = StepLog(
        store, arm.name, study.log_with if main else [], study_dir,
        hyperparameters(study.model_dump(mode="json"), arm.model_dump(mode="json")), study.name,
    )  # fmt: skip
    run = ArmRun(
        study, arm, study_dir, base_path, store, data, tokenizer, model, optimizer, scheduler,
        grad_scaler(study.precision, distributed.device()), ArmEvaluator(model, arm, study, base_path, sharded),
        step_log, queue, main=main, sharded=sharded, started=started,
    )  # fmt: skip
    run.initial_adapter = save_initial_adapter(model, arm, run.directory) if main else None
    # QLoRA: ΔW against the dequantized base the adapter trains on (read before any step, when the update
    # is zero), not the full-precision one, whose difference would be mostly quantization error.
    if arm.quantization and main:
        run.base_weights = {k: v.clone() for k, v in merged_weights(model).items()}
    if run.checkpoint_path.exists():
        run.step = restore_checkpoint(run.checkpoint_path, model, optimizer, scheduler, run.scaler)
        run.earlier_wall = (store.arm(arm.name) or {}).get("wall_seconds") or 0.0
    run.trained = model
    if sharded:
        run.accelerator = sharding.Collective()
    elif distributed.is_distributed():
        # The scheduler stays unprepared: a prepared one would step once per process.
        run.accelerator = distributed.accelerator()
        run.trained, run.optimizer = run.accelerator.prepare(model, optimizer)
    return run


def train_to(run: ArmRun, milestone: int) -> dict[str, float]:
    """Optimizer steps up to `milestone`; returns the stage times so far ({'train': seconds})."""
    study, started = run.study, time.perf_counter()
    train_steps(
        run.trained, run.optimizer, run.scheduler, run.data["train"]["input_ids"], study.batch_size, run.step,
        milestone, labels=run.data["train"].get("labels"),
        on_step=lambda s, loss: run.tell(Step(run.arm.name, s + 1, study.steps, loss)),
        accelerator=run.accelerator, micro_batch_size=study.micro_batch_size, precision=study.precision,
        scaler=run.scaler, on_record=run.step_log.record, epoch_rows=epoch_rows(run.data["train"]),
    )  # fmt: skip
    seconds = time.perf_counter() - started
    run.train_seconds += seconds
    run.trained_tokens += run.tokens_at(milestone) - run.tokens_at(run.step)
    run.step = milestone
    return {"train": seconds}


def measure_milestone(run: ArmRun, stages: dict[str, float]) -> bool:
    """Evaluate the arm at its milestone, record metrics, spectra and stage times, and checkpoint it.
    Returns True when the arm has diverged and stops here (one process only)."""
    suites: dict[str, float] = {}
    metrics = run.evaluator.evaluate(run.tokenizer, run.data, suites) if run.main or run.sharded else {}
    stages.update({f"eval/{name}": seconds for name, seconds in suites.items()})
    gathered = sharding.gather(run.model, run.optimizer) if run.sharded else None  # every process takes part
    if not run.main:
        return False
    if run.study.eval.spectra:
        metrics.update(milestone_spectra(run, gathered, stages))
    run.store.add_metrics(run.arm.name, run.step, run.tokens_at(run.step), metrics)
    run.step_log.milestone(run.step, metrics)
    run.diverged = run.diverged or divergence(metrics, base_metrics(run.store), len(run.tokenizer))
    if run.diverged and not distributed.is_distributed():  # launched processes all go on to the end
        run.store.add_stage_times(run.arm.name, run.step, stages)
        run.store.update_arm(
            run.arm.name, status="diverged", error=run.diverged, wall_seconds=run.wall_seconds()
        )
        run.checkpoint_path.unlink(missing_ok=True)  # a rerun does not train it again
        run.tell(Ended(run.arm.name, "diverged", run.diverged))
        return True
    started = time.perf_counter()
    state = checkpoint_state(run.model, run.optimizer, run.scheduler, run.step, run.scaler, gathered)
    atomic_save(state, run.checkpoint_path, recorder(run.store, run.study_dir, run.checkpoint_path))
    stages["checkpoint"] = time.perf_counter() - started
    run.store.add_stage_times(run.arm.name, run.step, stages)
    run.store.update_arm(run.arm.name, wall_seconds=run.wall_seconds())
    run.tell(Milestone(run.arm.name, run.step, run.tokens_at(run.step), metrics))
    return False


def milestone_spectra(run: ArmRun, gathered: dict | None, stages: dict[str, float]) -> dict[str, float]:
    """ΔW spectra at this milestone (summary metrics returned, per-matrix rows stored)."""
    started = time.perf_counter()
    run.base_weights = run.base_weights or load_base_weights(run.base_path, run.study)
    metrics = record_spectra(
        run.store, run.arm.name, run.tokens_at(run.step), run.base_weights, None if run.sharded else run.model,
        functools.partial(run.evaluator.weights, gathered and gathered["model"]),
        lambda done, total, _: run.tell(Spectra(run.arm.name, done, total)),
    )  # fmt: skip
    run.evaluator.drop_weights()
    stages["spectra"] = time.perf_counter() - started
    return metrics


def finish_arm(run: ArmRun) -> dict:
    """Save the trained arm as users load it, with its model card, and record its totals."""
    final_weights = sharding.full_state_dict(run.model) if run.sharded else None
    if not run.main:
        return {"arm": run.arm.name}
    arm, store, started = run.arm, run.store, time.perf_counter()
    with writing(run.directory, "the arm's final weights and model card"):
        save_final(run.model, run.tokenizer, run.directory, run.base_path, final_weights, run.initial_adapter)
        write_model_card(run.directory, run.study, arm, run.base_path, store, merged=run.evaluator.merge)
    store.add_stage_times(arm.name, run.step, {"save": time.perf_counter() - started})
    store.update_arm(
        arm.name, status="diverged" if run.diverged else "done", error=run.diverged,
        tokens_per_s=run.trained_tokens / run.train_seconds if run.train_seconds else None,
        peak_memory_mb=peak_memory_mb(), train_seconds=run.train_seconds, wall_seconds=run.wall_seconds(),
    )  # fmt: skip
    run.checkpoint_path.unlink(missing_ok=True)  # the final weights are saved; optimizer state is not needed
    if run.diverged:
        run.tell(Ended(arm.name, "diverged", run.diverged))
        return {"arm": arm.name, "diverged": run.diverged}
    run.tell(Ended(arm.name, "done"))
    return {"arm": arm.name}


def run_arm_safely(study: StudyConfig, arm: Arm, study_dir: str | Path, base_path: str, queue=None) -> dict:
    """`run_arm` under the arm's lease, after checking its checkpoint and final files against the store.

    Returns {"arm", ...} with "claimed" (another live process holds the arm), "skipped" (done and
    intact) or "failed" (any exception: recorded as the arm's error, the study goes on)."""
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
        result = run_arm(study, arm, directory, base_path, queue)
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
                queue.put(Ended(arm.name, "failed", reason))
        return {"arm": arm.name, "failed": reason}
    finally:
        if lease is not None:
            lease.release()
        store.refresh_snapshot()
