"""The report: per-step training curves (store and TensorBoard), report.html (contents, and rendered in
headless Chromium), and static plots that stay readable on a 150-arm grid."""

from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess

import pytest

from learnforget.study.store import Store
from tests.conftest import cli_exit_code
from tests.synthetic_grid import synthetic_study

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
ARMS = ("full-lr1e-3-s0", "lora-r2-all-lr1e-2-s0")


def run_cli(args: list[str]) -> None:
    code = cli_exit_code(args)
    assert not code, f"learnforget {' '.join(args)} exited {code}"


@pytest.fixture(scope="module")
def tracked_run(micro_config, tmp_path_factory):
    """The micro study (full finetuning and LoRA r2, 12 steps), logging to TensorBoard when installed."""
    out = tmp_path_factory.mktemp("report") / "micro"
    extra = ["--set", "log_with=[tensorboard]"] if HAS_TENSORBOARD else []
    run_cli(["run", str(micro_config), "--out", str(out), *extra])
    return out


def test_steps_table_holds_loss_learning_rate_and_gradient_norm_of_every_step(tracked_run):
    store = Store(tracked_run)
    peak = {"full-lr1e-3-s0": 1e-3, "lora-r2-all-lr1e-2-s0": 1e-2}
    first_losses = []
    for arm in ARMS:
        rows = store.steps(arm)
        assert [r["step"] for r in rows] == list(range(1, 13))
        assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
        rates = [r["learning_rate"] for r in rows]
        # warm-up (10% of 12 steps = 1 step) to the arm's rate, then cosine decay
        assert rates[0] == pytest.approx(peak[arm] / 2) and max(rates) == pytest.approx(peak[arm])
        assert rates[-1] < rates[2]
        first_losses.append(rows[0]["loss"])
    # Both arms start from the same base on the same batch (LoRA's B = 0): the same first loss.
    assert first_losses[0] == pytest.approx(first_losses[1], rel=1e-5)
    full = store.steps("full-lr1e-3-s0")
    assert full[-1]["loss"] < full[0]["loss"] - 0.05, "full finetuning must lower its training loss"


@pytest.mark.skipif(
    not HAS_TENSORBOARD, reason="tensorboard not installed (pip install 'learnforget[trackers]')"
)
def test_tensorboard_event_files_hold_every_arms_per_step_loss(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = Store(tracked_run)
    for arm in ARMS:
        run_dir = tracked_run / "tracking" / arm / "micro"
        events = EventAccumulator(str(run_dir))
        events.Reload()
        logged = events.Scalars("train/loss")
        assert [e.step for e in logged] == list(range(1, 13))
        assert [e.value for e in logged] == pytest.approx([r["loss"] for r in store.steps(arm)], rel=1e-6)
        assert [e.step for e in events.Scalars("eval/code/loss")] == [4, 8, 12]
        hparams = next(run_dir.glob("*/hparams.yml")).read_text()
        assert "arm.learning_rate" in hparams and "budget_tokens: 6144" in hparams


def test_report_html_is_self_contained_and_names_every_arm(tracked_run):
    from html.parser import HTMLParser

    class Links(HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag, attrs):
            self.found += [f"<{tag} {k}={v}>" for k, v in attrs if k in ("src", "href") and v and "//" in v]

    page = (tracked_run / "report.html").read_text()
    links = Links()
    links.feed(page)
    assert links.found == [], "the page must open without network"
    for arm in ARMS:
        assert arm in page
    for section in (
        "Learning vs forgetting",
        "Pareto frontier",
        "Arms",
        "Claims",
        "Training curves",
        "ΔW spectrum",
        "ΔW rank per matrix",
    ):
        assert section in page
    assert "§4.1" in page and "torch" in page and "learning_rate" in page  # claims, environment, config


def _render(html_path, tmp_path) -> tuple[str, str, object]:
    """(DOM after scripts ran, errors the page reported, screenshot as an RGB array) from headless Chromium."""
    import matplotlib.image

    # Record console errors and uncaught exceptions in the DOM, where --dump-dom can read them back.
    hook = (
        "<script>window.__errors=[];function __keep(m){window.__errors.push(String(m));"
        "document.documentElement.setAttribute('data-errors',window.__errors.join(' | '));}"
        "var __e=console.error;console.error=function(){__keep(Array.from(arguments).join(' '));__e.apply(console,arguments);};"
        "window.addEventListener('error',function(e){__keep(e.message);});</script>"
    )
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("<head>", "<head>" + hook, 1))
    flags = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=15000",
    ]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=180)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, "--window-size=1400,2400", f"--screenshot={shot}", probe.as_uri()],
        capture_output=True,
        timeout=180,
    )
    errors = dom.stdout.split('data-errors="')[1].split('"')[0] if 'data-errors="' in dom.stdout else ""
    return dom.stdout, errors + " ".join(console), matplotlib.image.imread(shot)


@pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium to render report.html (apt-get install -y chromium)"
)
def test_report_html_renders_in_headless_chromium(tracked_run, tmp_path):
    dom, errors, image = _render(tracked_run / "report.html", tmp_path)
    assert errors == "", f"console errors: {errors}"
    assert 'class="main-svg"' in dom, "plotly drew no figure"
    # Base + 3 milestones per arm on the plane, 12 steps per arm on three training panels (points drawn).
    assert dom.count('class="point"') >= 2 * 4
    pixels = image[..., :3].reshape(-1, 3)
    not_white = (pixels.min(axis=1) < 0.9).mean()
    assert 0.02 < not_white < 0.9, f"blank or solid screenshot ({not_white:.1%} non-white pixels)"
    assert len({tuple(p) for p in (pixels[::97] * 255).astype(int)}) > 20, "too few colours: nothing drawn"


def test_150_arm_grid_gets_seed_means_family_colours_and_small_multiples(tmp_path):
    from learnforget.report.figures import plane_figure
    from learnforget.report.html import status_banner
    from learnforget.report.plane import by_configuration, describe_plane, study_points
    from learnforget.report.plots import _panels
    from learnforget.report.style import colors, family

    store, study, names = synthetic_study(tmp_path, unfinished=5)
    assert len(names) >= 145
    _, avg, learn, forget = study_points(store, study)
    lines = by_configuration(avg)
    assert len(lines) == len({n.rsplit("-s", 1)[0] for n in names[:-5]}), (
        "one line per configuration, not per seed"
    )
    plane = describe_plane(avg, learn, forget, "grid")
    assert {s.name for s in plane.series} == set(lines), "one series per configuration"
    panels = _panels([s.name for s in plane.series], {s.name: s.family for s in plane.series})
    assert len(panels) == len({family(pts[0]) for pts in lines.values()}) > 1, "one panel per family at scale"
    palette = colors([pts[0] for pts in lines.values()])
    for _, members in panels:
        assert len({palette[c] for c in members}) == len(members), "shades within a family must differ"
    assert len(set(palette.values())) == len(palette)
    full = next(s for s in plane.series if s.name == "full-lr1e-3")
    assert not full.dashed and full.label == "full-lr1e-3 (3 seeds)" and full.points[0] == plane.base
    assert all(s.dashed for s in plane.series if s.family.startswith("LoRA"))
    assert plane.y.reversed and not plane.x.reversed, "losses: up = lower loss, right = higher loss"
    fig = plane_figure(plane)
    traces = [t for t in fig.data if t.name in lines]
    assert len(traces) == len(lines)
    three_seeds = next(t for t in traces if t.name == "full-lr1e-3")
    assert (
        max(three_seeds.error_y.array) > 0 and "seeds: full-lr1e-3-s0, full-lr1e-3-s1" in three_seeds.text[-1]
    )
    banner = status_banner(store.arms())
    assert f"{len(names) - 5} of {len(names)} arms finished (5 running)" in banner


@pytest.mark.slow
def test_150_arm_grid_report_writes_every_plot_and_page(tmp_path):
    from learnforget.report.tables import write_report

    store, study, names = synthetic_study(tmp_path, unfinished=5)
    page = write_report(tmp_path, store, study).read_text()
    for png in (
        "learning_forgetting.png",
        "frontier.png",
        "spectrum_over_training.png",
        "training_curves.png",
    ):
        assert (tmp_path / png).stat().st_size > 20_000
    assert all(name in page for name in names)
    assert f"{len(names) - 5} of {len(names)} arms finished (5 running)" in page


def test_export_writes_metrics_arms_and_steps_in_long_format(tracked_run, tmp_path):
    import csv
    import json

    store = Store(tracked_run)
    run_cli(["export", str(tracked_run), "--format", "csv", "--out", str(tmp_path / "csv")])
    run_cli(["export", str(tracked_run), "--format", "jsonl", "--out", str(tmp_path / "jsonl")])
    metrics = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))  # noqa: SIM115
    assert len(metrics) == len(store.metrics()) and {
        "arm",
        "method",
        "learning_rate",
        "metric",
        "value",
    } <= set(metrics[0])
    full_final = next(
        r for r in metrics if r["arm"] == ARMS[0] and r["milestone"] == "6144" and r["metric"] == "code/loss"
    )
    stored = next(r for r in store.metrics(ARMS[0]) if r["tokens"] == 6144 and r["metric"] == "code/loss")
    assert float(full_final["value"]) == stored["value"]
    steps = [json.loads(line) for line in open(tmp_path / "jsonl" / "steps.jsonl")]  # noqa: SIM115
    assert len(steps) == 3 * len(store.steps())  # loss, learning_rate, grad_norm per step
    assert {s["metric"] for s in steps} == {"loss", "learning_rate", "grad_norm"}
    assert (
        next(s for s in steps if s["arm"] == ARMS[0] and s["step"] == 12 and s["metric"] == "loss")["tokens"]
        == 6144
    )
    arms = [json.loads(line) for line in open(tmp_path / "jsonl" / "arms.jsonl")]  # noqa: SIM115
    assert {a["name"] for a in arms} == {"base", *ARMS}
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow.parquet as pq

        run_cli(["export", str(tracked_run), "--format", "parquet", "--out", str(tmp_path / "pq")])
        assert pq.read_table(tmp_path / "pq" / "metrics.parquet").num_rows == len(metrics)


def test_study_clock_counts_milestones_and_estimates_from_measured_times():
    from learnforget.study.progress import StudyClock

    # 2 arms × 2 milestones of 4 steps, 2 workers; arm b resumed from its first milestone.
    clock = StudyClock(4, [2, 4], workers=2, resumed={"a": 0, "b": 2}, now=0.0)
    assert (clock.total, clock.completed) == (4, 1)
    assert clock.eta_seconds() is None  # nothing measured yet
    clock.on_step("a", 1, now=0.0)
    clock.on_step("a", 2, now=1.0)  # a step takes 1 s
    clock.on_milestone("a", 2, now=4.0)  # an evaluation takes 3 s
    assert clock.completed == 2
    # Left: a 2 steps + b 2 steps = 4 s of steps, 2 evaluations = 6 s; two workers share it. The work
    # seen (2 steps, 1 evaluation: 5 s over 2 workers) accounts for 2.5 s elapsed, and for half of 5 s.
    assert clock.eta_seconds(now=2.5) == pytest.approx((4 * 1.0 + 2 * 3.0) / 2)
    assert clock.eta_seconds(now=5.0) == pytest.approx((4 * 1.0 + 2 * 3.0) / 2 * 2)  # loading etc.: ×2
    clock.on_step("a", 3, now=10.0)  # after a milestone (checkpoint saved): not a step time
    assert clock.step_times == [1.0]
    clock.on_done("b")
    assert clock.completed == 3 and "ETA" in clock.describe()


def test_study_clock_eta_line_is_right_before_during_and_after_milestones_of_one_step_epochs():
    from learnforget.study.progress import StudyClock

    # IFT, 2 epochs of one step each: every step but the first follows a milestone (and its checkpoint).
    clock = StudyClock(2, [1, 2], workers=1, resumed={"a": 0}, now=0.0)
    assert (clock.total, clock.completed) == (2, 0)
    assert clock.describe(now=0.0) == "ETA after the first milestone"
    clock.on_step("a", 1, now=0.0)
    clock.on_milestone("a", 1, now=2.0)  # the milestone's own step: its evaluation took 2 s
    assert clock.completed == 1 and clock.eval_times == [2.0]
    assert clock.describe(now=2.0) == "ETA after the next milestone"  # no step measured yet
    clock.on_step("a", 2, now=5.0)  # 3 s after the milestone's report: the only step time there is
    assert clock.describe(now=5.0) == "ETA 5s (step 3.00 s, evaluation 2.0 s)"  # 1 step + 1 evaluation left
    clock.on_milestone("a", 2, now=7.0)
    assert clock.completed == 2 and clock.describe(now=7.0) == "all milestones done"


def test_study_header_counts_real_ift_tokens_and_a_milestone_per_epoch():
    from learnforget.config.study import StudyConfig
    from learnforget.study.progress import arm_budget, study_header

    ift = StudyConfig(regime="ift", domain="math", epochs=2, data={"examples": 16})
    assert study_header(ift, 1, 7340) == "1 arm × 7,340 tokens (2 epochs × 16 examples), 2 milestones"
    # The dry run, before tokenizing: no token count yet.
    assert study_header(ift, 3) == "3 arms × 2 epochs × 16 examples, 2 milestones"
    by_budget = StudyConfig(regime="ift", domain="math", budget_tokens=4096, batch_size=4, seq_len=128)
    assert arm_budget(by_budget, 1500) == "1,500 tokens (8 steps × 4 examples)"
    cpt = StudyConfig(budget_tokens=131_072 + 100)  # whole steps: the tokens trained, not the budget asked
    assert study_header(cpt, 4) == "4 arms × 131,072 tokens, 5 milestones"
