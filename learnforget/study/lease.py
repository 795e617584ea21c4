"""Leases on arms, so that several `learnforget run` processes on one study directory split the arms.

A lease is a file `leases/<arm id>.json` created with O_CREAT | O_EXCL (atomic on local filesystems
and on NFS v3+), holding its owner (host, pid); its modification time is the heartbeat, refreshed by a
background thread while the arm trains. The store is one file per process (see `store.py`), so the
claim itself cannot live in it; each training start is recorded there instead (`Store.record_start`).

A lease is stale when its heartbeat is older than `LEARNFORGET_LEASE_SECONDS` (default 120 s), or at
once when its owner is a process of this host that no longer exists. A stale lease is taken over by
renaming it away first: a rename succeeds for one process only, so two takers never both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LEASES_DIR = "leases"

POLL_SECONDS = 2.0  # how often a process waiting for a leased arm looks again


def stale_after() -> float:
    return float(os.environ.get("LEARNFORGET_LEASE_SECONDS", "120"))


def pid_exists(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The lease of one arm in one study directory."""

    def __init__(self, study_dir: str | Path, arm_id: str):
        self.path = Path(study_dir) / LEASES_DIR / f"{arm_id}.json"
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        """The current owner, or None when the lease is free or stale."""
        try:
            owner = json.loads(self.path.read_text() or "{}")
            age = time.time() - self.path.stat().st_mtime
        except (FileNotFoundError, ValueError):
            return None
        if age > stale_after():
            return None
        if owner.get("host") == self.owner["host"] and not pid_exists(int(owner.get("pid", 0))):
            return None
        return owner

    def acquire(self) -> bool:
        """Claim the arm; False when another live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self.holder() is not None:
                    return False
                taken = self.path.with_name(f".{self.path.name}.{self.owner['host']}-{self.owner['pid']}")
                try:
                    os.rename(self.path, taken)  # only one taker's rename finds the stale file
                    taken.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            self._thread = threading.Thread(target=self._heartbeat, daemon=True)
            self._thread.start()
            return True
        return False

    def _heartbeat(self) -> None:
        interval = max(0.05, stale_after() / 6)
        while not self._stop.wait(interval):
            if self.mine():
                os.utime(self.path)

    def mine(self) -> bool:
        try:
            return json.loads(self.path.read_text() or "{}") == self.owner
        except (FileNotFoundError, ValueError):
            return False

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.mine():  # a lease taken over after a stall belongs to its new owner
            self.path.unlink(missing_ok=True)
