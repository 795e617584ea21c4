"""The study's overall progress (arms × milestones) and an ETA from measured step and evaluation times.

Workers report each optimizer step and each milestone by its step (after its evaluation and
checkpoint). The time between two consecutive steps of an arm is a step; the time from an arm's last
step to its milestone report is an evaluation; the first step after a milestone, timed from that
report, stands in only where no other step was timed (epochs of one step). The ETA is the remaining
steps and evaluations at their mean measured times, divided over the workers that still have arms to
run, and scaled by what that model misses so far (loading each arm, saving it): the wall time elapsed
over the time the measured work accounts for.

`arm_budget` is what each arm trains on, in the run header and the dry run.
"""

from __future__ import annotations

import time
from statistics import mean


class StudyClock:
    """Counts finished milestones and estimates the time left; `now` is injectable for tests."""

    def __init__(
        self,
        steps: int,
        milestone_steps: list[int],
        workers: int,
        resumed: dict[str, int],
        now: float | None = None,
    ):
        """`resumed`: arm -> steps already done (its last finished milestone; `steps` when done)."""
        self.steps, self.milestone_steps, self.workers = steps, milestone_steps, max(1, workers)
        self.started = time.monotonic() if now is None else now
        self.steps_seen = self.evals_seen = 0
        self.position = dict(resumed)
        self.last_step: dict[str, tuple[int, float]] = {}
        self.step_times: list[float] = []
        self.after_milestone_times: list[float] = []  # first steps after a milestone: a loop restart too
        self.eval_times: list[float] = []

    @property
    def total(self) -> int:
        return len(self.position) * len(self.milestone_steps)

    @property
    def completed(self) -> int:
        return sum(sum(m <= done for m in self.milestone_steps) for done in self.position.values())

    def on_step(self, arm: str, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        previous = self.last_step.get(arm)
        if previous is not None and previous[0] == step - 1:
            after_milestone = step - 1 in self.milestone_steps  # it also restarts the training loop
            (self.after_milestone_times if after_milestone else self.step_times).append(now - previous[1])
        self.last_step[arm] = (step, now)
        self.steps_seen += 1

    def on_milestone(self, arm: str, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if arm in self.last_step and self.last_step[arm][0] == step:
            self.eval_times.append(now - self.last_step[arm][1])
            self.last_step[arm] = (step, now)  # the next step is timed from here
        self.position[arm] = step
        self.evals_seen += 1

    def on_done(self, arm: str) -> None:
        self.position[arm] = self.steps

    def mean_times(self) -> tuple[float, float] | None:
        """(seconds a step, seconds an evaluation, its checkpoint included), measured; None until both
        were. Steps that follow a milestone count only when no other was measured (epochs of one step)."""
        steps = self.step_times or self.after_milestone_times
        if not steps or not self.eval_times:
            return None
        return mean(steps[-200:]), mean(self.eval_times[-50:])

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, or None until one step and one evaluation have been measured."""
        times = self.mean_times()
        if times is None:
            return None
        now = time.monotonic() if now is None else now
        step, evaluation = times
        left_steps = sum(self.steps - done for done in self.position.values())
        left_evals = self.total - self.completed
        running = sum(done < self.steps for done in self.position.values())
        parallel = min(self.workers, len(self.position))
        accounted = (self.steps_seen * step + self.evals_seen * evaluation) / parallel
        overhead = max(1.0, (now - self.started) / accounted) if accounted > 0 else 1.0
        return (left_steps * step + left_evals * evaluation) / max(1, min(self.workers, running)) * overhead

    def describe(self, now: float | None = None) -> str:
        """The ETA line: what is left, or when it will be known."""
        if self.completed >= self.total:
            return "all milestones done"
        eta = self.eta_seconds(now)
        if eta is None:
            return "ETA after the next milestone" if self.evals_seen else "ETA after the first milestone"
        step, evaluation = self.mean_times()
        return f"ETA {format_duration(eta)} (step {step:.2f} s, evaluation {evaluation:.1f} s)"


def arm_budget(study, tokens: int | None = None) -> str:
    """What each arm trains on: CPT '131,072 tokens'; IFT its epochs (or steps) of examples, with
    ``tokens`` (the real tokens, ``datasets.trained_tokens``) once the examples are tokenized:
    '7,340 tokens (2 epochs × 16 examples)'."""
    if study.regime == "cpt":
        return f"{study.steps * study.tokens_per_step:,} tokens"
    if study.epochs:
        rows = f"{study.epochs} epoch{'s' * (study.epochs > 1)} × {study.data.examples:,} examples"
    else:
        rows = f"{study.steps:,} steps × {study.batch_size} examples"
    return rows if tokens is None else f"{tokens:,} tokens ({rows})"


def study_header(study, n_arms: int, tokens: int | None = None) -> str:
    """'N arms × <arm_budget>, M milestones' (milestones as `milestone_steps`: one per epoch in IFT)."""
    milestones = len(study.milestone_steps())
    arms = f"{n_arms} arm{'s' * (n_arms != 1)}"
    return f"{arms} × {arm_budget(study, tokens)}, {milestones} milestone{'s' * (milestones != 1)}"


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
