"""The study's overall progress (arms × milestones) and an ETA from measured step and evaluation times.

Workers report each optimizer step and each milestone (after its evaluation). The time between two
consecutive steps of an arm is a step; the time from an arm's last step to its milestone report is an
evaluation. The ETA is the remaining steps and evaluations at their mean measured times, divided over
the workers that still have arms to run, and scaled by what that model misses so far (loading each
arm, saving it, checkpoints): the wall time elapsed over the time the measured work accounts for.
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
        if previous is not None and previous[0] == step - 1 and step - 1 not in self.milestone_steps:
            self.step_times.append(now - previous[1])  # a step after a milestone also paid its checkpoint
        self.last_step[arm] = (step, now)
        self.steps_seen += 1

    def on_milestone(self, arm: str, step: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if arm in self.last_step and self.last_step[arm][0] == step:
            self.eval_times.append(now - self.last_step[arm][1])
        self.position[arm] = step
        self.evals_seen += 1

    def on_done(self, arm: str) -> None:
        self.position[arm] = self.steps

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, or None until one step and one evaluation have been measured."""
        if not self.step_times or not self.eval_times:
            return None
        now = time.monotonic() if now is None else now
        step, evaluation = mean(self.step_times[-200:]), mean(self.eval_times[-50:])
        left_steps = sum(self.steps - done for done in self.position.values())
        left_evals = self.total - self.completed
        running = sum(done < self.steps for done in self.position.values())
        parallel = min(self.workers, len(self.position))
        accounted = (self.steps_seen * step + self.evals_seen * evaluation) / parallel
        overhead = max(1.0, (now - self.started) / accounted) if accounted > 0 else 1.0
        return (left_steps * step + left_evals * evaluation) / max(1, min(self.workers, running)) * overhead

    def describe(self) -> str:
        eta = self.eta_seconds()
        if eta is None:
            return "ETA after the first milestone"
        step, evaluation = mean(self.step_times[-200:]), mean(self.eval_times[-50:])
        return f"ETA {format_duration(eta)} (step {step:.2f} s, evaluation {evaluation:.1f} s)"


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
