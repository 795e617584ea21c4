"""Inside one sandbox: its PID 1, the trusted test runner, and the untrusted candidate it calls through a pipe.

PID 1 (`sandbox_init`) joins the sandbox's cgroup, builds the minimal root, forks the candidate and
confines itself; then it takes the job, hands the candidate its code and runs the test, calling the
candidate with plain data only (see `learnforget.evaluate.sandbox` for the protocol and the threat
model), and reports one result. Standard library only: a part of the fork server, which
`sandbox_server.py` imports by path under `python -I -S`.
"""

from __future__ import annotations

import builtins
import ctypes
import json
import os
import signal
import socket
import sys

from learnforget.evaluate.sandbox_cgroups import CGROUP_LAYER, join_cgroups
from learnforget.evaluate.sandbox_confine import ALL_LAYERS, build_root, confine_process
from learnforget.evaluate.sandbox_guard import reliability_guard

RUNNER_UID, CANDIDATE_UID = 65533, 65534
"""Unprivileged uids of the test runner and of the candidate (different, so neither can signal the other)."""
MAX_MESSAGE = 64 << 20
"""Largest plain-data message between runner and candidate, in bytes."""


class _Timeout(BaseException):
    """Raised by SIGALRM in the runner; BaseException so that `except Exception` in tests does not swallow it."""


class _Violation(BaseException):
    """The candidate broke the call protocol; fails the check whatever the test code catches."""


def sandbox_init(
    libc: ctypes.CDLL, jobs, config: dict, layers: list, workdir: str | None, result_fd: int, cgroups: list
) -> None:
    """PID 1 of the sandbox: build the root, fork the candidate, then take one job and report. Never returns."""
    verified, setup_error = [], None
    try:
        if cgroups and join_cgroups(cgroups):  # first, so that the candidate is born inside
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
            layers += build_root(libc, config)
        workdir = "/tmp" if "minimal-root" in layers else workdir
        requests, replies = os.pipe(), os.pipe()
        child = os.fork()
        if child == 0:
            for fd in (result_fd, jobs.detach(), requests[1], replies[0]):
                os.close(fd)
            _candidate_main(libc, requests[0], replies[1], config, layers, workdir)
        for fd in (requests[0], replies[1]):
            os.close(fd)
        verified = confine_process(libc, config, RUNNER_UID, workdir, limit_processes=False)
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
        return f"failed: candidate {describe_exit(code)}", layers
    except _Violation as error:
        return f"failed: protocol violation ({error})", layers
    except Exception as error:  # noqa: BLE001 (e.g. malformed messages: never a pass)
        return f"failed: protocol violation ({type(error).__name__})", layers
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _run_test(entry_point: str, source: str, channel: _Channel) -> str:
    """exec prompt + test, then check(candidate) with the candidate behind the pipe."""
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
        held = confine_process(libc, config, CANDIDATE_UID, workdir, limit_processes=True)
        channel.send({"layers": held})
        header = channel.receive()
        source = header["source"]
        os.environ.clear()
        os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir})
        # With the kernel layers in place the guard adds nothing (and ctypes, multiprocessing can do no harm).
        if config["guard"] and not set(ALL_LAYERS) <= {*layers, *held}:
            reliability_guard(workdir)
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


def describe_exit(code: int) -> str:
    """How a process ended, from its exit code: "killed by SIGKILL" or "exited with code 1"."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
