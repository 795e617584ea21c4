"""The claim judge beyond the paper: each PEFT method vs full finetuning, and intruder dimensions vs forgetting,
on synthetic study stores with known answers (no training)."""

import random
import sqlite3
from contextlib import closing

import pytest

from learnforget.analyse.claims_text import claims_markdown
from learnforget.report.study_data import claims_for_study_dir, recommend_for_study_dir
from tests.synthetic_grid import synthetic_study

PAPER_ARMS = [
    {"method": "full", "learning_rate": [1e-4, 1e-3], "seed": [0, 1]},
    {"method": "lora", "rank": [4, 16], "learning_rate": [1e-3, 1e-2], "seed": [0, 1]},
]
# The synthetic store's learning strength grows with the LR and, for adapters, with log2(2r): its DoRA
# (r ≤ 4) learns less than full finetuning's best, its VeRA (r = 64) more.
OTHERS = [
    {"method": "peft", "peft": {"type": "LORA", "r": [2, 4], "use_dora": True}, "learning_rate": [1e-3, 1e-2],
     "seed": [0, 1]},
    {"method": "peft", "peft": {"type": "VERA", "r": 64}, "learning_rate": [1e-3, 1e-2], "seed": [0, 1]},
]  # fmt: skip


def with_intruders(study_dir, relation: str) -> None:
    """Give every adapter arm's milestones an intruder count: rising with its forgetting ('more'), falling
    ('fewer'), or unrelated to it ('none': a fixed shuffle)."""
    with closing(sqlite3.connect(next((study_dir / "results").glob("*.db")))) as conn, conn:
        rows = conn.execute(
            "SELECT m.arm, m.step, m.tokens, m.value FROM metrics m JOIN arms a ON a.name = m.arm "
            "WHERE m.metric = 'english/loss' AND a.method NOT IN ('full', 'base')"
        ).fetchall()
        order = sorted({round(v, 3) for *_, v in rows})
        shuffled = order[:]
        random.Random(3).shuffle(shuffled)
        count = {
            "more": lambda v: order.index(round(v, 3)),
            "fewer": lambda v: len(order) - order.index(round(v, 3)),
            "none": lambda v: shuffled.index(round(v, 3)) % 3,  # unrelated, with ties
        }[relation]
        conn.executemany(
            "INSERT INTO metrics (arm, step, tokens, metric, value) VALUES (?, ?, ?, 'spectrum/intruders', ?)",
            [(arm, step, tokens, float(count(v))) for arm, step, tokens, v in rows],
        )


@pytest.mark.parametrize(
    "relation, expected", [("more", "supported"), ("fewer", "contradicted"), ("none", "inconclusive")]
)
def test_intruder_dimensions_vs_forgetting(tmp_path, relation, expected):
    synthetic_study(tmp_path, [*PAPER_ARMS, *OTHERS])
    with_intruders(tmp_path, relation)
    claim = {c["id"]: c for c in claims_for_study_dir(tmp_path)}["intruders"]
    assert claim["source"] == "beyond" and claim["verdict"] == expected, claim["evidence"]
    assert "10 adapter configurations" in claim["evidence"]  # LoRA 2 ranks, DoRA 2 ranks, VeRA 1, × 2 LRs


def test_each_peft_method_is_judged_against_full_and_lora_verdicts_stay(tmp_path):
    synthetic_study(tmp_path / "paper", PAPER_ARMS)
    synthetic_study(tmp_path / "peft", [*PAPER_ARMS, *OTHERS])
    paper = claims_for_study_dir(tmp_path / "paper")
    both = claims_for_study_dir(tmp_path / "peft")

    def paper_and_ours(claims):
        return [
            (c["id"], c["verdict"], c["effect"], c["evidence"]) for c in claims if c["source"] != "beyond"
        ]

    assert paper_and_ours(both) == paper_and_ours(
        paper
    )  # LoRA's verdicts do not move when other methods join
    beyond = {c["id"]: c for c in both if c["source"] == "beyond"}
    assert list(beyond) == ["dora-4.1", "dora-4.2", "dora-matched", "vera-4.1", "vera-4.2", "vera-matched",
                            "intruders"]  # fmt: skip
    assert (
        beyond["dora-4.1"]["verdict"] == "supported"
        and "vs DoRA `dora-r4-lr1e-2`" in beyond["dora-4.1"]["evidence"]
    )
    assert beyond["dora-4.2"]["verdict"] == "supported"  # learns less, forgets less: LoRA's pattern
    assert beyond["vera-4.1"]["verdict"] == "contradicted"  # learns more than full, and forgets more
    assert beyond["vera-4.2"]["verdict"] == "contradicted"
    text = claims_markdown(both)
    assert "**Beyond the paper: other PEFT methods and intruder dimensions**" in text
    assert "| dora-4.1 | §4.1 (beyond) | DoRA learns less than full finetuning" in text


def test_recommend_considers_every_method(tmp_path):
    synthetic_study(tmp_path, [*PAPER_ARMS, *OTHERS])
    loose = recommend_for_study_dir(tmp_path, 10.0)
    # Forgetting unbounded: the configuration that learns most, which is a VeRA one here.
    assert (
        loose["method"] == "vera"
        and '"type": "VERA"' in loose["peft"]
        and loose["configuration"] == "vera-r64-lr1e-2"
    )
    tight = recommend_for_study_dir(tmp_path, 0.05)
    assert (
        tight["method"] in ("lora", "dora", "vera") and tight["considered"] == (2 + 4 + 4 + 2) * 3
    )  # configurations × milestones


def test_methods_table_ranks_methods_on_the_frontier_with_costs_and_spreads(tmp_path):
    from learnforget.report.study_data import method_rows, methods_markdown

    synthetic_study(tmp_path, [*PAPER_ARMS, *OTHERS])
    with_intruders(tmp_path, "more")
    rows = method_rows(tmp_path)
    assert sorted(r["method"] for r in rows) == ["DoRA", "LoRA", "VeRA", "full"]
    assert [r["_order"] for r in rows] == sorted(r["_order"] for r in rows)
    assert rows[0]["frontier"] >= 1
    vera = next(r for r in rows if r["method"] == "VeRA")
    assert vera["best"] == "vera-r64-lr1e-2" and vera["seeds"] == 2
    assert vera["trainable"] == (64_000, 0) and vera["learning"][1] is not None  # seed spread reported
    assert vera["intruders"][0] is not None and rows[0]["rank_fraction"][0] is not None
    text = methods_markdown(tmp_path)
    assert text.startswith("## Methods") and "| VeRA | " in text and "`vera-r64-lr1e-2` (n=2)" in text
    from learnforget.report.html import methods_section

    html = "".join(methods_section(tmp_path))
    assert "id='methods'" in html and "vera-r64-lr1e-2" in html
    synthetic_study(tmp_path / "paper", PAPER_ARMS)
    assert methods_section(tmp_path / "paper") == [] and methods_markdown(tmp_path / "paper") == ""
