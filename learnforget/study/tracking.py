"""Training curves of one arm: per-step loss, learning rate and gradient norm, kept in the study's store
(`steps` table) and sent to the experiment trackers the study names (`log_with`), through Accelerate's
tracker API, one tracker run per arm with the study's config as its hyperparameters.

Steps are written to the store once per milestone, in the same place as the milestone's metrics and
checkpoint: a resumed arm retrains the steps after its last checkpoint and rewrites exactly those rows.
"""

from __future__ import annotations

import json
from pathlib import Path

from learnforget.errors import UserError

TRACKING_DIR = "tracking"
# Where each tracker takes the arm's run name (the project is the study; TensorBoard gets one directory
# per arm instead, since its run name is the project name).
RUN_NAME_KWARGS = {"wandb": "name", "mlflow": "run_name", "trackio": "name"}
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def hyperparameters(study_json: dict, arm: dict) -> dict[str, str | int | float | bool]:
    """The study's config and the arm's settings, flattened to the scalar types every tracker accepts
    ('eval.spectra', 'arm.rank'); lists and None become JSON strings."""
    flat: dict[str, str | int | float | bool] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, bool | int | float | str):
            flat[prefix] = value
        else:
            flat[prefix] = json.dumps(value)

    walk("", {k: v for k, v in study_json.items() if k != "arms"})
    walk("arm", arm)
    return flat


def check_trackers(log_with: list[str]) -> None:
    """A one-line error naming the missing package, before any arm trains."""
    import importlib.util  # only this path needs it

    for name in log_with:
        package = TRACKER_PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise UserError(
                f"log_with: {name} needs the {package!r} package; pip install 'learnforget[trackers]' "
                f"(or {package}), or remove {name} from log_with"
            )


class StepLog:
    """Collects one arm's per-step rows; `flush` writes them to the store, trackers see them live."""

    def __init__(
        self, store, arm_name: str, log_with: list[str], study_dir: Path, hparams: dict, project: str
    ):
        self.store, self.arm, self.rows = store, arm_name, []
        self.accelerator = None
        if log_with:
            from accelerate import Accelerator  # only this path needs it

            self.accelerator = Accelerator(
                log_with=list(log_with), project_dir=str(Path(study_dir) / TRACKING_DIR / arm_name)
            )
            kwargs = {t: {RUN_NAME_KWARGS[t]: arm_name} for t in log_with if t in RUN_NAME_KWARGS}
            self.accelerator.init_trackers(project, config=hparams, init_kwargs=kwargs)

    def record(self, row: dict) -> None:
        """A row from `train_steps(on_record=...)`; its 0-based step becomes the count of steps done, as
        the metrics table counts them."""
        row = {**row, "step": row["step"] + 1}
        self.rows.append(row)
        if self.accelerator is not None:
            values = {
                f"train/{k}": row[k] for k in ("loss", "learning_rate", "grad_norm") if row[k] is not None
            }
            self.accelerator.log(values, step=row["step"])

    def milestone(self, step: int, metrics: dict[str, float]) -> None:
        """Write the steps so far (one transaction) and send the milestone's metrics to the trackers."""
        if self.rows:
            self.store.add_steps(self.arm, self.rows)
            self.rows = []
        if self.accelerator is not None:
            self.accelerator.log({f"eval/{k}": float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None
