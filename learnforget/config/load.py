"""Reading a study: YAML files (or a built-in study's name), suites of settings, `--set key=value` on top."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from learnforget.config.study import StudyConfig
from learnforget.errors import UserError

BUILTIN_CONFIG_DIR = Path(__file__).parent.parent / "configs"
DEFAULT_STUDY_PATH = BUILTIN_CONFIG_DIR / "default.yaml"


# ---------------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading 1e-3 as a number (YAML 1.2; YAML 1.1 wants 1.0e-3)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
# A study file is a few hundred values; aliases that repeat collections (a "billion laughs") would
# expand to far more when validated.
MAX_YAML_VALUES = 100_000


def _load_yaml(text: str, where: str) -> Any:
    data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    if _tree_size(data, {}) > MAX_YAML_VALUES:
        raise UserError(
            f"{where}: expands to more than {MAX_YAML_VALUES:,} values (aliases repeating collections?); "
            "write the study out"
        )
    return data


def _tree_size(value: Any, seen: dict[int, int]) -> int:
    """Values of `value` counted as a tree (an aliased collection once per use), without expanding it."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in seen:
        seen[id(value)] = 0  # a recursive alias counts as itself
        items = value.values() if isinstance(value, dict) else value
        seen[id(value)] = min(1 + sum(_tree_size(v, seen) for v in items), 10 * MAX_YAML_VALUES)
    return seen[id(value)]


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value, e.g. --set budget_tokens=100000")
    key, raw = text.split("=", 1)
    try:
        value = _load_yaml(raw, f"--set {text.split('=', 1)[0]}")
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as e:
        raise UserError(f"--set {key}: invalid value ({str(e).splitlines()[0]})") from None
    return key.strip().split("."), value


def apply_override(data: dict, text: str) -> None:
    """Set a dotted key (list items by index: arms.0.learning_rate=1e-3) in a raw config dict."""
    path, value = _parse_override(text)
    node: Any = data
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not an item of the list")
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise UserError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a section")
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"--set {text!r}: {last} is not an item of the list")
        node[int(last)] = value
    else:
        node[last] = value


def resolve_config_path(config: str | None) -> Path | None:
    """A path, or the name of a built-in study (e.g. 'grid-tiny'); None means the default study."""
    if config is None or config == "default":
        return DEFAULT_STUDY_PATH
    path = Path(config)
    if path.exists():
        return path
    builtin = BUILTIN_CONFIG_DIR / f"{config}.yaml"
    if builtin.exists():
        return builtin
    names = ", ".join(
        sorted(str(p.relative_to(BUILTIN_CONFIG_DIR).with_suffix("")) for p in BUILTIN_CONFIG_DIR.rglob("*.yaml")
               if p.parent.name != "accelerate")
    )  # fmt: skip
    raise UserError(f"{config}: no such config file, and not a built-in study ({names})")


_UNION_MEMBER = re.compile(r"^(int|float|str|bool|(list|literal|dict|tuple)\[.*\]|[A-Z]\w*)$")


def _validation_message(where: str, err: ValidationError) -> str:
    first = err.errors()[0]
    # pydantic names the member of a union it tried (learning_rate.float): the key is what users wrote.
    loc = ".".join(str(x) for x in first["loc"] if not _UNION_MEMBER.match(str(x))) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{where}: {loc}: unknown key"
    if first["type"] == "value_error":  # our own checks: the message says it all
        message = str(first["msg"]).removeprefix("Value error, ")
        return f"{where}: {message}" if loc == "(top level)" else f"{where}: {loc}: {message}"
    return f"{where}: {loc}: {first['msg']} (got {first.get('input')!r})"


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: not a regular file (give a study YAML file)")
    try:
        data = _load_yaml(path.read_bytes().decode("utf-8"), str(path))
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}); give a study YAML file"
        ) from None
    except RecursionError:
        raise UserError(f"{path}: YAML nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{path}: invalid value: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:  # empty, blank or `null`: the default study was not what was asked for
        raise UserError(f"{path}: empty study file; give the keys that differ from the defaults, "
                        "or run without a file for the default study")  # fmt: skip
    if not isinstance(data, dict):
        raise UserError(f"{path}: a study file must be a mapping of keys to values")
    return data


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _validate(data: dict, overrides: list[str], where: str) -> StudyConfig:
    if overrides:
        # Overrides apply on top of the full config, so list items that only exist as defaults
        # (arms.0...) can be addressed too.
        data = json.loads(StudyConfig.model_validate(data).model_dump_json()) if _valid(data) else data
        for text in overrides:
            apply_override(data, text)
        where += " with --set"
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise UserError(_validation_message(where, e)) from None


def load_studies(config: str | None = None, overrides: list[str] = ()) -> list[tuple[str, StudyConfig]]:
    """[(setting, study)]: one study with setting '' or, for a file with `settings:`, one per setting.

    In such a suite every key but `settings` is common to all settings, and each setting's keys are
    merged on top (e.g. `settings: {code-cpt: {domain: code}, math-ift: {domain: math, regime: ift}}`).
    Its studies are named '<name>-<setting>' and stored in sub-directories named after the setting.
    """
    path = resolve_config_path(config)
    data = _read_yaml(path)
    settings = data.pop("settings", None)
    if settings is None:
        label = "default study" if path == DEFAULT_STUDY_PATH else str(path)
        return [("", _validate(data, list(overrides), label))]
    if (
        not isinstance(settings, dict)
        or not settings
        or not all(isinstance(v, dict) for v in settings.values())
    ):
        raise UserError(f"{path}: settings: expected a mapping of setting names to study keys")
    studies = []
    for key, extra in settings.items():
        merged = _deep_merge(data, extra)
        merged["name"] = f"{data.get('name', path.stem)}-{key}"
        studies.append((str(key), _validate(merged, list(overrides), f"{path} (settings.{key})")))
    return studies


def load_study(config: str | None = None, overrides: list[str] = ()) -> StudyConfig:
    """Read one study (file path, built-in name or None for the default), apply overrides, validate."""
    studies = load_studies(config, overrides)
    if len(studies) != 1:
        raise UserError(f"{config}: holds {len(studies)} studies (settings: {', '.join(k for k, _ in studies)}); "
                        "this command takes one")  # fmt: skip
    return studies[0][1]


def _valid(data: dict) -> bool:
    try:
        StudyConfig.model_validate(data)
        return True
    except ValidationError:
        return False
