"""The fork server and the sandbox's processes: supervisor, test runner (PID 1) and candidate.

`learnforget.evaluate.sandbox` (the API, and the threat model) starts this file as
`python -I -S sandbox_server.py CONFIG_JSON`, so it imports only the standard library; every process
below the server is a fork of it, none runs `exec`.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import sys
import time

RUNNER_UID, CANDIDATE_UID = 65533, 65534
"""Unprivileged uids of the test runner and of the candidate (different, so neither can signal the other)."""
MAX_MESSAGE = 64 << 20
"""Largest plain-data message between runner and candidate, in bytes."""
ALL_LAYERS = (
    "pidns mountns netns ipcns utsns minimal-root readonly-root no-caps unprivileged-uid no-new-privs"
    " seccomp rlimits"
).split()
"""Every kernel layer, in the order they are reported when they hold (as root all of them do)."""
CGROUP_LAYER = "memory-cgroup"
"""Reported after ALL_LAYERS when the sandbox ran in a cgroup of its own that bounds its total memory."""
TIMEOUT_RANGE_S = (0.01, 3600.0)
"""Shortest and longest timeout_s honoured: below 10 ms nothing can run (and setitimer rounds a tiny value
to 0, which disables the timer); an hour is far beyond any test."""


def _read_only_paths() -> list[str]:
    """Host paths the sandbox sees read-only: system libraries and this interpreter's standard library."""
    paths = ["/usr", "/lib", "/lib64", "/bin", "/lib32", "/libx32"]
    paths += [os.path.realpath(path) for path in sys.path if path]  # -I -S: the standard library only
    chosen: list[str] = []
    for path in dict.fromkeys(paths):  # skip what an earlier bind already shows
        if os.path.lexists(path) and not any(path.startswith(done + "/") for done in chosen):
            chosen.append(path)
    return chosen


# ---------------------------------------------------------------- fork server and supervisor

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = {"pidns": _CLONE_NEWPID, "mountns": _CLONE_NEWNS, "netns": _CLONE_NEWNET}
_NAMESPACES |= {"ipcns": _CLONE_NEWIPC, "utsns": _CLONE_NEWUTS}
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MS_REC, _MS_PRIVATE, _MNT_DETACH = 16384, 1 << 18, 2


def _server_main(config: dict) -> None:
    """Keep sandboxes set up ahead (workers running, as many more being prepared); one job each."""
    import socket

    timeout_s = config["timeout_s"]  # checked by SandboxLimits; again here, where the timer is set
    if type(timeout_s) not in (int, float) or not TIMEOUT_RANGE_S[0] <= timeout_s <= TIMEOUT_RANGE_S[1]:
        raise SystemExit(f"timeout_s {timeout_s!r} is outside {TIMEOUT_RANGE_S}")
    jobs = socket.socket(fileno=config["socket_fd"])
    config["read_only"] = _read_only_paths()
    config["server_pid"] = os.getpid()
    config["cgroups"] = _cgroup_parents() if config["cgroup"] and os.geteuid() == 0 else []
    _remove_stale_cgroups(config["cgroups"])
    ended: set[str] = set()  # cgroups of supervisors that have exited, removed once their sandbox is gone
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_child_subreaper = 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)  # killed sandboxes whose supervisor is gone end up here
    workers = config["workers"]
    idle: dict[int, socket.socket] = {}  # supervisor pid -> its job socket, in start order
    busy: set[int] = set()
    more, started = True, 0
    while more or busy:
        while more and len(idle) + len(busy) < 2 * workers and started < config["jobs"]:
            started += 1
            pid, channel = _start_sandbox(libc, config, [jobs, *idle.values()])
            idle[pid] = channel
        if more and len(busy) < workers:
            message, fds, _, _ = socket.recv_fds(jobs, 4096, 2)
            if not message:
                more = False
                continue
            pid, channel = next(iter(idle.items()))
            del idle[pid]
            try:
                socket.send_fds(channel, [message], fds)
                busy.add(pid)
            except OSError:  # the sandbox died while being set up
                lost = {"id": json.loads(message)["id"], "result": "failed: sandbox setup", "isolation": []}
                os.write(1, (json.dumps(lost) + "\n").encode())
            channel.close()
            for fd in fds:
                os.close(fd)
        else:
            pid = os.wait()[0]
            busy.discard(pid)
            if pid in idle:
                idle.pop(pid).close()
            ended.update(_sandbox_cgroups(config, pid))
            _remove_cgroups(ended)
    for channel in idle.values():  # unused sandboxes see the end of their socket and stop
        channel.close()
    while True:  # reap every sandbox, so that none outlives this call
        try:
            ended.update(_sandbox_cgroups(config, os.wait()[0]))
        except ChildProcessError:
            break
    _remove_cgroups(ended)


def _start_sandbox(libc: ctypes.CDLL, config: dict, others: list) -> tuple[int, object]:
    """Fork a supervisor that sets up one sandbox and waits for its job on the returned socket."""
    import socket

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        try:
            for sock in (ours, *others):  # other sandboxes' sockets: their ends must close with the server
                sock.close()
            _supervise(libc, theirs, config)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours


def _supervise(libc: ctypes.CDLL, jobs, config: dict) -> None:
    """Trusted side of one sandbox: namespaces, its PID 1, then one job: wall-clock kill, one result line."""
    import select
    import socket

    cgroups = _make_cgroups(config)
    layers = _enter_namespaces(libc, config)
    workdir = None
    if "mountns" not in layers:  # no private /tmp: a host temp dir, removed below
        import tempfile

        workdir = tempfile.mkdtemp(prefix="learnforget-sandbox-")
        os.chmod(workdir, 0o777)
    to_init, init_jobs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (read_end, to_init.detach(), jobs.detach()):
            os.close(fd)
        _sandbox_init(libc, init_jobs, config, layers, workdir, write_end, cgroups)
    os.close(write_end)
    init_jobs.close()
    message, fds, _, _ = socket.recv_fds(jobs, 4096, 2)
    deadline = time.monotonic() + config["timeout_s"] + config["startup_grace_s"]
    if message:
        socket.send_fds(to_init, [message], fds)
        for fd in fds:
            os.close(fd)
        # PID 1 writes its report in one write just before it exits: wait for that, not for the exit,
        # which also tears down its namespaces (slow); the fork server reaps it.
        ready = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))[0]
        report = os.read(read_end, 65536) if ready else b""
    for target in (pid, -pid):  # PID 1 takes its namespace with it; the group is for the no-pidns case
        try:
            os.kill(target, signal.SIGKILL)
        except OSError:
            pass
    if workdir is not None:
        os.waitpid(pid, 0)
        shutil.rmtree(workdir, ignore_errors=True)
    if not message:  # no job came: the run is over
        return
    try:
        parsed = json.loads(report)
        result, inner_layers = str(parsed["result"]), list(parsed["layers"])
    except (ValueError, KeyError, TypeError):
        inner_layers = []
        if not ready:
            result = "timed out"
        else:  # PID 1 died without a report
            _, status = os.waitpid(pid, 0)
            result = f"failed: sandbox stopped ({_describe_exit(os.waitstatus_to_exitcode(status))})"
    held = [layer for layer in [*ALL_LAYERS, CGROUP_LAYER] if layer in layers or layer in inner_layers]
    line = json.dumps({"id": json.loads(message)["id"], "result": result[:1000], "isolation": held}) + "\n"
    os.write(1, line.encode())  # one write under PIPE_BUF: lines of parallel supervisors never mix


def _enter_namespaces(libc: ctypes.CDLL, config: dict) -> list[str]:
    """New PID, mount, network, IPC and UTS namespaces; as root directly, else in a user namespace."""
    wanted = sum(_NAMESPACES.values())
    if libc.unshare(wanted) == 0:
        return list(_NAMESPACES)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(wanted | _CLONE_NEWUSER) == 0:
        try:  # root inside maps to us outside; the sandbox then drops that root's capabilities
            for path, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{path}", "w") as file:
                    file.write(text)
        except OSError:
            pass
        return list(_NAMESPACES) + ["userns"]
    held = []
    for name, flag in _NAMESPACES.items():
        if libc.unshare(flag) == 0:
            held.append(name)
    return held


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


# ---------------------------------------------------------------- memory cgroups (one per sandbox)

_CGROUP_PREFIX = "learnforget-sandbox-"
_CGROUP_LEAF = "learnforget-scorer"
"""cgroup v2: where the scorer's group's own processes move, so that the group may have limited children."""


def _cgroup_parents() -> list[tuple[str, str]]:
    """Where sandboxes' cgroups go: [(our v2 group, "v2")], or v1 [(memory group, "memory"), (pids group,
    "pids")]; [] where no memory controller can be had (the sandbox then runs without the cgroup layer)."""
    mounts, own = {}, {}  # controller ("" for cgroup v2) -> (mount point, its root), and -> our group
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                fstype, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3].split(",")
                for name in [""] if fstype == "cgroup2" else ["memory", "pids"] if fstype == "cgroup" else []:
                    if not name or name in options:
                        mounts.setdefault(name, (fields[4], fields[3].rstrip("/")))
        with open("/proc/self/cgroup") as file:
            for line in file:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    if name in mounts and (path + "/").startswith(mounts[name][1] + "/"):
                        own[name] = mounts[name][0] + path.rstrip("/").removeprefix(mounts[name][1])
        if "" in own:
            group = own[""]
            if os.path.basename(group) == _CGROUP_LEAF:  # an earlier scorer moved us here
                group = os.path.dirname(group)
            with open(f"{group}/cgroup.controllers") as file:
                available = file.read().split()
            if "memory" in available:
                _enable_v2_controllers(group, [name for name in ("memory", "pids") if name in available])
                return [(group, "v2")]
        if "memory" in own:
            return [(own["memory"], "memory")] + ([(own["pids"], "pids")] if "pids" in own else [])
    except (OSError, ValueError, IndexError):
        pass
    return []


def _enable_v2_controllers(group: str, controllers: list[str]) -> None:
    """Let `group`'s children have memory (and pids) limits; its own processes first move into a leaf
    child, because a v2 group that hands controllers to children may hold no processes itself."""
    with open(f"{group}/cgroup.subtree_control") as file:
        missing = [name for name in controllers if name not in file.read().split()]
    if not missing:
        return
    text = " ".join("+" + name for name in missing)
    try:
        with open(f"{group}/cgroup.subtree_control", "w") as file:
            file.write(text)
        return
    except OSError:  # EBUSY: the group holds processes (ours among them)
        pass
    os.makedirs(f"{group}/{_CGROUP_LEAF}", exist_ok=True)
    with open(f"{group}/cgroup.procs") as file:
        pids = file.read().split()
    for pid in pids:
        try:
            with open(f"{group}/{_CGROUP_LEAF}/cgroup.procs", "w") as file:
                file.write(pid)
        except OSError:  # gone, or a kernel thread
            pass
    with open(f"{group}/cgroup.subtree_control", "w") as file:
        file.write(text)


def _sandbox_cgroups(config: dict, supervisor_pid: int) -> list[str]:
    """The cgroup directories of the sandbox that this supervisor set up."""
    name = f"{_CGROUP_PREFIX}{config['server_pid']}-{supervisor_pid}"
    return [f"{parent}/{name}" for parent, _ in config["cgroups"]]


def _make_cgroups(config: dict) -> list[str]:
    """Make this sandbox's cgroup(s): total memory (page cache, memfds, socket and pipe buffers, kernel
    memory) at most memory_mb, no swap, at most max_processes + 8 tasks. [] where that cannot be had."""
    memory, tasks = str(config["memory_mb"] << 20), str(config["max_processes"] + 8)
    settings = {  # file -> (value, required)
        "v2": {"memory.max": (memory, True), "memory.swap.max": ("0", False)}
        | {"memory.oom.group": ("1", False), "pids.max": (tasks, False)},
        "memory": {"memory.limit_in_bytes": (memory, True), "memory.memsw.limit_in_bytes": (memory, False)}
        | {"memory.oom_control": ("0", False)},  # OOM-kill at the limit, even where the parent may not
        "pids": {"pids.max": (tasks, False)},
    }
    made = []
    try:
        for path, (_, kind) in zip(_sandbox_cgroups(config, os.getpid()), config["cgroups"], strict=True):
            os.mkdir(path)
            made.append(path)
            for file, (value, required) in settings[kind].items():
                try:
                    with open(f"{path}/{file}", "w") as handle:
                        handle.write(value)
                except OSError:
                    if required:
                        raise
        return made
    except OSError:
        _remove_cgroups(set(made))
        return []


def _join_cgroups(cgroups: list[str]) -> bool:
    """Move the calling process into the sandbox's cgroup(s); True when it is in all of them."""
    try:
        for path in cgroups:
            with open(f"{path}/cgroup.procs", "w") as file:
                file.write("0")
        return True
    except OSError:
        return False


def _remove_cgroups(paths: set[str]) -> None:
    """Remove the cgroups whose processes are all gone (the others stay in `paths`, for a later try)."""
    for path in list(paths):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: a process of the sandbox is still exiting
            continue
        paths.discard(path)


def _remove_stale_cgroups(parents: list[tuple[str, str]]) -> None:
    """Remove sandbox cgroups that a fork server killed before it could clean up left behind."""
    for parent, _ in parents:
        try:
            names = [name for name in os.listdir(parent) if name.startswith(_CGROUP_PREFIX)]
        except OSError:
            continue
        for name in names:
            try:
                os.kill(int(name.removeprefix(_CGROUP_PREFIX).split("-")[0]), 0)
            except (ProcessLookupError, ValueError):
                _remove_cgroups({f"{parent}/{name}"})
            except OSError:
                pass


# ---------------------------------------------------------------- the sandbox: runner (PID 1) and candidate


class _Timeout(BaseException):
    """Raised by SIGALRM in the runner; BaseException so that `except Exception` in tests does not swallow it."""


class _Violation(BaseException):
    """The candidate broke the call protocol; fails the check whatever the test code catches."""


def _sandbox_init(
    libc: ctypes.CDLL, jobs, config: dict, layers: list, workdir: str | None, result_fd: int, cgroups: list
) -> None:
    """PID 1 of the sandbox: build the root, fork the candidate, then take one job and report. Never returns."""
    import socket

    verified, setup_error = [], None
    try:
        if cgroups and _join_cgroups(cgroups):  # first, so that the candidate is born inside
            layers.append(CGROUP_LAYER)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = {0, 1, 2, result_fd, jobs.fileno()}
        for fd in _open_fds():
            if fd not in keep:
                os.closerange(fd, fd + 1)
        if "mountns" in layers:
            layers += _build_root(libc, config)
        workdir = "/tmp" if "minimal-root" in layers else workdir
        requests, replies = os.pipe(), os.pipe()
        child = os.fork()
        if child == 0:
            for fd in (result_fd, jobs.detach(), requests[1], replies[0]):
                os.close(fd)
            _candidate_main(libc, requests[0], replies[1], config, layers, workdir)
        for fd in (requests[0], replies[1]):
            os.close(fd)
        verified = _confine(libc, config, RUNNER_UID, workdir, limit_processes=False)
    except BaseException as error:
        setup_error = f"failed: sandbox setup ({type(error).__name__}: {error})"
    # The job arrives only now: the candidate, forked above, never held the test.
    message, fds, _, _ = socket.recv_fds(jobs, 4096, 2)
    if not message:
        os._exit(0)
    result = setup_error
    if result is None:
        try:
            header = json.loads(message)
            candidate_source = _read_all(fds[0])
            runner_source = _read_all(fds[1]) if len(fds) > 1 else None
            channel = _Channel(replies[0], requests[1])
            job = {"source": candidate_source, "entry_point": header["entry_point"]}
            result, candidate_layers = _run_runner(job, runner_source, channel, child, config)
            verified = [layer for layer in verified if layer in candidate_layers]
        except BaseException as error:
            result = f"failed: sandbox ({type(error).__name__}: {error})"
    report = json.dumps({"result": result[:1000], "layers": [*layers, *verified]})
    os.write(result_fd, report.encode()[:4000])
    os._exit(0)


def _open_fds() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _read_all(fd: int) -> str:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "surrogatepass")


def _build_root(libc: ctypes.CDLL, config: dict) -> list[str]:
    """Pivot into a tmpfs root holding read-only binds of the interpreter's files and a private /tmp."""

    def mount(source, target, fstype, flags, data=None) -> None:
        encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
        if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")

    mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates back to the host
    root = "/tmp"  # a fresh tmpfs on top of it, seen only in this mount namespace
    mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    for path in config["read_only"]:
        inside = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            os.symlink(os.readlink(path), inside)
            continue
        if os.path.isdir(path):
            os.makedirs(inside, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            open(inside, "w").close()
        mount(path, inside, None, _MS_BIND)
        mount(None, inside, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.makedirs(root + "/dev")
    for device in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, _MS_BIND)
        mount(None, f"{root}/dev/{device}", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID)
    os.makedirs(root + "/tmp")
    size = f"size={config['file_size_mb']}m,mode=1777"
    mount("tmpfs", root + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, size)
    os.chdir(root)
    if libc.syscall(_SYSCALLS[os.uname().machine]["pivot_root"], b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    if libc.umount2(b".", _MNT_DETACH) != 0:  # the old root, stacked under the new one
        raise OSError(ctypes.get_errno(), "umount old root")
    os.chdir("/")
    held = ["minimal-root"]
    try:
        mount(None, "/", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        held.append("readonly-root")
    except OSError:
        pass
    return held


def _confine(
    libc: ctypes.CDLL, config: dict, uid: int, workdir: str | None, limit_processes: bool
) -> list[str]:
    """Drop every privilege, set rlimits, install seccomp; returns the layers verified to hold."""
    import resource

    held = []
    if workdir is not None:
        os.chdir(workdir)
    pr_capbset_read, pr_capbset_drop, pr_cap_ambient, clear_all = 23, 24, 47, 4
    libc.prctl(pr_cap_ambient, clear_all, 0, 0, 0)
    cap = 0
    while libc.prctl(pr_capbset_read, cap, 0, 0, 0) >= 0:
        libc.prctl(pr_capbset_drop, cap, 0, 0, 0)
        cap += 1
    try:
        os.setgroups([])
    except OSError:
        pass
    try:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        held.append("unprivileged-uid")
    except OSError:  # e.g. a user namespace that maps one uid: keep it, but without capabilities
        pass
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    libc.capset(header, data)
    libc.capget(header, data)
    if not any(data) and all(libc.prctl(pr_capbset_read, c, 0, 0, 0) == 0 for c in range(cap)):
        held.append("no-caps")
    cpu_s = math.ceil(config["timeout_s"] + config["startup_grace_s"])
    limits = {
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.RLIMIT_AS: (config["memory_mb"] << 20,) * 2,
        resource.RLIMIT_FSIZE: (config["file_size_mb"] << 20,) * 2,
        resource.RLIMIT_CORE: (0, 0),
        # Socket and pipe buffers sit outside RLIMIT_AS: each open or in-flight descriptor may hold one.
        resource.RLIMIT_NOFILE: (config["open_files"],) * 2,
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
    }
    if limit_processes:
        limits[resource.RLIMIT_NPROC] = (config["max_processes"],) * 2
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    for kind, (soft, hard) in limits.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))
    held.append("rlimits")
    pr_set_no_new_privs, pr_get_no_new_privs = 38, 39
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) == 0 and libc.prctl(pr_get_no_new_privs, 0, 0, 0, 0) == 1:
        held.append("no-new-privs")
    if _install_seccomp(libc):
        held.append("seccomp")
    return held


# Syscall numbers per architecture: the deny-list, the calls checked by argument, and clone / clone3.
_SYSCALLS = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "pivot_root": 155,
        "clone": 56,
        "clone3": 435,
        "socket": 41,
        "socketpair": 53,
        "fcntl": 72,
        "denied": (
            57, 58, 59, 322,  # fork vfork execve execveat
            165, 166, 155, 161, 308, 272,  # mount umount2 pivot_root chroot setns unshare
            101, 310, 311, 321, 298, 323,  # ptrace process_vm_readv/writev bpf perf_event_open userfaultfd
            248, 249, 250, 246, 320, 175, 313, 176,  # add_key request_key keyctl kexec* *_module
            303, 304, 428, 429, 430, 431, 432, 433, 442,  # *_handle_at, new mount API, mount_setattr
            163, 167, 168, 169, 172, 173,  # acct swapon swapoff reboot iopl ioperm
            425, 426, 427, 206, 207, 208, 209, 210, 333,  # io_uring_*, io_* (AIO)
            319, 447, 29, 30, 31, 67, 64, 65, 66, 220, 68, 69, 70, 71,  # memfd_*, SysV shm, sem, msg
            240, 241, 242, 243, 244, 245, 54,  # mq_* (POSIX message queues), setsockopt
            300, 301, 312, 440, 448, 438, 256, 279,  # fanotify_* kcmp process_madvise/mrelease pidfd_getfd *_pages
            154, 135, 103, 179, 443, 153, 134, 136, 139,  # modify_ldt personality syslog quotactl* vhangup uselib ...
        ),
    },
    "aarch64": {  # no fork/vfork syscalls on this architecture
        "audit_arch": 0xC00000B7,
        "pivot_root": 41,
        "clone": 220,
        "clone3": 435,
        "socket": 198,
        "socketpair": 199,
        "fcntl": 25,
        "denied": (
            221, 281, 40, 39, 41, 51, 268, 97, 117, 270, 271, 280, 241, 282,
            217, 218, 219, 104, 294, 105, 273, 106, 264, 265, 428, 429, 430, 431, 432, 433, 442,
            89, 224, 225, 142,
            425, 426, 427, 0, 1, 2, 3, 4, 292,
            279, 447, 194, 196, 195, 197, 190, 193, 191, 192, 186, 189, 188, 187,
            180, 181, 182, 183, 184, 185, 208,
            262, 263, 272, 440, 448, 438, 238, 239,
            92, 116, 60, 443, 58,
        ),
    },
}  # fmt: skip
_AF_UNIX, _F_SETPIPE_SZ = 1, 1031
"""The only socket family allowed (the network namespace is empty anyway); the pipe resize that is refused."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp(libc: ctypes.CDLL) -> bool:
    """Deny the syscalls in _SYSCALLS (EPERM), sockets other than AF_UNIX and pipe resizes; clone only
    for threads without new namespaces."""
    abi = _SYSCALLS.get(os.uname().machine)
    if abi is None:
        return False
    load, jump_eq, jump_ge, jump_set, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW / ERRNO(...)
    clone_thread = 0x00010000
    new_namespaces = sum(_NAMESPACES.values()) | _CLONE_NEWUSER | 0x02000000  # ... and CLONE_NEWCGROUP
    program = [(load, 0, 0, 4), (jump_eq, 1, 0, abi["audit_arch"]), (ret, 0, 0, eperm), (load, 0, 0, 0)]
    program += [(jump_ge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # x86 x32 syscalls share the audit arch
    for number in abi["denied"]:
        program += [(jump_eq, 0, 1, number), (ret, 0, 0, eperm)]
    for name, argument, value, verdict_if_equal in (
        ("socket", 0, _AF_UNIX, allow),  # the family: AF_UNIX only
        ("socketpair", 0, _AF_UNIX, allow),
        ("fcntl", 1, _F_SETPIPE_SZ, eperm),  # larger pipe buffers: memory outside RLIMIT_AS
    ):
        other = eperm if verdict_if_equal == allow else allow
        program += [(jump_eq, 0, 4, abi[name]), (load, 0, 0, 16 + 8 * argument)]  # the argument's low half
        program += [(jump_eq, 0, 1, value), (ret, 0, 0, verdict_if_equal), (ret, 0, 0, other)]
    program += [(jump_eq, 0, 1, abi["clone3"]), (ret, 0, 0, enosys)]  # libc then falls back to clone
    program += [(jump_eq, 0, 5, abi["clone"]), (load, 0, 0, 16), (jump_set, 0, 1, new_namespaces)]
    program += [(ret, 0, 0, eperm), (jump_set, 1, 0, clone_thread), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    fprog = _SockFprog(len(program), filters)
    pr_set_seccomp, pr_get_seccomp, seccomp_mode_filter = 22, 21, 2
    libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0)
    return libc.prctl(pr_get_seccomp, 0, 0, 0, 0) == seccomp_mode_filter


class _Channel:
    """Length-prefixed JSON messages over a pipe pair."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd

    def send(self, message: object) -> None:
        data = json.dumps(message).encode("utf-8", "surrogatepass")
        data = len(data).to_bytes(4, "big") + data
        while data:
            data = data[os.write(self.write_fd, data) :]

    def receive(self) -> object:
        size = int.from_bytes(self._read(4), "big")
        if size > MAX_MESSAGE:
            raise _Violation(f"message of {size} bytes")
        return json.loads(self._read(size).decode("utf-8", "surrogatepass"))

    def _read(self, size: int) -> bytes:
        chunks = []
        while size:
            chunk = os.read(self.read_fd, min(size, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)


_TAGS = {list: "l", tuple: "t", set: "s", frozenset: "f", dict: "d"}


def _encode(value: object, depth: int = 0) -> object:
    """Plain data as JSON: exact builtin types only, containers tagged so that types survive."""
    kind = type(value)
    if depth > 200:
        raise TypeError("value nested too deeply")
    if value is None or kind in (bool, int, float, str):
        return value
    if kind in (list, tuple, set, frozenset):
        return {_TAGS[kind]: [_encode(item, depth + 1) for item in value]}
    if kind is dict:
        return {"d": [[_encode(k, depth + 1), _encode(v, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"a value of type {kind.__name__} is not plain data")


def _decode(data: object) -> object:
    """Inverse of _encode for data from the other side; anything malformed is a _Violation."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is not dict or len(data) != 1:
        raise _Violation("malformed value")
    (tag, body), = data.items()  # fmt: skip
    try:
        if tag == "b":
            return bytes.fromhex(body)
        if tag == "c":
            return complex(*[float(part) for part in body])
        if tag == "d":
            return {_decode(key): _decode(value) for key, value in body}
        return {"l": list, "t": tuple, "s": set, "f": frozenset}[tag](_decode(item) for item in body)
    except _Violation:
        raise
    except Exception as error:  # noqa: BLE001 (wrong tag, unhashable key, wrong shape: all malformed)
        raise _Violation(f"malformed value ({type(error).__name__})") from None


def _run_runner(job: dict, source: str | None, channel: _Channel, child: int, config: dict):
    """The trusted side: hand the candidate its code, run the test against it; returns (result, layers)."""
    sys.set_int_max_str_digits(0)

    def on_alarm(signum: int, frame: object) -> None:
        raise _Timeout

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, config["timeout_s"])
    layers: list = []
    try:
        layers = channel.receive()["layers"]  # sent before any sample code ran
        channel.send(job)
        first = channel.receive()
        if source is None:  # a bare program: it reports its own result
            return str(first["result"]), layers
        if "error" in first:
            return "failed: " + str(first["error"]).removeprefix("failed: ")[:1000], layers
        if first != {"ready": True}:
            raise _Violation("unexpected message")
        return _run_test(job["entry_point"], source, channel), layers
    except _Timeout:
        return "timed out", layers
    except EOFError:  # the candidate died
        signal.setitimer(signal.ITIMER_REAL, 0)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        if code == -signal.SIGXCPU:
            return "timed out (CPU time limit)", layers
        return f"failed: candidate {_describe_exit(code)}", layers
    except _Violation as error:
        return f"failed: protocol violation ({error})", layers
    except Exception as error:  # noqa: BLE001 (e.g. malformed messages: never a pass)
        return f"failed: protocol violation ({type(error).__name__})", layers
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_test(entry_point: str, source: str, channel: _Channel) -> str:
    """exec prompt + test, then check(candidate) with the candidate behind the pipe."""
    import builtins

    violations: list[BaseException] = []  # kept, so that a test catching them cannot hide them
    calls = 0  # a test that never calls the candidate cannot fail it

    def candidate(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        try:
            request = {"args": _encode(list(args)), "kwargs": _encode(kwargs)}
            channel.send(request)
            reply = channel.receive()
            if type(reply) is dict and set(reply) == {"return"}:
                return _decode(reply["return"])
            if (
                type(reply) is not dict
                or set(reply) != {"raise", "message"}
                or type(reply["raise"]) is not str
            ):
                raise _Violation("malformed reply")
            kind, message = getattr(builtins, reply["raise"], None), str(reply["message"])
        except _Timeout:
            raise
        except (EOFError, _Violation) as error:  # the candidate died or broke the protocol
            violations.append(error)
            raise
        except BaseException as error:  # noqa: BLE001 (an argument that is not plain data, a huge reply)
            violations.append(_Violation(f"{type(error).__name__}: {error}"[:300]))
            raise violations[-1] from None
        if kind in (StopIteration, StopAsyncIteration):  # as PEP 479: it must not end the test's map() early
            message = f"the candidate raised {reply['raise']}" + (f": {message}" if message else "")
            kind = RuntimeError
        try:
            error = kind(message) if isinstance(kind, type) and issubclass(kind, Exception) else None
        except Exception:  # noqa: BLE001 (an exception class that needs other arguments)
            error = None
        raise error if error is not None else Exception(f"{reply['raise']}: {message}")

    prompt, test = json.loads(source)
    namespace: dict = {}
    try:
        exec(_compile_prompt(prompt), namespace)  # helpers the test may use, from the prompt, not the sample
        namespace[entry_point] = candidate
        exec(compile(test, "<test>", "exec"), namespace)
        exec(compile(f"check({entry_point})", "<test>", "exec"), namespace)
    except _Timeout:
        raise
    except BaseException as error:  # noqa: BLE001 (a failed test is a result)
        if violations:
            raise violations[0] from None
        if isinstance(error, _Violation):
            raise
        return _failure(error)
    if violations:  # the test caught what a broken candidate raised: still no pass
        raise violations[0]
    if calls == 0:
        return "failed: the test never called the candidate"
    return "passed"


def _compile_prompt(prompt: str):
    """The prompt as a module: it ends where the body starts, so a docstring-less one gets a `pass`."""
    for body in ("", "\n    pass\n"):
        try:
            return compile(prompt + body, "<prompt>", "exec")
        except SyntaxError:
            continue
    return compile("", "<prompt>", "exec")


def _failure(error: BaseException) -> str:
    try:
        message = str(error).strip().replace("\n", " ")[:300]
    except Exception:  # noqa: BLE001 (a hostile __str__)
        message = ""
    return f"failed: {type(error).__name__}" + (f": {message}" if message else "")


def _candidate_main(
    libc: ctypes.CDLL, read_fd: int, write_fd: int, config: dict, layers: list, workdir: str | None
) -> None:
    """The untrusted side: confine, get and run prompt + completion, answer the runner's calls. Never returns."""
    channel = _Channel(read_fd, write_fd)
    try:
        held = _confine(libc, config, CANDIDATE_UID, workdir, limit_processes=True)
        channel.send({"layers": held})
        header = channel.receive()
        source = header["source"]
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir})
        # With the kernel layers in place the guard adds nothing (and ctypes, multiprocessing can do no harm).
        if config["guard"] and not set(ALL_LAYERS) <= {*layers, *held}:
            _reliability_guard(workdir)
        sys.set_int_max_str_digits(0)
        namespace: dict = {}
        try:
            exec(compile(source, "<sample>", "exec"), namespace)
        except BaseException as error:  # noqa: BLE001 (any failure of the program is a result)
            channel.send(
                {"result": _failure(error)} if header["entry_point"] is None else {"error": _failure(error)}
            )
            os._exit(0)
        if header["entry_point"] is None:
            channel.send({"result": "passed"})
            os._exit(0)
        function = namespace.get(header["entry_point"])
        if not callable(function):
            channel.send({"error": f"NameError: {header['entry_point']!r} is not defined by the completion"})
            os._exit(0)
        channel.send({"ready": True})
        while True:
            request = channel.receive()
            try:
                reply = {"return": _encode(function(*_decode(request["args"]), **_decode(request["kwargs"])))}
            except BaseException as error:  # noqa: BLE001 (the test decides what an exception means)
                message = _failure(error).partition(": ")[2].partition(": ")[2]
                reply = {"raise": type(error).__name__, "message": message}
            channel.send(reply)
    except BaseException:  # noqa: BLE001 (a broken pipe or a setup failure: the runner reports it)
        os._exit(1)


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
    _server_main(json.loads(sys.argv[1]))
