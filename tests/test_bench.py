"""`python -m bench --quick` in this process: every benchmark's row is there, with real, positive numbers."""

from __future__ import annotations

import math


def test_quick_benchmarks_report_every_row(capsys):
    from bench.__main__ import BENCHMARKS, main, run_benchmarks

    rows = run_benchmarks(quick=True, only=BENCHMARKS)
    names = [r.name for r in rows]
    assert names == [
        "training, full finetuning", "training, LoRA r16", "code scoring, sandboxed", "LoRA ΔW spectrum, factored",
        "tokenising + token file", "eval: loss", "eval: choice", "eval: reference",
        "eval: generation",  # greedy completions and diversity samples, decoded together
        "eval: choice, shared contexts",
    ]  # fmt: skip
    for row in rows:
        assert row.numbers() and all(math.isfinite(x) and x > 0 for x in row.numbers()), row
        assert len(row.candidate) == 1 and len(row.baseline) in (0, 1)
    assert all(r.baseline for r in rows[:5] + rows[9:]) and all(r.items > 0 for r in rows[5:9])
    # The printed table has one line per row (the command itself, on the cheapest benchmark).
    table = main(["--quick", "--only", "svd"])
    assert "| LoRA ΔW spectrum, factored | dense svdvals |" in table and table in capsys.readouterr().out
