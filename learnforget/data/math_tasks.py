"""Generated grade-school math word problems with GSM8K-style worked solutions.

Eight families (arithmetic chains, rates, fractions, percentages, money, comparisons, averages, unit
conversions), three templates each, with random names, objects and numbers. A template is data: a
sampler for its numbers, the question text, and solution steps written as expressions. Every number
in a solution comes from evaluating the expression shown next to it, so the steps, the calculator
annotations (`48/2 = <<48/2=24>>24`) and the final `#### N` always agree; samplers choose numbers so
every division is exact and every answer is a whole number.

- `math_problems(split, n, seed)`: IFT records {question, solution, answer, family, template}.
- `math_cpt_text(n_docs, seed)`: CPT documents, each a few "Question: ...\nAnswer: ..." blocks.

The last template of each family appears only in the test split; `tasks.py` has the split rule.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from learnforget.data.tasks import Draw, check_task_args, pick_template, sample_split

NAMES = [tuple(p.split(":")) for p in (
    "Ava:she Liam:he Maya:she Noah:he Zoe:she Omar:he Lena:she Ravi:he Sofia:she Mateo:he Chloe:she "
    "Kenji:he Amara:she Diego:he Priya:she Felix:he Nadia:she Tariq:he Grace:she Jonas:he Ines:she "
    "Malik:he Hana:she Owen:he"
).split()]  # fmt: skip
PRONOUNS = {"she": ("she", "her", "her"), "he": ("he", "him", "his")}  # subject, object, possessive
OBJECTS = (
    "apples, marbles, stickers, pencils, cookies, seashells, stamps, trading cards, beads, books, toy cars, "
    "crayons, oranges, cupcakes, balloons, buttons"
).split(", ")
RELATIVES = ["sister", "brother", "friend", "cousin", "neighbor", "classmate", "teacher", "grandmother"]
CONTAINERS = ["box", "basket", "jar", "crate", "bag", "bin"]
ITEMS = [tuple(p.split(":")) for p in (
    "notebook:notebooks pen:pens sandwich:sandwiches ticket:tickets shirt:shirts toy:toys plant:plants "
    "lamp:lamps mug:mugs scarf:scarves puzzle:puzzles backpack:backpacks"
).split()]  # fmt: skip
PRODUCERS = [tuple(p.split(":")) for p in (
    "bakery:loaves of bread, toy factory:toy cars, print shop:posters, candle shop:candles, "
    "bottling plant:bottles, shoe factory:pairs of shoes"
).split(", ")]  # fmt: skip
EXPENSES = ["food", "rent", "bus fares", "groceries", "books", "music lessons"]
GAMES = [("game", "games"), ("match", "matches"), ("quiz", "quizzes"), ("round", "rounds")]
INSTRUMENTS = ["piano", "guitar", "violin", "flute", "drums", "cello"]


@dataclass(frozen=True)
class Template:
    """One problem shape: `sample` draws its numbers (None: reject and draw again), `question` and
    each step's sentence are format strings over those numbers and the story's names; a step
    (name, expression, sentence) evaluates `expression`, stores the value under `name`, and puts the
    worked text `e = <<e=v>>v` where the sentence has `{}`. The last step's value is the answer."""

    sample: Callable[[random.Random], dict[str, int] | None]
    question: str
    steps: tuple[tuple[str, str, str], ...]


def _calc(expr: str) -> tuple[int, str]:
    """The value of `expr` (integers joined by + - * /, no brackets) and its GSM8K text `e = <<e=v>>v`.

    Products and quotients bind tighter and run left to right; every division must be exact and the
    result whole and non-negative, or a sampler chose its numbers wrongly (a bug, hence ValueError).
    """
    total, sign = 0, 1
    for part in re.split(r"([+-])", expr):
        if part in ("+", "-"):
            sign = 1 if part == "+" else -1
            continue
        pieces = re.split(r"([*/])", part)
        value = int(pieces[0])
        for op, number in zip(pieces[1::2], map(int, pieces[2::2]), strict=True):
            if op == "/" and value % number:
                raise ValueError(f"{expr}: {value}/{number} is not a whole number")
            value = value * number if op == "*" else value // number
        total += sign * value
    if total < 0:
        raise ValueError(f"{expr} = {total} is negative")
    return total, f"{expr} = <<{expr}={total}>>{total}"


def _multiple_of(rng: random.Random, step: int, lo: int, hi: int) -> int:
    """A random multiple of `step` in [lo, hi] (one must exist)."""
    return step * rng.randint(-(-lo // step), hi // step)


# Samplers that need more than one line. Each returns the numbers the question shows, in order.
def _chain_a(r: random.Random) -> dict[str, int]:
    a, b = r.randint(10, 90), r.randint(5, 60)
    return {"a": a, "b": b, "c": r.randint(2, a + b - 2)}


def _chain_b(r: random.Random) -> dict[str, int]:
    a, b = r.randint(20, 120), r.randint(5, 50)
    return {"a": a, "b": b, "c": r.randint(5, a + b - 5), "d": r.randint(3, 40)}


def _chain_c(r: random.Random) -> dict[str, int]:
    a, b = r.randint(5, 40), r.randint(2, 20)
    return {"a": a, "b": b, "c": r.randint(1, a + b - 1)}


def _book(r: random.Random) -> dict[str, int]:
    p, done = r.randint(5, 40), r.randint(10, 150)
    return {"pages": done + p * r.randint(3, 30), "done": done, "p": p}


def _hoses(r: random.Random) -> dict[str, int]:
    a, b = r.randint(2, 15), r.randint(2, 15)
    return {"liters": (a + b) * r.randint(3, 40), "a": a, "b": b}


def _two_fractions(r: random.Random) -> dict[str, int]:
    d1, d2 = r.randint(2, 5), r.randint(2, 5)
    return {
        "total": d1 * d2 * r.randint(1, 12),
        "k1": r.randint(1, d1 - 1),
        "d1": d1,
        "k2": r.randint(1, d2 - 1),
        "d2": d2,
    }


def _class(r: random.Random) -> dict[str, int]:
    d, m = r.randint(2, 6), r.randint(2, 4)
    return {"total": d * m * r.randint(1, 8), "k": r.randint(1, d - 1), "d": d, "m": m}


def _allowance(r: random.Random) -> dict[str, int] | None:
    d1, d2 = r.choice([2, 3, 4, 5, 6, 8, 10]), r.choice([2, 3, 4, 5, 6, 8, 10])
    k1, k2 = r.randint(1, d1 - 1), r.randint(1, d2 - 1)
    if k1 * d2 + k2 * d1 >= d1 * d2:  # would spend it all, or more
        return None
    return {"total": d1 * d2 * r.randint(1, 6), "k1": k1, "d1": d1, "k2": k2, "d2": d2}


def _sale(r: random.Random) -> dict[str, int]:
    pct = r.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75])
    return {"price": _multiple_of(r, 100 // math.gcd(pct, 100), 10, 400), "pct": pct}


def _savings(r: random.Random) -> dict[str, int]:
    pct = r.choice([5, 10, 15, 20, 25, 30])
    return {
        "salary": _multiple_of(r, 100 // math.gcd(pct, 100), 200, 5000),
        "pct": pct,
        "months": r.randint(2, 12),
    }


def _stock(r: random.Random) -> dict[str, int] | None:
    stock, p1, p2 = r.randint(2, 50) * 20, r.choice([10, 20, 25, 40, 50]), r.choice([10, 20, 25, 50])
    return {"stock": stock, "p1": p1, "p2": p2} if stock * (100 - p1) * p2 % 10_000 == 0 else None


def _wage(r: random.Random) -> dict[str, int]:
    h, d, w = r.randint(2, 10), r.randint(2, 7), r.randint(8, 30)
    return {"h": h, "d": d, "w": w, "spend": r.randint(10, h * d * w - 10)}


def _shopping(r: random.Random) -> dict[str, int]:
    a, p, b, c = r.randint(2, 9), r.randint(2, 25), r.randint(2, 9), r.randint(2, 25)
    return {
        "a": a,
        "p": p,
        "b": b,
        "c": c,
        "bill": next(x for x in (20, 50, 100, 200, 500) if x > a * p + b * c),
    }


def _boxes(r: random.Random) -> dict[str, int] | None:
    n = {
        "boxes": r.randint(3, 20),
        "per": r.randint(6, 48),
        "students": r.randint(5, 40),
        "each": r.randint(2, 6),
    }
    return n if n["boxes"] * n["per"] >= n["students"] * n["each"] else None


def _times_fewer(r: random.Random) -> dict[str, int]:
    x, k = r.randint(3, 30), r.randint(2, 5)
    return {"x": x, "k": k, "m": r.randint(1, k * x - 1)}


def _share(r: random.Random) -> dict[str, int]:
    x, k = r.randint(2, 40), r.randint(2, 6)
    return {"total": (k + 1) * x, "k": k}


def _scores(r: random.Random) -> dict[str, int]:
    s = [r.randint(5, 40) for _ in range(4)]
    s[3] -= sum(s) % 4  # makes the mean whole
    return dict(zip("abcd", s, strict=True))


def _reading_goal(r: random.Random) -> dict[str, int] | None:
    avg = r.randint(10, 60)
    n = {"avg": avg, **{f"x{i}": r.randint(avg - 8, avg + 8) for i in range(4)}}
    return n if 5 * avg - sum(n[f"x{i}"] for i in range(4)) >= 1 else None


def _removed(r: random.Random) -> dict[str, int] | None:
    n = {"count": r.randint(4, 9), "mean": r.randint(5, 50), "new": r.randint(3, 55)}
    return n if n["count"] * n["mean"] - (n["count"] - 1) * n["new"] >= 1 else None


def _practice(r: random.Random) -> dict[str, int] | None:
    n = {"per_week": r.randint(2, 7), "minutes": r.randint(3, 24) * 5, "weeks": r.randint(2, 12)}
    return n if n["per_week"] * n["minutes"] * n["weeks"] % 60 == 0 else None


def _rope(r: random.Random) -> dict[str, int] | None:
    feet, piece = r.randint(2, 30), r.randint(2, 18)
    return {"feet": feet, "piece": piece} if feet * 12 % piece == 0 else None


T = Template
# fmt: off
# family name -> templates; the last template of each family is held out for testing
FAMILIES: dict[str, tuple[Template, ...]] = {
    "arithmetic_chain": (
        T(_chain_a,
          "{name} has {a} {obj}. {He} buys {b} more at the store and then gives {c} of them to {his} "
          "{rel}. How many {obj} does {name} have now?",
          (("v1", "{a}+{b}", "After shopping, {name} has {} {obj}."),
           ("v2", "{v1}-{c}", "After the gift, {he} has {} {obj}."))),
        T(_chain_b,
          "A {box} holds {a} {obj}. In the morning {name} puts in {b} more {obj}, and in the afternoon "
          "{he} takes out {c}. In the evening {name2} puts in {d} {obj}. How many {obj} are in the {box} "
          "at the end of the day?",
          (("v1", "{a}+{b}", "After the morning there are {} {obj}."),
           ("v2", "{v1}-{c}", "After the afternoon there are {} {obj}."),
           ("v3", "{v2}+{d}", "At the end of the day there are {} {obj}."))),
        T(_chain_c,
          "{name} collected {a} {obj} on Monday. On Tuesday {he} collected {b} more than on Monday, and "
          "on Wednesday {he} collected {c} fewer than on Tuesday. How many {obj} did {name} collect over "
          "the three days?",
          (("tue", "{a}+{b}", "On Tuesday {he} collected {} {obj}."),
           ("wed", "{tue}-{c}", "On Wednesday {he} collected {} {obj}."),
           ("all", "{a}+{tue}+{wed}", "In total {he} collected {} {obj}."))),
    ),
    "rates": (
        T(_book,
          "{name} is reading a {pages}-page book. {He} has already read {done} pages and reads {p} pages "
          "every day. How many more days will it take {him} to finish the book?",
          (("left", "{pages}-{done}", "{He} has {} pages left."),
           ("days", "{left}/{p}", "It will take {him} {} days."))),
        T(lambda r: {"rate": r.randint(5, 60), "h": r.randint(2, 12), "d": r.randint(2, 7)},
          "A machine at a {place} makes {rate} {goods} every hour. It runs for {h} hours each day. How "
          "many {goods} does it make in {d} days?",
          (("daily", "{rate}*{h}", "Each day it makes {} {goods}."),
           ("all", "{daily}*{d}", "In {d} days it makes {} {goods}."))),
        T(_hoses,
          "Two hoses fill a pool that holds {liters} liters. The first hose pours {a} liters per minute "
          "and the second pours {b} liters per minute. If both hoses run together, how many minutes does "
          "it take to fill the empty pool?",
          (("rate", "{a}+{b}", "Together they pour {} liters per minute."),
           ("time", "{liters}/{rate}", "It takes {} minutes."))),
    ),
    "fractions": (
        T(_two_fractions,
          "{name} had {total} {obj}. {He} gave {k1}/{d1} of them to {his} {rel} and then {k2}/{d2} of the"
          " remaining {obj} to {his} {rel2}. How many {obj} does {name} have left?",
          (("g1", "{total}*{k1}/{d1}", "{He} gave {} {obj} to {his} {rel}."),
           ("r1", "{total}-{g1}", "That left {} {obj}."),
           ("g2", "{r1}*{k2}/{d2}", "{He} gave {} {obj} to {his} {rel2}."),
           ("r2", "{r1}-{g2}", "{name} has {} {obj} left."))),
        T(_class,
          "A class has {total} students. {k}/{d} of them are girls and the rest are boys. 1/{m} of the "
          "boys play soccer. How many boys do not play soccer?",
          (("girls", "{total}*{k}/{d}", "There are {} girls."),
           ("boys", "{total}-{girls}", "There are {} boys."),
           ("soccer", "{boys}/{m}", "{} boys play soccer."),
           ("rest", "{boys}-{soccer}", "{} boys do not play soccer."))),
        T(_allowance,
          "{name} got ${total} for {his} birthday. {He} spent {k1}/{d1} of the money on a {item} and "
          "{k2}/{d2} of it on a {item2}. How many dollars does {he} have left?",
          (("p1", "{total}*{k1}/{d1}", "The {item} cost {} dollars."),
           ("p2", "{total}*{k2}/{d2}", "The {item2} cost {} dollars."),
           ("spent", "{p1}+{p2}", "{He} spent {} dollars."),
           ("left", "{total}-{spent}", "{He} has {} dollars left."))),
    ),
    "percentages": (
        T(_sale,
          "A {item} costs ${price}. During a sale, its price is reduced by {pct}%. What is the sale price"
          " of the {item} in dollars?",
          (("off", "{price}*{pct}/100", "The discount is {} dollars."),
           ("sale", "{price}-{off}", "The sale price is {} dollars."))),
        T(_savings,
          "{name} earns ${salary} every month and saves {pct}% of it. How many dollars does {he} save in "
          "{months} months?",
          (("saved", "{salary}*{pct}/100", "Each month {he} saves {} dollars."),
           ("all", "{saved}*{months}", "In {months} months {he} saves {} dollars."))),
        T(_stock,
          "A shop had {stock} {obj}. On Monday it sold {p1}% of them, and on Tuesday it sold {p2}% of the"
          " {obj} that were left. How many {obj} does the shop have now?",
          (("s1", "{stock}*{p1}/100", "On Monday it sold {} {obj}."),
           ("r1", "{stock}-{s1}", "That left {} {obj}."),
           ("s2", "{r1}*{p2}/100", "On Tuesday it sold {} {obj}."),
           ("r2", "{r1}-{s2}", "Now the shop has {} {obj}."))),
    ),
    "money": (
        T(_wage,
          "{name} works {h} hours a day, {d} days a week, and earns ${w} per hour. Each week {he} spends "
          "${spend} on {expense}. How many dollars does {he} have left at the end of the week?",
          (("hours", "{h}*{d}", "{He} works {} hours a week."),
           ("pay", "{hours}*{w}", "{He} earns {} dollars a week."),
           ("left", "{pay}-{spend}", "{He} has {} dollars left."))),
        T(_shopping,
          "{name} buys {a} {items} for ${p} each and {b} {items2} for ${c} each. {He} pays with ${bill}. "
          "How much change does {he} get, in dollars?",
          (("c1", "{a}*{p}", "The {items} cost {} dollars."),
           ("c2", "{b}*{c}", "The {items2} cost {} dollars."),
           ("cost", "{c1}+{c2}", "Altogether {he} spends {} dollars."),
           ("change", "{bill}-{cost}", "{His} change is {} dollars."))),
        T(_boxes,
          "A school buys {boxes} boxes of {obj} with {per} {obj} in each box. Each of its {students} "
          "students gets {each} {obj}. How many {obj} are left over?",
          (("all", "{boxes}*{per}", "The school buys {} {obj}."),
           ("given", "{students}*{each}", "The students get {} {obj}."),
           ("left", "{all}-{given}", "{} {obj} are left over."))),
    ),
    "comparisons": (
        T(_times_fewer,
          "{name} has {x} {obj}. {name2} has {k} times as many {obj} as {name}, and {name3} has {m} fewer"
          " {obj} than {name2}. How many {obj} do the three of them have in total?",
          (("b", "{k}*{x}", "{name2} has {} {obj}."),
           ("c", "{b}-{m}", "{name3} has {} {obj}."),
           ("all", "{x}+{b}+{c}", "Together they have {} {obj}."))),
        T(lambda r: {"x": r.randint(3, 15), "k": r.randint(2, 4), "y": r.randint(2, 20)},
          "{name} is {x} years old. {name2} is {k} times as old as {name}. What will be the sum of their "
          "ages in {y} years?",
          (("b", "{k}*{x}", "{name2} is {} years old."),
           ("a2", "{x}+{y}", "In {y} years {name} will be {}."),
           ("b2", "{b}+{y}", "In {y} years {name2} will be {}."),
           ("sum", "{a2}+{b2}", "The sum of their ages will be {}."))),
        T(_share,
          "{name} and {name2} share {total} {obj} so that {name} gets {k} times as many as {name2}. How "
          "many {obj} does {name} get?",
          (("parts", "{k}+1", "There are {} equal parts."),
           ("one", "{total}/{parts}", "Each part is {} {obj}."),
           ("mine", "{one}*{k}", "{name} gets {} {obj}."))),
    ),
    "averages": (
        T(_scores,
          "{name} scored {a}, {b}, {c} and {d} points in {his} last four {games}. What was {his} average "
          "score per {game}?",
          (("all", "{a}+{b}+{c}+{d}", "{He} scored {} points."),
           ("mean", "{all}/4", "The average is {} points."))),
        T(_reading_goal,
          "{name} wants to read an average of {avg} pages a day over 5 days. On the first 4 days {he} "
          "reads {x0}, {x1}, {x2} and {x3} pages. How many pages must {he} read on the last day?",
          (("goal", "{avg}*5", "{He} needs {} pages in total."),
           ("done", "{x0}+{x1}+{x2}+{x3}", "So far {he} has read {} pages."),
           ("last", "{goal}-{done}", "On the last day {he} must read {} pages."))),
        T(_removed,
          "The average of {count} numbers is {mean}. When one of the numbers is removed, the average of "
          "the remaining numbers is {new}. What number was removed?",
          (("all", "{count}*{mean}", "The {count} numbers add up to {}."),
           ("rest", "{count}-1", "{} numbers remain."),
           ("rest_sum", "{rest}*{new}", "They add up to {}."),
           ("gone", "{all}-{rest_sum}", "The removed number is {}."))),
    ),
    "units": (
        T(_practice,
          "{name} practices the {instrument} {per_week} times a week, for {minutes} minutes each time. "
          "How many hours does {he} practice in {weeks} weeks?",
          (("times", "{per_week}*{weeks}", "In {weeks} weeks {he} practices {} times."),
           ("mins", "{minutes}*{times}", "That is {} minutes."),
           ("hours", "{mins}/60", "That is {} hours."))),
        T(_rope,
          "{name} has a rope that is {feet} feet long, and a foot is 12 inches. {He} cuts the rope into "
          "pieces that are each {piece} inches long. How many pieces does {he} get?",
          (("inches", "{feet}*12", "The rope is {} inches long."),
           ("pieces", "{inches}/{piece}", "{He} gets {} pieces."))),
        T(lambda r: {"h": r.randint(2, 3), "m": r.randint(5, 55), "k": r.randint(2, 6)},
          "A movie is {h} hours and {m} minutes long. {name} watches it {k} times. How many minutes does "
          "{name} spend watching the movie?",
          (("length", "{h}*60+{m}", "The movie is {} minutes long."),
           ("all", "{length}*{k}", "{name} spends {} minutes."))),
    ),
}
# fmt: on
_FAMILY_NAMES = list(FAMILIES)


def _story(rng: random.Random) -> dict[str, str]:
    """Names and objects for a story; templates use what they need."""
    (name, gender), (name2, _), (name3, _) = rng.sample(NAMES, 3)
    he, him, his = PRONOUNS[gender]
    rel, rel2 = rng.sample(RELATIVES, 2)
    (item, items), (item2, items2) = rng.sample(ITEMS, 2)
    place, goods = rng.choice(PRODUCERS)
    game, games = rng.choice(GAMES)
    return dict(
        name=name, name2=name2, name3=name3, he=he, him=him, his=his, He=he.capitalize(),
        His=his.capitalize(), obj=rng.choice(OBJECTS), rel=rel, rel2=rel2, box=rng.choice(CONTAINERS),
        item=item, items=items, item2=item2, items2=items2, place=place, goods=goods,
        expense=rng.choice(EXPENSES), game=game, games=games, instrument=rng.choice(INSTRUMENTS),
    )  # fmt: skip


def _draw(rng: random.Random) -> Draw:
    family = rng.choice(_FAMILY_NAMES)
    templates = FAMILIES[family]
    index = pick_template(rng, len(templates))
    template = templates[index]
    while (numbers := template.sample(rng)) is None:
        pass

    def build() -> dict:
        values: dict[str, object] = {**_story(rng), **numbers}
        steps = []
        for name, expression, sentence in template.steps:
            values[name], worked = _calc(expression.format(**values))
            steps.append(sentence.format(worked, **values))
        answer = values[template.steps[-1][0]]
        return {
            "question": template.question.format(**values),
            "solution": "\n".join(steps) + f"\n#### {answer}",
            "answer": str(answer),
            "family": family,
            "template": index,
        }

    return (family, index, *numbers.values()), index == len(templates) - 1, build


def math_problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct word problems of `split` ('train' or 'test') as GSM8K-style records.

    Each record: question (str), solution (steps, then "#### N"), answer (str of the integer N),
    family (str), template (int index within the family). Train and test never share an instance
    (family, template and numbers); test also holds one whole template per family that train never
    sees. The same arguments give the same list, and a longer list starts with a shorter one.
    """
    return sample_split(_draw, split, n, seed, "math")


def math_cpt_text(n_docs: int, seed: int = 0) -> list[str]:
    """`n_docs` continued-pretraining documents of 1-4 worked training problems each.

    Each problem reads "Question: ...\\nAnswer: <steps>\\n#### N"; problems in a document are separated
    by a blank line. Only training-split problems are used, and no problem appears twice.
    """
    check_task_args("train", n_docs, seed, "math CPT")
    rng = random.Random(f"learnforget/math-cpt/{seed}")
    sizes = [rng.randint(1, 4) for _ in range(n_docs)]
    problems = iter(math_problems("train", sum(sizes), seed))
    docs = []
    for size in sizes:
        blocks = [
            f"Question: {p['question']}\nAnswer: {p['solution']}"
            for p in (next(problems) for _ in range(size))
        ]
        docs.append("\n\n".join(blocks))
    return docs
