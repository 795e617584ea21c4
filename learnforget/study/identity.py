"""Which arms a run may train into a directory: the same study (config and arms' settings), arms that fit
the base, and the shard of the grid this process takes."""

from __future__ import annotations

import json

from learnforget.config.arms import ARM_SETTINGS, Arm, expand_arms
from learnforget.config.methods import Base, Lora, method_of
from learnforget.config.study import StudyConfig
from learnforget.errors import UserError
from learnforget.study.store import Store


def check_same_study(store: Store, study: StudyConfig, arms: list[Arm] | None = None) -> None:
    """Refuse to mix two different studies in one directory: resuming needs the same config, and results
    belong to the arm (settings) that produced them. Adding arms is allowed: finished ones stay valid."""
    saved = store.info("config")
    current = json.loads(study.model_dump_json())
    arms = expand_arms(study) if arms is None else arms
    if saved is not None:
        try:  # fill fields added since the study was stored with their defaults
            saved_study = StudyConfig.model_validate(saved)
            saved = json.loads(saved_study.model_dump_json())
            saved_ids = {a.id for a in expand_arms(saved_study)}
        except Exception:  # noqa: BLE001 (a stored config that no longer validates differs anyway)
            saved_study, saved_ids = None, None
        # Workers change how fast, not what (threads do change reduction order: they must match);
        # trackers change who watches.
        ignore = {"workers", "log_with"} | (
            {"arms"} if saved_ids is not None and saved_ids <= {a.id for a in arms} else set()
        )
        old = {k: v for k, v in _flatten(saved).items() if k.split(".")[0] not in ignore}
        new = {k: v for k, v in _flatten(current).items() if k.split(".")[0] not in ignore}
        diff = [f"{k}: {_show(old.get(k))} → {_show(new.get(k))}" for k in sorted(set(old) | set(new), key=_key_order)
                if old.get(k, _ABSENT) != new.get(k, _ABSENT)]  # fmt: skip
        if diff:
            shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
            raise UserError(
                f"{store.study_dir}: holds a study with a different config ({shown}); rerun with its config, "
                "or use another --out"
            )
    for arm in arms:  # names of older versions could stand for other settings: the arm's results must match
        stored = store.arm(arm.name)
        if stored is None or isinstance(method_of(stored), Base):
            continue
        if stored.get("arm_id") not in (None, arm.id) or any(
            stored.get(k) is not None and stored.get(k) != v
            for k, v in arm.model_dump(include=set(ARM_SETTINGS)).items()
        ):
            raise UserError(
                f"{store.study_dir}: arm {arm.name} is stored with other settings than this config gives it; "
                "use another --out"
            )
    store.set_info("config", current)  # the grid as last run


_ABSENT = object()


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix.rstrip("."): value}


def _show(value) -> str:
    return "(absent)" if value is None else json.dumps(value)


def _key_order(key: str):
    return [int(p) if p.isdigit() else p for p in key.split(".")]


def check_arms_fit(arms: list[Arm], model_config: dict | None) -> None:
    """A LoRA rank above the width of the matrices it adapts is an error, named by the arm."""
    widths = [(model_config or {}).get(k) for k in ("hidden_size", "intermediate_size")]
    widths = [w for w in widths if isinstance(w, int) and w > 0]
    if not widths:
        return
    for arm in arms:
        if isinstance(arm.kind, Lora) and arm.rank > min(widths):
            raise UserError(
                f"arm {arm.name}: LoRA rank {arm.rank} exceeds the width {min(widths)} of the base model's "
                "matrices; lower the rank"
            )


def shard_arms(arms: list[Arm], shard: tuple[int, int] | None) -> list[Arm]:
    """Arms of shard I of N (round robin over the expanded grid), for Slurm arrays and the like."""
    if shard is None:
        return arms
    index, count = shard
    return [a for i, a in enumerate(arms) if i % count == index]


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """`--shard I/N` as (I, N); None for the whole grid."""
    if shard is None:
        return None
    try:
        index, count = (int(x) for x in shard.split("/"))
    except ValueError:
        raise UserError(f"--shard {shard!r}: expected I/N, e.g. --shard 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UserError(f"--shard {shard!r}: expected I/N with N ≥ 1 and I in 0..N-1, e.g. --shard 0/4")
    return index, count
