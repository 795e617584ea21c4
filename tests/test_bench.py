"""`python -m bench --quick` in this process: every benchmark's row is there, with real, positive numbers."""

from __future__ import annotations

import math


def test_quick_benchmarks_report_every_row(capsys):
    from bench.__main__ import BENCHMARKS, main, run_benchmarks

    rows = run_benchmarks(quick=True, only=BENCHMARKS)
    names = [r.name for r in rows]
    assert names == [
        "training, full finetuning", "training, LoRA r16", "code scoring, sandboxed", "LoRA ΔW spectrum, factored",
        "ΔW milestone spectra, LoRA r16", "tokenising + token file", "eval: loss", "eval: choice", "eval: reference",
        "eval: generation",  # greedy completions and diversity samples, decoded together
        "eval: choice, shared contexts",
    ]  # fmt: skip
    for row in rows:
        assert row.numbers() and all(math.isfinite(x) and x > 0 for x in row.numbers()), row
        assert len(row.candidate) == 1 and len(row.baseline) in (0, 1)
    assert all(r.baseline for r in rows[:6] + rows[10:]) and all(r.items > 0 for r in rows[6:10])
    # The printed table has one line per row (the command itself, on the cheapest benchmark).
    table = main(["--quick", "--only", "svd"])
    assert "| LoRA ΔW spectrum, factored | dense svdvals |" in table and table in capsys.readouterr().out


def test_study_split_reads_a_finished_studys_time_and_memory(micro_config, tmp_path):
    """`python -m bench --only split`: the stage shares and each arm's estimate vs recorded peak memory,
    read back from a study's store (here the micro study; for the issue's figures, runs/smol)."""
    from bench.bench_study_split import memory_report, memory_rows, report, stage_shares
    from tests.conftest import cli_exit_code

    assert "skipped" in report(tmp_path / "nothing") and "skipped" in memory_report(tmp_path / "nothing")
    out = tmp_path / "micro"
    assert cli_exit_code(["run", str(micro_config), "--out", str(out)]) == 0
    seconds = stage_shares(out)
    assert seconds["training"] > 0 and seconds["evaluation"] > 0
    assert math.isclose(seconds["total"], sum(v for k, v in seconds.items() if k != "total"))
    assert "| training |" in report(out) and "≤ 30%" in report(out)
    rows = memory_rows(out)
    assert rows and all(estimate > 0 and peak > 0 for _, _, estimate, peak in rows)
    assert all(0.1 < estimate / peak < 10 for _, _, estimate, peak in rows)
    assert rows[0][1] in memory_report(out)
