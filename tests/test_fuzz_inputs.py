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
    # Both kinds were exercised (types are strict: True or 1.5 for a count, once converted, are refused).
    assert outcomes[2] > 60 and outcomes[0] >= 2, outcomes
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
    from learnforget.config.load import load_study
    from learnforget.config.metrics import produced_metrics

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


# Inputs a trust round found accepted (issue 24): each is now refused in one line, exit 2. The table is
# (what, CLI arguments with {dir} for a scratch directory, files to write there first).
BILLION_LAUGHS = (  # 10^9 leaves: PyYAML shares the aliased lists, validating (and its message) would not
    "".join(
        f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join([f'*{chr(96 + i)}' if i else 'x'] * 10)}]\n"
        for i in range(9)
    )
    + "arms: *i\n"
)

ISSUE_24_CASES = [
    ("empty file", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": ""}),
    ("whitespace only", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": "   \n\n  \n"}),
    ("null", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": "null\n"}),
    ("empty name", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": 'name: ""\n'}),
    ("name with a slash", ["run", "--dry-run", "--set", "name=a/b"], {}),
    ("name with NUL", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": 'name: "a\\0b"\n'}),
    ("learning rate as text", ["run", "{dir}/c.yaml", "--dry-run"],
     {"c.yaml": "arms: [{method: full, learning_rate: '1e-3'}]\n"}),
    ("two identical arms", ["run", "{dir}/c.yaml", "--dry-run"],
     {"c.yaml": "arms: [{method: full}, {method: full}]\n"}),
    ("a repeated seed", ["run", "--dry-run", "--set", "arms.0.seed=[1, 1]"], {}),
    ("unknown harness task", ["run", "--dry-run", "--set", "eval.harness_tasks=[nonexistent_task]"], {}),
    ("loss_tokens 1e12", ["run", "--dry-run", "--set", "eval.loss_tokens=1e12"], {}),
    ("loss_tokens 10^12", ["run", "--dry-run", "--set", "eval.loss_tokens=1000000000000"], {}),
    ("--shard 3/2", ["run", "--dry-run", "--shard", "3/2"], {}),
    ("--shard 0/0", ["run", "--dry-run", "--shard", "0/0"], {}),
    ("--shard abc", ["run", "--dry-run", "--shard", "abc"], {}),
    ("--shard -1/2", ["run", "--dry-run", "--shard=-1/2"], {}),
    ("--out /dev/null", ["run", "--dry-run", "--out", "/dev/null"], {}),
    ("--out ''", ["run", "--dry-run", "--out", ""], {}),
    ("--out a FIFO", ["run", "--dry-run", "--out", "{dir}/fifo"], {"fifo": None}),
    ("--out /dev/null, running", ["run", "--out", "/dev/null"], {}),
    ("billion laughs", ["run", "{dir}/c.yaml", "--dry-run"], {"c.yaml": BILLION_LAUGHS}),
    ("peft r -1", ["run", "{dir}/c.yaml", "--dry-run"],
     {"c.yaml": "arms: [{method: peft, peft: {type: LORA, r: -1}}]\n"}),
    ("unreachable hub id", ["run", "--dry-run", "--set", "base_model=nobody/no-such-model-4f2a"], {}),
    ("mistyped local path", ["run", "--dry-run", "--set", "base_model=./no/such/model"], {}),
    ("truncated samples .jsonl.gz", ["score-code", "--samples", "{dir}/s.jsonl.gz"], {"s.jsonl.gz": "truncated"}),
]  # fmt: skip


def _truncated_gzip() -> bytes:
    import gzip

    lines = "".join(
        json.dumps({"task_id": f"HumanEval/{i % 164}", "completion": "x" * 100}) + "\n" for i in range(2000)
    )
    whole = gzip.compress(lines.encode())
    return whole[: len(whole) // 2]


class _Tasks:
    """lm-eval's TaskManager knowing two tasks (indexing the real one takes 10-30 s)."""

    all_tasks = ["hellaswag", "arc_challenge"]


@pytest.mark.parametrize("what, args, files", ISSUE_24_CASES, ids=[c[0] for c in ISSUE_24_CASES])
def test_inputs_found_accepted_are_refused_in_one_line(
    what, args, files, tmp_path, capsys, monkeypatch, warm
):
    from learnforget.evaluate import harness

    monkeypatch.setattr(harness, "_task_manager", lambda *_: _Tasks())
    for name, text in files.items():
        if text is None:
            os.mkfifo(tmp_path / name)
        elif name.endswith(".gz"):
            (tmp_path / name).write_bytes(_truncated_gzip())
        else:
            (tmp_path / name).write_text(text)
    with time_limit(3 * CASE_SECONDS):  # a first use of AutoConfig or the sandbox imports for seconds
        code = run_cli([a.replace("{dir}", str(tmp_path)) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, f"{what}: exit {code}\n{err[-2000:]}"
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), f"{what}: {err}"


def test_a_file_of_empty_documents_is_refused_and_some_are_skipped_with_a_warning(tmp_path, capsys):
    from learnforget.config.load import load_study
    from learnforget.data.datasets import user_text_pass

    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n' * 50)
    study = load_study(None, [f"data.train={empty}"])
    with pytest.raises(UserError, match="all 50 documents are empty or blank"):
        list(user_text_pass(study)())
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"text": "  "}\n{"text": "def f(): pass"}\n' * 3)
    one_pass = user_text_pass(load_study(None, [f"data.train={mixed}"]))
    assert list(one_pass()) == ["def f(): pass"] * 3 and list(one_pass()) == ["def f(): pass"] * 3
    assert capsys.readouterr().err.count("3 of 6 documents are empty or blank; skipped") == 1


def test_a_long_document_tokenizes_in_pieces_to_the_same_ids_in_linear_time():
    """A 35 MB JSON line took minutes: documents are encoded in pieces of LONG_TEXT_CHARS, cut where the
    byte-level pre-tokenizer splits anyway, so the ids are those of the whole text."""
    import time

    from learnforget.base.load import SHIPPED_BASE, load_tokenizer
    from learnforget.data.encoding import LONG_TEXT_CHARS, encode_texts, text_pieces

    tokenizer = load_tokenizer(str(SHIPPED_BASE))
    rng = random.Random(SEED)
    words = ["def", "x", "return", "(", "):", "\n", "  ", "\n\n", "\r\n", "foo.bar", "é", "123", "\t"]
    text = "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(60_000))
    pieces = text_pieces(text, 2000)
    assert "".join(pieces) == text and max(map(len, pieces)) <= 2000 and len(pieces) > 50
    one_line = text.replace("\n", " ")  # cut before spaces
    joined = [
        i for p in text_pieces(one_line, 2000) for i in tokenizer(p, add_special_tokens=False)["input_ids"]
    ]
    assert joined == tokenizer(one_line, add_special_tokens=False)["input_ids"]
    assert (
        encode_texts(tokenizer, [text[:1000], text])
        == tokenizer([text[:1000], text], add_special_tokens=False)["input_ids"]
    )
    assert [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]] == encode_texts(
        tokenizer, [text]
    )[0]
    seconds = []
    for copies in (1, 4):  # 4x the text takes about 4x the time, not 16x
        long = "word " * (LONG_TEXT_CHARS // 5 * 2 * copies)
        started = time.perf_counter()
        encode_texts(tokenizer, [long])
        seconds.append(time.perf_counter() - started)
    assert seconds[1] < 8 * seconds[0] + 0.5, seconds
