"""Running a study's arms: in this process, or in a pool of worker processes, relaying their progress."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.managers import SyncManager
from pathlib import Path

import torch

from learnforget.config.arms import Arm
from learnforget.config.study import StudyConfig
from learnforget.errors import StorageError
from learnforget.runtime.distributed import is_distributed
from learnforget.study import workers
from learnforget.study.arm import run_arm_safely
from learnforget.study.base_model import run_base
from learnforget.study.events import Ended
from learnforget.study.lease import POLL_SECONDS, Lease
from learnforget.study.store import Store
from learnforget.study.store_schema import FAILED


def uses_pool(study: StudyConfig, arms: list[Arm]) -> bool:
    """Whether `run_arms` trains these arms in a pool of worker processes (else in this process)."""
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


def _run_pass(
    study: StudyConfig, study_dir: Path, base_path: str, arms: list[Arm], on_message, with_base: bool = False
) -> list[dict]:
    if not arms:
        return []
    if not uses_pool(study, arms):  # launched processes each run every arm
        threads = torch.get_num_threads()
        try:
            return [run_arm_safely(study, arm, study_dir, base_path, _Relay(on_message)) for arm in arms]
        finally:
            torch.set_num_threads(threads)

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
                pool.submit(run_arm_safely, study, a, study_dir, base_path, queue)  # typed objects, pickled
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
                    on_message(Ended(arm.name, "failed", reason))
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
    import queue as queue_module  # only this path needs it

    try:
        message = queue.get(timeout=timeout) if timeout else queue.get_nowait()
        on_message(message)
        while True:
            on_message(queue.get_nowait())
    except queue_module.Empty:
        pass
