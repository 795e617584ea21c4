"""Export a study's (or a suite's) numbers for notebooks: three tables in long ("tidy") format.

- `metrics`: one row per arm × milestone × metric, with the arm's settings (`Store.metric_rows()`).
- `arms`: one row per arm: settings, status and cost.
- `steps`: one row per arm × optimizer step × quantity (loss, learning_rate, grad_norm), with tokens seen.

A suite's export stacks its settings' tables with a leading `setting` column. Formats: csv and jsonl
(standard library), parquet (pyarrow).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from learnforget.config.study import StudyConfig
from learnforget.errors import UserError
from learnforget.files import writing
from learnforget.study.store import open_store

FORMATS = ("csv", "parquet", "jsonl")
STEP_QUANTITIES = ("loss", "learning_rate", "grad_norm")


def study_tables(study_dir: Path) -> dict[str, list[dict]]:
    """{'metrics', 'arms', 'steps'} rows of one study directory."""
    store = open_store(study_dir)
    config = store.info("config")
    tokens_per_step = StudyConfig.model_validate(config).tokens_per_step if config else None
    steps = [
        {"arm": r["arm"], "step": r["step"], "tokens": tokens_per_step and r["step"] * tokens_per_step,
         "metric": q, "value": r[q]}
        for r in store.steps()
        for q in STEP_QUANTITIES
        if r[q] is not None
    ]  # fmt: skip
    return {"metrics": store.metric_rows(every_arm=True), "arms": store.arms(), "steps": steps}


def suite_tables(suite_dir: Path, settings: list[str]) -> dict[str, list[dict]]:
    tables: dict[str, list[dict]] = {"metrics": [], "arms": [], "steps": []}
    for key in settings:
        for name, rows in study_tables(suite_dir / key).items():
            tables[name] += [{"setting": key, **row} for row in rows]
    return tables


def write_table(rows: list[dict], path: Path, fmt: str) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))  # every row's keys, first-seen order
    if fmt == "csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        with path.open("w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    else:
        try:
            import pyarrow as pa  # heavy or optional: only this path needs it
            import pyarrow.parquet as pq  # heavy or optional: only this path needs it
        except ImportError:
            raise UserError(
                "--format parquet needs pyarrow: pip install pyarrow (or use csv / jsonl)"
            ) from None
        pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in columns}), path)
    return path


def export(directory: Path, fmt: str, out: Path | None, settings: list[str]) -> list[Path]:
    """Write metrics.<fmt>, arms.<fmt>, steps.<fmt> into `out` (default DIR/export); return their paths."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    tables = suite_tables(directory, settings) if settings else study_tables(directory)
    out = out or directory / "export"
    with writing(out, f"the exported tables ({fmt})"):
        out.mkdir(parents=True, exist_ok=True)
        return [write_table(rows, out / f"{name}.{fmt}", fmt) for name, rows in tables.items()]
