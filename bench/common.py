"""What every benchmark shares: alternating repeats of a candidate and its baseline, and one result row.

On a shared machine the load changes from one second to the next; running candidate, baseline,
candidate, baseline, ... lets it hit both alike. A row keeps every time, and reports min and median of
each side and the speed-up (baseline time / candidate time: above 1, the candidate is faster) of the
mins and of the medians.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    """One benchmark figure: seconds per repeat of the candidate and (if any) of its baseline."""

    name: str
    candidate: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    baseline_name: str = ""
    items: int = 0  # items per repeat (throughput rows: items/s instead of a speed-up)
    note: str = ""

    @property
    def speedup_min(self) -> float:
        return min(self.baseline) / min(self.candidate) if self.baseline else math.nan

    @property
    def speedup_median(self) -> float:
        return (
            statistics.median(self.baseline) / statistics.median(self.candidate)
            if self.baseline
            else math.nan
        )

    @property
    def items_per_s(self) -> float:
        """Items per second of the fastest repeat."""
        return self.items / min(self.candidate) if self.items else math.nan

    def numbers(self) -> list[float]:
        """The figures the row reports (all must be finite and positive)."""
        times = [min(self.candidate), statistics.median(self.candidate)]
        if self.baseline:
            return times + [
                min(self.baseline),
                statistics.median(self.baseline),
                self.speedup_min,
                self.speedup_median,
            ]
        return times + [self.items_per_s]


def alternate(
    candidate: Callable[[], object],
    baseline: Callable[[], object] | None,
    repeats: int,
    self_timed: bool = False,
) -> tuple:
    """Seconds of `repeats` calls of each, alternating (candidate first); the last results of both.

    `self_timed`: the functions time their own measured part and return its seconds (setup left out)."""
    times: tuple[list[float], list[float]] = ([], [])
    results = [None, None]
    for _ in range(repeats):
        for side, fn in enumerate((candidate, baseline)):
            if fn is None:
                continue
            started = time.perf_counter()
            results[side] = fn()
            times[side].append(results[side] if self_timed else time.perf_counter() - started)
    return times[0], times[1], results[0], results[1]


def format_table(rows: list[Row]) -> str:
    """Markdown: one table of speed-ups against baselines, one of throughputs."""

    def sec(values: list[float]) -> str:
        return f"{min(values):.3g} / {statistics.median(values):.3g}"

    ratios = [r for r in rows if r.baseline]
    rates = [r for r in rows if not r.baseline]
    lines = []
    if ratios:
        lines += [
            "| benchmark | baseline | ours s (min / median) | baseline s (min / median) | speed-up (min) | speed-up (median) | repeats |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.name} | {r.baseline_name} | {sec(r.candidate)} | {sec(r.baseline)} | {r.speedup_min:.2f}× | "
            f"{r.speedup_median:.2f}× | {len(r.candidate)} |"
            for r in ratios
        ]
    if rates:
        lines += [
            "",
            "| evaluation suite | items | s (min / median) | items/s | repeats |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r.name} | {r.items} | {sec(r.candidate)} | {r.items_per_s:.3g} | {len(r.candidate)} |"
            for r in rates
        ]
    notes = [f"- {r.name}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))
