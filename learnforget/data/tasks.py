"""The split rule and sampler shared by the synthetic math and code tasks.

`math_tasks.py` and `code_tasks.py` each hold a catalog of task families. A family draws one instance
from a `random.Random` and says what the instance *is* (its key: family, template and the numbers or
code that define it, never the names or objects that merely decorate it) and whether its template is
reserved for testing. This module turns such a generator into a deterministic train or test list:

- An instance is "test" when its template is held out, or when the hash of its key falls in the
  test bucket (`TEST_FRACTION`); otherwise it is "train". The split depends on the key only, never on
  the seed, so no seed can put a test instance into training, and renaming "Ann" to "Ben" cannot turn
  a training problem into a test one.
- Within one list every key appears once.
- Same (split, n, seed) gives the same list; a longer list starts with the shorter one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Hashable

from learnforget.errors import UserError

SPLITS = ("train", "test")
TEST_FRACTION = 0.2  # of the instances of non-held-out templates
# How often a family draws its held-out template: TEST_FRACTION / (1 + TEST_FRACTION) makes half of
# the test split come from held-out templates and half from unseen instances of seen templates.
HELD_OUT_TEMPLATE_SHARE = TEST_FRACTION / (1 + TEST_FRACTION)
# This many draws in a row without a new instance means the catalog's split is (nearly) used up.
MAX_MISSES = 20_000

# A draw: (key, held_out_template, build). `build()` makes the record; it is called only for draws
# that are kept, which saves rendering (and, for code, running) the rejected ones.
Draw = tuple[tuple[Hashable, ...], bool, Callable[[], dict]]


def split_of(key: tuple[Hashable, ...], held_out_template: bool) -> str:
    """The split ('train' or 'test') an instance belongs to, from its key alone."""
    if held_out_template:
        return "test"
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest) / 2**64 < TEST_FRACTION else "train"


def pick_template(rng: random.Random, n_templates: int) -> int:
    """A template index; the last one (held out for testing) with probability HELD_OUT_TEMPLATE_SHARE."""
    if n_templates == 1:
        return 0
    if rng.random() < HELD_OUT_TEMPLATE_SHARE:
        return n_templates - 1
    return rng.randrange(n_templates - 1)


def sample_split(
    draw: Callable[[random.Random], Draw], split: str, n: int, seed: int, what: str
) -> list[dict]:
    """`n` distinct records of `split`, drawn by `draw` from a generator seeded by (`what`, `seed`).

    `what` names the catalog ('math', 'code') so the two catalogs use unrelated random streams.
    """
    check_task_args(split, n, seed, what)
    rng = random.Random(f"learnforget/{what}/{seed}")
    seen: set[tuple[Hashable, ...]] = set()
    records: list[dict] = []
    misses = 0
    while len(records) < n:
        key, held_out, build = draw(rng)
        if key in seen or split_of(key, held_out) != split:
            misses += 1
            if misses > MAX_MISSES:
                raise UserError(
                    f"{what} tasks: only about {len(records)} distinct '{split}' tasks exist, "
                    f"{n} were asked for; ask for fewer"
                )
            continue
        misses = 0
        seen.add(key)
        records.append(build())
    return records


def check_task_args(split: str, n: int, seed: int, what: str) -> None:
    """Raise UserError unless `split` is known, `n` a non-negative int and `seed` an int."""
    if split not in SPLITS:
        raise UserError(f"{what} tasks: unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"{what} tasks: the number of tasks must be a non-negative integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"{what} tasks: the seed must be an integer, got {seed!r}")
