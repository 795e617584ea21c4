"""The sandbox's fork server and supervisors: sandboxes set up ahead, one job each, one result line each.

`learnforget.evaluate.sandbox` (the API, and the threat model) starts this file as
`python -I -S sandbox_server.py CONFIG_JSON`, so it and its parts import only the standard library;
every process below the server is a fork of it, none runs `exec`. Its parts: `sandbox_confine` (the
kernel layers), `sandbox_cgroups` (memory cgroups), `sandbox_runner` (the sandbox's PID 1, test runner
and candidate) and `sandbox_guard` (the in-process guard). Run as a script, where
`learnforget` cannot be imported, it stands in empty `learnforget` and `learnforget.evaluate` packages
whose path is its own directory: its parts load from beside it under their package names, no package
`__init__` runs, and `sys.path` is untouched, so the sandbox's read-only binds (`_read_only_paths`)
stay the standard library's.
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import types

if not __package__:  # run by path: its parts load from beside it through stand-in packages (see above)
    _HERE = os.path.dirname(os.path.abspath(__file__))
    for _name, _path in (("learnforget", []), ("learnforget.evaluate", [_HERE])):
        sys.modules[_name] = types.ModuleType(_name)
        sys.modules[_name].__path__ = _path

from learnforget.evaluate.sandbox_cgroups import (  # noqa: E402 (after the stand-in packages)
    CGROUP_LAYER,
    cgroup_parents,
    cgroup_paths,
    make_cgroups,
    remove_cgroups,
    remove_stale_cgroups,
)
from learnforget.evaluate.sandbox_confine import ALL_LAYERS, enter_namespaces  # noqa: E402
from learnforget.evaluate.sandbox_runner import describe_exit, sandbox_init  # noqa: E402

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


def _server_main(config: dict) -> None:
    """Keep sandboxes set up ahead (workers running, as many more being prepared); one job each."""
    timeout_s = config["timeout_s"]  # checked by SandboxLimits; again here, where the timer is set
    if type(timeout_s) not in (int, float) or not TIMEOUT_RANGE_S[0] <= timeout_s <= TIMEOUT_RANGE_S[1]:
        raise SystemExit(f"timeout_s {timeout_s!r} is outside {TIMEOUT_RANGE_S}")
    jobs = socket.socket(fileno=config["socket_fd"])
    config["read_only"] = _read_only_paths()
    config["server_pid"] = os.getpid()
    config["cgroups"] = cgroup_parents() if config["cgroup"] and os.geteuid() == 0 else []
    remove_stale_cgroups(config["cgroups"])
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
            ended.update(cgroup_paths(config, pid))
            remove_cgroups(ended)
    for channel in idle.values():  # unused sandboxes see the end of their socket and stop
        channel.close()
    while True:  # reap every sandbox, so that none outlives this call
        try:
            ended.update(cgroup_paths(config, os.wait()[0]))
        except ChildProcessError:
            break
    remove_cgroups(ended)


def _start_sandbox(libc: ctypes.CDLL, config: dict, others: list) -> tuple[int, object]:
    """Fork a supervisor that sets up one sandbox and waits for its job on the returned socket."""
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
    cgroups = make_cgroups(config)
    layers = enter_namespaces(libc, config)
    workdir = None
    if "mountns" not in layers:  # no private /tmp: a host temp dir, removed below
        workdir = tempfile.mkdtemp(prefix="learnforget-sandbox-")
        os.chmod(workdir, 0o777)
    to_init, init_jobs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (read_end, to_init.detach(), jobs.detach()):
            os.close(fd)
        sandbox_init(libc, init_jobs, config, layers, workdir, write_end, cgroups)
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
            result = f"failed: sandbox stopped ({describe_exit(os.waitstatus_to_exitcode(status))})"
    held = [layer for layer in [*ALL_LAYERS, CGROUP_LAYER] if layer in layers or layer in inner_layers]
    line = json.dumps({"id": json.loads(message)["id"], "result": result[:1000], "isolation": held}) + "\n"
    os.write(1, line.encode())  # one write under PIPE_BUF: lines of parallel supervisors never mix


if __name__ == "__main__":
    _server_main(json.loads(sys.argv[1]))
