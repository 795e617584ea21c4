"""An arm's files on disk: its directory, checkpoints (what resuming needs), and the checks that decide
whether a checkpoint or a finished arm's files can be trusted."""

from __future__ import annotations

from pathlib import Path

import torch

from learnforget.arms.build import trainable_state
from learnforget.config.arms import Arm
from learnforget.config.study import StudyConfig
from learnforget.errors import warn
from learnforget.files import file_sha256
from learnforget.runtime.sharding import is_sharded, load_full_state, trainable_names
from learnforget.study.store import Store


def arm_dir(study_dir: Path, arm: str) -> Path:
    return study_dir / "arms" / arm


def recorder(store: Store, study_dir: Path, path: Path):
    """A `record` callback for atomic_save that puts the checksum in the store."""
    return lambda digest, size: store.record_file(str(path.relative_to(study_dir)), digest, size)


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
