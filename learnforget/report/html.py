"""report.html: one self-contained page per study and per suite, opened from disk with no network.

Plotly draws the figures (`report.figures`: hover names the arm, its settings and numbers; zoom; click a
legend entry to hide a family). Its JavaScript library (about 4.8 MB) is embedded once per page instead of
loaded from a CDN, so the file works offline and in archived study directories; a hand-written SVG would
be smaller but would re-implement hover, zoom and legends that plotly keeps working in every browser.
Tables are plain HTML made sortable (click a header) and filterable by a few lines of inline JavaScript
(`report.page`).
"""

from __future__ import annotations

import json
import platform
import time
from collections import defaultdict
from pathlib import Path

from learnforget.analyse.claims import claims_side_by_side
from learnforget.analyse.frontier import pareto_frontier
from learnforget.analyse.points import is_base, is_paper_kind
from learnforget.analyse.verdicts import FACTOR
from learnforget.base.gguf import named_base_description
from learnforget.config.metrics import forgetting_metric, learning_metric
from learnforget.config.study import StudyConfig
from learnforget.files import writing
from learnforget.report.figures import matrices_figure, plane_figure, spectrum_figure, training_figure
from learnforget.report.page import esc, figure_html, page, table
from learnforget.report.plane import describe_plane, study_points
from learnforget.report.study_data import claims_for_study_dir, claims_for_suite_dir, method_rows
from learnforget.report.style import STAGE_NOTE, arm_configurations, colors, family
from learnforget.study.stage_times import stage_table
from learnforget.study.store import Store
from learnforget.versions import package_versions

HTML_NAME = "report.html"


def environment() -> dict[str, str]:
    """Versions and device of this process, stored with a study when it runs."""
    import torch  # heavy (about 1 s): a page re-drawn from a store needs no torch until here

    env = {"python": platform.python_version(), "platform": platform.platform(), **package_versions()}
    if torch.cuda.is_available():
        env["device"] = f"cuda: {torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}"
    else:
        env["device"] = (
            f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        )
    return env


# ---------------------------------------------------------------------------------------------------
# Sections


def status_banner(arms: list[dict]) -> str:
    """How many arms have finished, when not all have (empty when they have)."""
    counts: dict[str, int] = defaultdict(int)
    for a in arms:
        if not is_base(a):
            counts[a["status"]] += 1
    total = sum(counts.values())
    if counts["done"] == total:
        return ""
    rest = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "done")
    return (
        f'<p class="banner">{counts["done"]} of {total} arms finished ({rest}): this page shows what is '
        "finished so far; it is rewritten as arms finish (or run <code>learnforget report DIR</code>).</p>"
    )


def arms_table(table_id: str, store, learn: tuple, forget: tuple, base: dict | None) -> str:
    """Every arm with its settings, status, final numbers, change vs the base, and cost."""
    finals: dict[str, dict] = {}
    milestones: dict[str, int] = defaultdict(int)
    for r in store.metric_rows():
        finals.setdefault(r["arm"], {})
        if r["milestone"] >= finals[r["arm"]].get("_tokens", -1):
            if r["milestone"] > finals[r["arm"]].get("_tokens", -1):
                finals[r["arm"]] = {"_tokens": r["milestone"]}
                milestones[r["arm"]] += 1
            finals[r["arm"]][r["metric"]] = r["value"]
    arms = store.arms()
    configurations = arm_configurations(arms)
    palette = colors([{**a, "configuration": configurations[a["name"]]} for a in arms])
    header = ["arm", "family", "status", "method", "rank", "targets", "LR", "weight decay", "dropout", "seed",
              "tokens", learn[0], f"Δ {learn[0]}", forget[0], f"Δ {forget[0]}", "ΔW rank (90%)", "trainable",
              "tokens/s", "train s", "peak MB"]  # fmt: skip
    rows, swatches = [], []
    for a in arms:
        final = finals.get(a["name"], {})

        def delta(metric: str, final=final) -> float | None:
            if base is None or metric not in final or metric not in base["metrics"]:
                return None
            return final[metric] - base["metrics"][metric]

        rows.append([
            a["name"], family(a), a["status"], a["method"], a["rank"], a["target_modules"], a["learning_rate"],
            a["weight_decay"], a["dropout"], a["seed"], final.get("_tokens"), final.get(learn[0]),
            delta(learn[0]), final.get(forget[0]), delta(forget[0]), final.get("spectrum/rank_delta_fraction"),
            a["trainable_params"], a["tokens_per_s"], a["train_seconds"], a["peak_memory_mb"],
        ])  # fmt: skip
        swatches.append(palette.get(configurations[a["name"]], "#888"))
    return table(table_id, header, rows, text_cols=6, swatches=swatches)


def methods_section(study_dir: Path, prefix: str = "") -> list[str]:
    """The methods ranked on the frontier (`analyse.methods`), where the study trains more than the
    paper's two methods (full finetuning and LoRA)."""
    methods = method_rows(study_dir)
    if all(is_paper_kind(m["kind"]) for m in methods):
        return []
    header = ["rank", "method", "on frontier", "best configuration", "seeds", "learning", "± learning",
              "forgetting", "± forgetting", "trainable", "tokens/s", "peak MB", "ΔW rank (90%)", "intruders",
              "± intruders"]  # fmt: skip
    rows = [
        [i + 1, m["method"], m["frontier"], m["best"], m["seeds"], *m["learning"], *m["forgetting"],
         m["trainable"][0], m["tokens_per_s"][0], m["peak_memory_mb"][0], m["rank_fraction"][0], *m["intruders"]]
        for i, m in enumerate(methods)
    ]  # fmt: skip
    return [
        f"<h2 id='{prefix}methods'>Methods</h2>",
        "<p>Each method's best configuration (best learning at the final milestone), ranked by how many of its "
        "configurations lie on the learning–forgetting frontier, then by learning; ± = half-range over seeds.</p>",
        table(f"{prefix}methods-table", header, rows, text_cols=4),
    ]


def stage_section(store, prefix: str = "") -> list[str]:
    """Seconds per arm and stage (nothing for a study stored before stages were timed)."""
    header, rows = stage_table(store)
    if not rows:
        return []
    return [f"<h3 id='{prefix}stages'>Time per stage (seconds)</h3>", f"<p>{esc(STAGE_NOTE)}</p>",
            table(f"{prefix}stages-table", header, rows)]  # fmt: skip


def claims_table(table_id: str, claims: list[dict]) -> str:
    """The claims' verdicts with their effect, noise and evidence."""
    header = ["id", "§", "source", "claim", "verdict", "qualifier", "effect", "3× spread", "evidence"]
    rows = [
        [c["id"], c["section"], c.get("source", "paper"), c["claim"], c["verdict"], c.get("qualifier") or "",
         c["effect"], None if c["noise"] is None else FACTOR * c["noise"], c["evidence"]]
        for c in claims
    ]  # fmt: skip
    return table(table_id, header, rows, text_cols=6)


def frontier_table(table_id: str, frontier: list[dict], learn: tuple, forget: tuple) -> str:
    """The Pareto frontier's points (seed means)."""
    rows = [
        [p["configuration"], family(p), p["milestone"], p["learning"], p["forgetting"], p["seeds"]]
        for p in frontier
    ]
    header = ["configuration", "family", "tokens", learn[0], forget[0], "seeds"]
    return table(table_id, header, rows, text_cols=2)


def footer(study, store) -> str:
    """The config, base model and environment of the run, and when this page was written."""
    env = store.info("environment") or {}
    now = environment()
    env_rows = "".join(
        f"<tr><td class='t'>{esc(k)}</td><td class='t'>{esc(v)}</td></tr>" for k, v in env.items()
    )
    config = json.dumps(store.info("config") or json.loads(study.model_dump_json()), indent=1)
    named = named_base_description(study.base_model)
    return (
        "<footer><h2>Config, base model and environment</h2>"
        f"<p>Base model: <code>{esc(store.info('base_path', study.base_model))}</code> "
        f"(config: <code>{esc(study.base_model)}</code>{esc(': ' + named) if named else ''}).</p>"
        + (f"<p>Environment of the run:</p><table>{env_rows}</table>" if env else "<p>Environment of the run: not recorded.</p>")
        + f"<p>Report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')} with learnforget "
        f"{esc(now.get('learnforget', '?'))}, plotly embedded (no network needed).</p>"
        f"<details><summary>Study config (JSON)</summary><pre>{esc(config)}</pre></details></footer>"
    )  # fmt: skip


def plane_section(study, avg: list[dict], learn: tuple, forget: tuple, prefix: str = "") -> list[str]:
    """The learning–forgetting plane and its Pareto frontier's table."""
    frontier = pareto_frontier(avg, learn, forget)
    plane = describe_plane(avg, learn, forget, f"{study.name}: learning vs forgetting", frontier)
    return [
        f"<h2 id='{prefix}plane'>Learning vs forgetting</h2>",
        "<p>One line per configuration from the base (★) through its milestones: the mean over seeds, "
        "with the seed spread (half-range) as error bars; colour = family, shade = rank (LoRA) or "
        "learning rate (full); dotted: the Pareto frontier of the seed means. Hover a point for the arm, "
        "its settings and numbers; click a legend entry to hide it, double-click to isolate it.</p>",
        figure_html(plane_figure(plane), f"{prefix}plane-fig"),
        "<h3>Pareto frontier (seed means)</h3>",
        frontier_table(f"{prefix}frontier", frontier, learn, forget),
    ]


def claims_section(study_dir: Path, prefix: str = "") -> list[str]:
    """The paper's findings judged on the study's numbers."""
    return [
        f"<h2 id='{prefix}claims'>Claims</h2>",
        "<p>Each finding of Biderman et al. (2024) judged on this study's numbers (§ = the paper's "
        "section; source <i>ours</i> = our stricter tests, beyond the paper). Supported only when the "
        "effect is at least 3× the seed noise; contradicted when the opposite effect is.</p>",
        claims_table(f"{prefix}claims-table", claims_for_study_dir(study_dir)),
    ]


def curves_section(store, arms: list[dict], prefix: str = "") -> list[str]:
    """Training curves, ΔW's spectrum along training and per matrix (what the store has of them)."""
    parts = []
    steps = store.steps()
    if steps:
        parts += [f"<h2 id='{prefix}training'>Training curves</h2>",
                  figure_html(training_figure(steps, arms), f"{prefix}training-fig")]  # fmt: skip
    spectrum = spectrum_figure(store.metric_rows(), arms)
    if spectrum is not None:
        parts += [f"<h2 id='{prefix}spectrum'>ΔW spectrum along training</h2>",
                  figure_html(spectrum, f"{prefix}spectrum-fig")]  # fmt: skip
    heatmap = matrices_figure(store.matrices())
    if heatmap is not None:
        parts += [
            "<h3>ΔW rank per matrix at the last milestone</h3><p>Rank explaining 90% of each matrix's ΔW "
            "variance, as a fraction of min(m, n) (a Gaussian random matrix needs about 0.5); pick an arm "
            "from the menu.</p>",
            figure_html(heatmap, f"{prefix}matrices-fig"),
        ]
    return parts


def study_sections(study_dir: Path, store, study, prefix: str = "", curves: bool = True) -> list[str]:
    """The body of a study's page (also each setting's part of a suite page, there without the training
    curves and spectra, which stay in the setting's own page): figures and tables."""
    pts, avg, learn, forget = study_points(store, study)
    base = next((p for p in avg if is_base(p)), None)
    arms = store.arms()
    parts = [status_banner(arms)]
    if pts:
        parts += plane_section(study, avg, learn, forget, prefix)
    parts += [
        f"<h2 id='{prefix}arms'>Arms</h2>",
        arms_table(f"{prefix}arms-table", store, learn, forget, base),
        *stage_section(store, prefix),
    ]
    if pts:
        parts += methods_section(study_dir, prefix) + claims_section(study_dir, prefix)
    return parts + (curves_section(store, arms, prefix) if curves else [])


def write_study_html(study_dir: Path, store, study) -> Path:
    """report.html of one study."""
    study_dir = Path(study_dir)
    learn, forget = learning_metric(study)[0], forgetting_metric(study)[0]
    header = [
        f"<h1>Study <code>{esc(study.name)}</code></h1>",
        f"<p class='meta'>Target domain <b>{esc(study.domain)}</b> ({study.regime.upper()}), "
        f"{study.budget_tokens:,} tokens per arm in {study.steps} steps of {study.batch_size}×{study.seq_len}. "
        f"Learning = <code>{esc(learn)}</code> (target, held out); forgetting = <code>{esc(forget)}</code> "
        "(source, held out). Static versions: <a href='summary.md'>summary.md</a> and the PNGs beside it.</p>",
    ]
    body = header + study_sections(study_dir, store, study) + [footer(study, store)]
    path = study_dir / HTML_NAME
    tmp = path.with_name(f".{HTML_NAME}.tmp")
    with writing(study_dir, HTML_NAME, tmp):  # a full disk leaves no .tmp behind
        tmp.write_text(page(f"learnforget: {study.name}", body))
        tmp.replace(path)  # a browser refreshing mid-write sees the old page or the new, never half
    return path


def write_suite_html(suite_dir: Path, settings: list[str]) -> Path:
    """report.html of a suite: the verdicts per setting, the findings across settings, then each setting's
    plane, arms and claims (each setting's own report.html has its training curves and spectra too)."""
    suite_dir = Path(suite_dir)
    judged = {key: claims_for_study_dir(suite_dir / key) for key in settings}
    verdicts = [[f"{c['section']} {c['claim']}", c.get("source", "paper")] + [per[k]["verdict"] if per[k] else "–" for k in settings]
                for c, per in claims_side_by_side(judged)]  # fmt: skip
    body = [
        f"<h1>Suite <code>{esc(suite_dir.name)}</code></h1>",
        "<p class='meta'>Settings: " + ", ".join(f"<a href='#{k}-plane'>{esc(k)}</a> (<a href='{esc(k)}/report.html'>full report</a>)" for k in settings) + "</p>",
        "<h2>Claims per setting</h2>",
        table("verdicts", ["claim", "source", *settings], verdicts, text_cols=2 + len(settings)),
        "<h2>Across settings</h2>",
        claims_table("across", claims_for_suite_dir(suite_dir, settings)),
    ]  # fmt: skip
    last_store, last_study = None, None
    for key in settings:
        store = Store(suite_dir / key)
        study = StudyConfig.model_validate(store.info("config"))
        body += [f"<h2 style='border:0;font-size:26px'>{esc(key)}</h2>"]
        body += study_sections(suite_dir / key, store, study, prefix=f"{key}-", curves=False)
        last_store, last_study = store, study
    body.append(footer(last_study, last_store))
    path = suite_dir / HTML_NAME
    path.write_text(page(f"learnforget suite: {suite_dir.name}", body))
    return path
