"""What a running study shows: progress bars (or a line every tenth of the way without a terminal), one
line per milestone, and the study's ETA. Arms report progress as typed events (study/events.py): Step,
Milestone, Spectra and Ended.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from learnforget.study.events import Ended, Event, Milestone, Spectra, Step
from learnforget.study.progress import StudyClock

console = Console(stderr=True)
# Tables are wide; when output goes to a file or pipe, don't squeeze them into 80 columns.
out_console = Console() if sys.stdout.isatty() else Console(width=200)
HTML_REFRESH_SECONDS = 30  # report.html is rewritten at most this often while a study runs (about 1 s each)


class _Remaining(TimeRemainingColumn):
    """rich's estimate, except where a task carries its own (the study's ETA is in its info)."""

    def render(self, task):
        return Text(task.fields["eta"]) if "eta" in task.fields else super().render(task)


def progress_bars() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), _Remaining(), console=console,
    )  # fmt: skip


def log_tenth(what: str, step: int, total: int, loss: float) -> None:
    """Without a terminal progress bars draw nothing until the end: log every tenth instead."""
    if not console.is_terminal and step % max(1, total // 10) == 0:
        console.print(f"{what}: step {step}/{total}, loss {loss:.3f}", highlight=False)


def pretrain_progress(progress: Progress, steps: int):
    """A pretraining progress callback drawing a bar (and logging every tenth step without a terminal)."""
    task = progress.add_task("pretrain base", total=steps, info="")

    def update(step: int, total: int, loss: float) -> None:
        progress.update(task, completed=step, info=f"loss {loss:.3f}")
        log_tenth("pretrain base", step, total, loss)

    return update


class StudyDisplay:
    """Progress of a study's arms: a bar per arm and one for the study (milestones, ETA from StudyClock).
    `refresh` rewrites the report page (called after an arm ends, at most every HTML_REFRESH_SECONDS)."""

    def __init__(self, study, arms: list[str], resumed: dict[str, int], refresh: Callable[[], None] | None):
        self.steps, self.refresh = study.steps, refresh
        self.clock = StudyClock(study.steps, study.milestone_steps(), study.workers, resumed)
        self.refreshed = (
            time.monotonic()
        )  # first after HTML_REFRESH_SECONDS: a short study's workers keep the cores
        self.progress = progress_bars()
        self.overall = self.progress.add_task(
            f"study ({len(arms)} arm{'s' * (len(arms) != 1)} × {len(study.milestone_steps())} milestones)",
            total=self.clock.total, completed=self.clock.completed, info=self.clock.describe(), eta="",
        )  # fmt: skip
        self.tasks = {
            a: self.progress.add_task(a, total=study.steps, completed=resumed[a], info="") for a in arms
        }

    def __enter__(self) -> StudyDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        match event:
            case Step():
                self.on_step(event)
            case Milestone():
                self.on_milestone(event)
            case Spectra(arm=name, done=done, total=total):
                self.progress.update(self.tasks[name], info=f"ΔW spectra {done}/{total} matrices")
                if done == 0 and not console.is_terminal:
                    console.print(f"{name}: ΔW spectra of {total} matrices", highlight=False)
            case Ended():
                self.on_end(event)

    def on_step(self, event: Step) -> None:
        self.clock.on_step(event.arm, event.step)
        self.progress.update(self.tasks[event.arm], completed=event.step, info=f"loss {event.loss:.3f}")
        log_tenth(event.arm, event.step, event.total, event.loss)

    def on_milestone(self, event: Milestone) -> None:
        name, tokens, metrics = event.arm, event.tokens, event.metrics
        self.clock.on_milestone(name, event.step)
        self.progress.update(self.overall, completed=self.clock.completed, info=self.clock.describe())
        shown = "  ".join(f"{k} {v:.3f}" for k, v in sorted(metrics.items()) if not k.startswith("spectrum/"))
        self.progress.console.print(f"[dim]{name} @ {tokens:,} tokens:[/] {shown}")
        if not console.is_terminal:
            console.print(
                f"study: {self.clock.completed}/{self.clock.total} milestones, {self.clock.describe()}"
            )

    def on_end(self, event: Ended) -> None:
        name = event.arm
        if event.status != "done":
            self.progress.console.print(f"[red]{name} {event.status}:[/] {event.reason}", highlight=False)
        self.clock.on_done(name)
        self.progress.update(self.tasks[name], completed=self.steps)
        self.progress.update(self.overall, completed=self.clock.completed, info=self.clock.describe())
        if self.refresh is not None and time.monotonic() - self.refreshed > HTML_REFRESH_SECONDS:
            self.refresh()
            self.refreshed = time.monotonic()
