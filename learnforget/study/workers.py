"""Worker processes for arms: forked from a server that has the heavy modules imported already.

A spawned worker imports torch, transformers and peft itself (about 6 s of CPU each), after the main
process has done the same. A fork server, started as soon as a study knows it will use workers, imports
them once while the main process starts up; every worker is then a fork of it, ready at once. The
server is a fresh single-threaded process, so forking it is safe where forking the main process is not
(the main process runs a progress thread and OpenMP threads).

A forked worker inherits the server's environment and working directory, which are those of the moment
the server started; the initializer applies the main process's current ones, so a worker sees what a
spawned one would.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing import get_all_start_methods, get_context

from learnforget.study.lease import pid_exists

PRELOAD = [
    "learnforget.study.arm",
    "learnforget.train.loop",
    "learnforget.evaluate.suites",
    "transformers",
    "peft",
]


def context():
    """The multiprocessing context for worker processes: fork server where the platform has one."""
    return get_context("forkserver" if "forkserver" in get_all_start_methods() else "spawn")


def start_early() -> None:
    """Start the fork server now, so that it imports the heavy modules while this process goes on."""
    ctx = context()
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver  # only this path needs it

    ctx.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()


def initializer_args() -> tuple:
    """What `initialize` needs from the main process, taken when the pool is made."""
    return (os.getpid(), dict(os.environ), os.getcwd())


def initialize(main_pid: int, environment: dict[str, str], cwd: str) -> None:
    """Worker initializer: the main process's environment and directory, and exit once it is gone."""
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(cwd)
    exit_with(main_pid)


def exit_with(main_pid: int) -> None:
    """Exit once the main process is gone. A SIGKILLed `learnforget run` must not leave workers training
    and writing the study behind the back of the rerun that resumes it. The main process is watched
    itself, not the parent: the fork server (a worker's parent) lives on as long as any worker does."""

    def watch() -> None:
        while _running(main_pid):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waiting to be reaped has)."""
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    return pid_exists(pid)  # no /proc (macOS)
