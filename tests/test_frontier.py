"""Frontier, recommendation and LR sensitivity on hand-made study rows with known answers."""

from __future__ import annotations

import pytest

from learnforget.analyse.frontier import (
    describe_recommendation,
    frontier_markdown,
    lr_sensitivity,
    pareto_frontier,
    recommend,
)
from learnforget.analyse.points import points, seed_average
from learnforget.errors import UserError
from learnforget.report.frontier_plot import frontier_plot

LEARN = ("code/loss", False)
FORGET = ("english/loss", False)


def rows_of(arm: str, method: str, curve: dict[int, tuple[float, float]], lr: float = 1e-3, seed: int = 0, **settings) -> list[dict]:  # fmt: skip
    """Store-like metric rows: curve = milestone -> (code/loss, english/loss)."""
    rank = settings.get("rank", 4) if method == "lora" else None
    arm_settings = dict(
        method=method, rank=rank, alpha=2 * rank if rank else None, target_modules=settings.get("target_modules", "all"),
        learning_rate=None if method == "base" else lr, weight_decay=settings.get("weight_decay", 0.0),
        dropout=0.0, train_embeddings=method == "full", seed=seed, optimizer=settings.get("optimizer", "adamw"),
    )  # fmt: skip
    rows = []
    for milestone, (code, english) in curve.items():
        for metric, value in (("code/loss", code), ("english/loss", english)):
            rows.append(dict(arm=arm, **arm_settings, step=milestone // 10, milestone=milestone, metric=metric, value=value))  # fmt: skip
    return rows


BASE = rows_of("base", "base", {0: (3.0, 2.0)})


def test_configuration_and_sweep_come_from_the_settings_not_the_name():
    rows = BASE + rows_of("x-s12", "lora", {1: (2.0, 2.1)}, lr=5e-3, seed=12, rank=4)
    rows += rows_of("y", "full", {1: (1.0, 2.5)}, lr=5e-4, weight_decay=0.1)
    rows += rows_of("z", "lora", {1: (2.0, 2.1)}, lr=1e-10, rank=4, optimizer="lion")
    labels = {p["arm"]: (p["configuration"], p["sweep"]) for p in points(rows, LEARN, FORGET)}
    assert labels == {
        "base": ("base", "base"),
        "x-s12": ("lora-r4-all-lr5e-3", "lora-r4-all"),
        "y": ("full-lr5e-4-wd0.1", "full-wd0.1"),
        "z": ("lora-r4-all-lr1e-10-lion", "lora-r4-all-lion"),
    }
    # A row without an optimizer reads as AdamW: the same configuration as the AdamW arm.
    no_optimizer = [
        {k: v for k, v in r.items() if k != "optimizer"}
        for r in rows_of("w", "lora", {1: (2.0, 2.1)}, lr=5e-3)
    ]
    assert points(no_optimizer, LEARN, FORGET)[0]["configuration"] == "lora-r4-all-lr5e-3"


def test_different_configurations_sharing_a_label_never_merge():
    # peft LoRA with a Gaussian initialisation is named like peft's default LoRA: both 'lora-r8-lr1e-3'.
    def peft_arm(arm: str, peft: str, seed: int = 0) -> list[dict]:
        return [
            dict(r, peft=peft, alpha=None)
            for r in rows_of(arm, "lora", {1: (2.0, 2.1)}, lr=1e-3, rank=8, seed=seed)
        ]

    default, gaussian = (
        '{"r": 8, "type": "LORA"}',
        '{"init_lora_weights": "gaussian", "r": 8, "type": "LORA"}',
    )
    rows = peft_arm("a-s0", default) + peft_arm("a-s1", '{"type": "LORA", "r": 8}', seed=1)
    assert {p["configuration"] for p in points(rows, LEARN, FORGET)} == {
        "lora-r8-lr1e-3"
    }  # one configuration
    avg = seed_average(points(rows + peft_arm("b-s0", gaussian), LEARN, FORGET))
    names = sorted(p["configuration"] for p in avg)
    assert len(names) == 2 and all(
        n.startswith("lora-r8-lr1e-3-") and len(n) == len("lora-r8-lr1e-3-") + 6 for n in names
    )
    assert sorted(p["seeds"] for p in avg) == [1, 2] and len({p["sweep"] for p in avg}) == 2


def test_points_one_per_arm_and_milestone():
    rows = BASE + rows_of("full-lr1e-3-s0", "full", {100: (2.0, 2.3), 200: (1.5, 2.6)})
    rows.append(dict(rows[-1], metric="code/pass@1", value=0.25))
    rows.append(dict(rows[-1], milestone=300, metric="code/pass@1", value=0.3))  # no axes at 300: no point
    pts = points(rows, LEARN, FORGET)
    assert [(p["arm"], p["milestone"]) for p in pts] == [
        ("base", 0),
        ("full-lr1e-3-s0", 100),
        ("full-lr1e-3-s0", 200),
    ]
    assert pts[2]["learning"] == 1.5 and pts[2]["forgetting"] == 2.6
    assert pts[2]["metrics"]["code/pass@1"] == 0.25 and pts[2]["configuration"] == "full-lr1e-3"
    assert pts[0]["method"] == "base"


def test_pareto_frontier_lower_is_better():
    rows = BASE + rows_of("a-s0", "full", {1: (1.0, 3.0)}) + rows_of("b-s0", "lora", {1: (2.0, 2.2)})
    rows += rows_of("c-s0", "lora", {1: (2.5, 2.5)})  # dominated by b (learns less, forgets more)
    rows += rows_of("d-s0", "full", {1: (1.2, 3.1)})  # dominated by a
    frontier = pareto_frontier(points(rows, LEARN, FORGET), LEARN, FORGET)
    # sorted from least to most forgetting: base (2.0), b (2.2), a (3.0)
    assert [p["arm"] for p in frontier] == ["base", "b-s0", "a-s0"]


def test_pareto_frontier_respects_higher_is_better():
    learn, forget = ("code/loss", True), ("english/loss", True)  # pretend both are accuracies
    rows = rows_of("a-s0", "full", {1: (0.5, 0.6)}) + rows_of("b-s0", "full", {1: (0.4, 0.5)})
    frontier = pareto_frontier(points(rows, learn, forget), learn, forget)
    assert [p["arm"] for p in frontier] == ["a-s0"]


def seeded_study() -> list[dict]:
    rows = list(BASE)
    for seed, jitter in ((0, -0.1), (1, 0.1)):
        rows += rows_of(
            f"full-lr1e-3-s{seed}", "full", {100: (1.8 + jitter, 2.4), 200: (1.2 + jitter, 2.9)}, seed=seed
        )
        rows += rows_of(f"lora-r4-all-lr1e-2-s{seed}", "lora", {100: (2.4, 2.1 + jitter), 200: (2.0, 2.3 + jitter)}, lr=1e-2, seed=seed, rank=4)  # fmt: skip
    return rows


def test_seed_average_means_and_spreads():
    avg = {
        (p["configuration"], p["milestone"]): p for p in seed_average(points(seeded_study(), LEARN, FORGET))
    }
    full = avg[("full-lr1e-3", 200)]
    assert full["seeds"] == 2 and full["arms"] == ["full-lr1e-3-s0", "full-lr1e-3-s1"]
    assert full["learning"] == pytest.approx(1.2) and full["learning_spread"] == pytest.approx(0.1)
    assert full["forgetting_spread"] == 0
    assert avg[("base", 0)]["learning_spread"] is None  # one seed: unknown


def test_recommend_picks_most_learning_within_threshold():
    pts = points(seeded_study(), LEARN, FORGET)
    # degradations vs base (english 2.0): full 0.4 @100, 0.9 @200; lora 0.1 @100, 0.3 @200
    rec = recommend(pts, LEARN, FORGET, max_forgetting=0.5)
    assert (rec["configuration"], rec["milestone"]) == ("full-lr1e-3", 100)
    assert rec["learning"] == pytest.approx(1.8) and rec["learning_gain"] == pytest.approx(1.2)
    assert rec["forgetting_degradation"] == pytest.approx(0.4) and rec["seeds"] == 2
    assert rec["learning_spread"] == pytest.approx(0.1) and rec["candidates"] == 3 and rec["considered"] == 4
    rec = recommend(pts, LEARN, FORGET, max_forgetting=0.35)
    assert (rec["configuration"], rec["milestone"]) == ("lora-r4-all-lr1e-2", 200)
    assert rec["forgetting_spread"] == pytest.approx(0.1)
    assert recommend(pts, LEARN, FORGET, max_forgetting=1.0)["milestone"] == 200  # full at the end
    assert recommend(pts, LEARN, FORGET, max_forgetting=0.05) is None
    assert "No trained configuration" in describe_recommendation(None, 0.05)
    assert "full-lr1e-3" in describe_recommendation(recommend(pts, LEARN, FORGET, 0.5))


def test_recommend_absolute_and_without_base():
    pts = points(seeded_study(), LEARN, FORGET)
    rec = recommend(pts, LEARN, FORGET, max_forgetting=2.45, relative_to_base=False)
    assert (rec["configuration"], rec["milestone"]) == ("full-lr1e-3", 100)
    no_base = [p for p in pts if p["method"] != "base"]
    with pytest.raises(UserError, match="no base-model evaluation"):
        recommend(no_base, LEARN, FORGET, max_forgetting=0.5)
    assert recommend(no_base, LEARN, FORGET, 2.45, relative_to_base=False)["forgetting_degradation"] is None


def test_lr_sensitivity_known_answer():
    rows = list(BASE)
    for lr, final in ((1e-4, 2.0), (1e-3, 1.5), (1e-2, 1.9)):
        for seed in (0, 1):
            rows += rows_of(f"full-lr{lr:.0e}-s{seed}", "full", {100: (2.5, 2.1), 200: (final + 0.01 * seed, 2.2)}, lr=lr, seed=seed)  # fmt: skip
    for lr, final in ((1e-3, 2.6), (1e-1, 2.2)):  # one decade apart twice: 0.4 per 2 decades
        rows += rows_of(f"lora-r4-all-lr{lr:.0e}-s0", "lora", {200: (final, 2.1)}, lr=lr, rank=4)
    rows += rows_of("lora-r8-all-lr1e-2-s0", "lora", {200: (2.0, 2.1)}, lr=1e-2, rank=8)
    sens = {r["sweep"]: r for r in lr_sensitivity(points(rows, LEARN, FORGET), LEARN)}
    assert set(sens) == {"full", "lora-r4-all", "lora-r8-all"}
    full = sens["full"]
    assert full["best_learning_rate"] == 1e-3 and full["best_value"] == pytest.approx(1.505)
    assert full["per_decade"] == pytest.approx((0.5 + 0.4) / 2)  # |Δ| to 1e-4 and to 1e-2, one decade each
    assert full["spread"] == pytest.approx(0.5) and full["seed_spread"] == pytest.approx(0.005)
    lora = sens["lora-r4-all"]
    assert lora["best_learning_rate"] == 1e-1 and lora["per_decade"] == pytest.approx(0.2)
    assert lora["rank"] == 4 and lora["min_decade_step"] == pytest.approx(2)
    assert sens["lora-r8-all"]["per_decade"] is None and sens["lora-r8-all"]["spread"] is None
    lumped = {r["sweep"]: r for r in lr_sensitivity(points(rows, LEARN, FORGET), LEARN, by=("method",))}
    assert lumped["method=lora"]["learning_rates"] == [1e-3, 1e-2, 1e-1]


def test_plot_and_markdown(tmp_path):
    pts = points(seeded_study(), LEARN, FORGET)
    frontier = pareto_frontier(pts, LEARN, FORGET)
    path = frontier_plot(pts, frontier, LEARN, FORGET, tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    text = frontier_markdown(
        pts,
        frontier,
        LEARN,
        FORGET,
        lr_sensitivity(pts, LEARN),
        recommend(pts, LEARN, FORGET, 0.5),
        "frontier.png",
    )
    assert "## Learning–forgetting frontier" in text and "## Learning-rate sensitivity" in text
    assert "| `lora-r4-all-lr1e-2-s0` | lora | 200 | 2.0000 | 2.2000 | 0.2000 |" in text
    assert "![learning–forgetting frontier](frontier.png)" in text and "Recommended: `full-lr1e-3`" in text
