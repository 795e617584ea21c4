"""When an arm has diverged: a held-out loss far above where training started.

The rule, checked at every milestone of every arm: the arm has diverged when a held-out loss
(`<domain>/loss`: the target's or the source's) exceeds

    max(the base model's value of that metric + DIVERGENCE_MARGIN, ln(vocabulary size))

that is, when the model predicts worse than a uniform guess over its vocabulary and a nat worse than
before training (a learning rate far too high: full finetuning at lr 10 reached a code loss of 2,092).
Such an arm stops at that milestone and is recorded `diverged`, with the rule's numbers as its error:
its milestones stay in the store (marked), but, as a failed arm's, its numbers are not results: they
are left out of tables, frontiers, noise estimates and claims, and `learnforget run` exits 1 with a line
`diverged: ARM: REASON`. A rerun does not train it again (the same settings diverge the same way).
"""

from __future__ import annotations

import math

DIVERGENCE_MARGIN = 1.0
"""Nats above the base's held-out loss that, beyond a uniform guess's loss, count as diverged."""


def divergence(metrics: dict[str, float], base: dict[str, float], vocab_size: int) -> str | None:
    """Why a milestone's `metrics` show divergence (None if they do not); `base`: the base model's metrics
    (empty while the base is still being evaluated: the uniform guess's loss is then the limit)."""
    uniform = math.log(max(vocab_size, 2))
    for name, value in sorted(metrics.items()):
        if not name.endswith("/loss"):
            continue
        limit = max(base.get(name, -math.inf) + DIVERGENCE_MARGIN, uniform)
        if not value <= limit:  # NaN too
            start = f"base {base[name]:.3g}, " if name in base else ""
            return f"{name} {value:.4g} > {limit:.3g} ({start}uniform guess ln {vocab_size} = {uniform:.3g})"
    return None
