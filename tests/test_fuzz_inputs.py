"""Malformed configs and data files, generated: every one ends in a clean exit (0, or 2 with one line), never
a traceback and never a hang. Configs go through the real CLI (`run --dry-run`, in this process), data
files through the loaders."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
from contextlib import contextmanager

import pytest
import yaml

from learnforget.data.loaders import load_conversations, load_text_records
from learnforget.errors import UserError
from tests.conftest import MICRO_STUDY, cli_exit_code

SEED = 0
CASE_SECONDS = 10

BAD_VALUES = [
    -1, 0, -(10**30), 10**30, 10**400, float("nan"), float("inf"), -1e-9, 1e308, "lots", "", True, None,
    [], {}, [1, "x"], {"a": 1}, [[[[[[1]]]]]], "\x00\xff", 1.5,
]  # fmt: skip


def _paths(value, prefix=()):
    """Every key path of a config (list items by index)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _set(data, path, value):
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _yaml(value) -> str:
    # Out-of-range numbers and NaN as YAML writes them; 10**400 as a plain (huge) integer.
    return yaml.safe_dump(value, allow_unicode=False)


def config_cases() -> list[tuple[str, bytes]]:
    """(description, file content) of malformed and borderline study files."""
    rng = random.Random(SEED)
    base = dict(MICRO_STUDY, workers=1)
    paths = list(_paths(base))
    cases = []
    for _ in range(90):
        data = copy.deepcopy(base)
        path = rng.choice(paths)
        value = rng.choice(BAD_VALUES)
        _set(data, path, value)
        cases.append((f"{'.'.join(map(str, path))}={value!r:.40}", _yaml(data).encode()))
    text = _yaml(base)
    for _ in range(12):  # truncated at a random byte
        cut = rng.randrange(1, len(text))
        cases.append((f"truncated at {cut}", text[:cut].encode()))
    cases += [
        ("binary", bytes(rng.randrange(256) for _ in range(400))),
        ("utf-16", text.encode("utf-16")),
        ("deeply nested list", b"arms: " + b"[" * 50_000 + b"]" * 50_000 + b"\n"),
        ("deeply nested map", b"".join(b"  " * i + b"k:\n" for i in range(3000))),
        ("empty", b""),
        ("a list", b"- 1\n- 2\n"),
        ("unknown key", text.replace("milestones", "milestoness").encode()),
        ("tabs", b"name:\tx\n\tbudget_tokens: 5\n"),
        (
            "anchor bomb",
            b"a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b]\n",
        ),
        ("huge budget", text.replace("6144", "9" * 5000).encode()),
        ("rank above width", text.replace("rank: 2", "rank: 64").encode()),
        ("nan lr", text.replace("learning_rate: 0.01", "learning_rate: .nan").encode()),
    ]
    return cases


def data_cases(loader: str) -> list[tuple[str, bytes, bool]]:
    """(description, .jsonl content, must be refused) of malformed data files for one loader."""
    rng = random.Random(SEED + 1)
    good = [{"text": "def f(): return 1", "prompt": "Q?", "response": "A."} for _ in range(3)]
    cases = []
    for _ in range(25):
        rows = copy.deepcopy(good)
        row = rng.choice(rows)
        key = "text" if loader == "text" else rng.choice(["prompt", "response"])
        row[key] = rng.choice(BAD_VALUES[:4] + BAD_VALUES[5:])  # 10**400 cannot be dumped; see below
        content = "".join(json.dumps(r) + "\n" for r in rows).encode()
        cases.append((f"{key}={row[key]!r:.30}", content, not isinstance(row[key], str)))
    line = json.dumps(good[0]).encode()
    cases += [
        ("non-UTF-8", line + b"\n" + b'{"text": "\xff\xfe", "prompt": "\xc3"}\n', True),
        ("deeply nested", line + b"\n" + b"[" * 200_000 + b"\n", True),
        ("huge int", line + b'\n{"text": ' + b"7" * 10_000 + b"}\n", True),
        ("truncated", line[: len(line) // 2] + b"\n", True),
        ("array line", b"[1, 2, 3]\n", True),
        ("NaN literal", b'{"text": NaN, "prompt": NaN, "response": NaN}\n', True),
        ("blank only", b"\n   \n\n", True),
        ("empty", b"", True),
        ("binary", bytes(rng.randrange(256) for _ in range(300)), True),
    ]
    return cases


@contextmanager
def time_limit(seconds: int):
    def hang(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


run_cli = cli_exit_code


@pytest.fixture(scope="module")
def warm():
    """One dry run outside the time limit: importing transformers and peft is not what is measured."""
    assert run_cli(["run", "--dry-run"]) == 0


def test_generated_malformed_configs_end_cleanly(tmp_path, capsys, warm):
    cases = config_cases()
    assert len(cases) >= 100
    outcomes = {0: 0, 2: 0}
    for index, (what, content) in enumerate(cases):
        path = tmp_path / f"case{index}.yaml"
        path.write_bytes(content)
        with time_limit(CASE_SECONDS):
            code = run_cli(["run", str(path), "--dry-run"])
        out, err = capsys.readouterr()
        assert code in (0, 2), f"{what}: exit {code}\n{err[-2000:]}"
        assert "Traceback" not in out + err, f"{what}: {err[-2000:]}"
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), f"{what}: {err}"
        outcomes[code] += 1
    assert outcomes[2] > 60 and outcomes[0] > 5, outcomes  # both kinds were exercised
    # A directory and a FIFO given as the config file.
    os.mkfifo(tmp_path / "fifo.yaml")
    for path in (tmp_path, tmp_path / "fifo.yaml"):
        with time_limit(CASE_SECONDS):
            assert run_cli(["run", str(path), "--dry-run"]) == 2
        assert "not a regular file" in capsys.readouterr().err


def test_generated_malformed_overrides_end_cleanly(capsys, warm):
    rng = random.Random(SEED + 2)
    keys = ["budget_tokens", "arms.0.learning_rate", "arms.1.rank", "eval.pass_k", "base.hidden_size",
            "arms.5.seed", "eval", "arms", "seed", "eval.learning_metric", "base.num_heads", "arms.0"]  # fmt: skip
    values = ["-1", "0", "1e999", ".nan", "[", "{a: 1}", "x" * 300, "9" * 5000, "[]", "null", "!!binary AAAA"]
    for _ in range(30):
        override = f"{rng.choice(keys)}={rng.choice(values)}"
        with time_limit(CASE_SECONDS):
            code = run_cli(["run", "--dry-run", "--set", override])
        out, err = capsys.readouterr()
        assert code in (0, 2) and "Traceback" not in out + err, f"--set {override}: {err[-2000:]}"


@pytest.mark.parametrize("loader", ["text", "pairs"])
def test_generated_malformed_data_files_end_cleanly(tmp_path, loader):
    cases = data_cases(loader)
    assert len(cases) >= 30 and sum(bad for *_, bad in cases) >= 25
    for index, (what, content, bad) in enumerate(cases):
        path = tmp_path / f"case{index}.jsonl"
        path.write_bytes(content)
        with time_limit(CASE_SECONDS):
            try:
                load_text_records(str(path)) if loader == "text" else load_conversations(str(path))
                refused = False
            except UserError as e:
                assert "\n" not in str(e) and str(path) in str(e), f"{what}: {e}"
                refused = True
        assert refused == bad, what
    os.mkfifo(tmp_path / "fifo.jsonl")
    with time_limit(CASE_SECONDS), pytest.raises(UserError, match="not a regular file"):
        load_text_records(str(tmp_path / "fifo.jsonl"))


def test_config_metric_names_match_what_the_suites_record():
    """The names config validation accepts are the names `evaluate_suites` writes (same source study)."""
    from learnforget.config import load_study
    from learnforget.evaluate.metric_names import produced_metrics

    study = load_study(None, ["domain=code", "eval.pass_k=[1, 3]", "eval.diversity_samples=3"])
    names = produced_metrics(study)
    assert {"code/loss", "english/loss", "code/ref_nll", "code/pass@1", "code/sampled_pass@3"} <= names
    math = load_study(None, ["domain=math", "eval.choice_items=0", "eval.spectra=false"])
    assert produced_metrics(math) == {
        "english/loss", "math/loss", "math/ref_nll", "math/strict_match", "math/flexible_match",
        "math/distinct_fraction",
    }  # fmt: skip


def test_a_rank_above_the_width_and_a_model_without_weights_are_named(tmp_path, capsys, warm):
    config = tmp_path / "wide.yaml"
    config.write_text(yaml.safe_dump(dict(MICRO_STUDY, arms=[{"method": "lora", "rank": [2, 64]}])))
    assert run_cli(["run", str(config), "--dry-run"]) == 2
    assert "arm lora-r64-all-lr1e-3-s0: LoRA rank 64 exceeds the width 32" in capsys.readouterr().err
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text('{"model_type": "llama"}')
    assert run_cli(["run", "--dry-run", "--set", f"base_model={tmp_path / 'model'}"]) == 2
    assert "config.json but no weights" in capsys.readouterr().err
