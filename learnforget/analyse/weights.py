"""Streaming access to checkpoint weights for the ΔW spectrum analysis.

- `resolve_model_dir`: a local directory, or a hub id resolved to a local snapshot (weights + configs only).
- `CheckpointReader`: one matrix at a time from `*.safetensors` (single file or sharded with
  `model.safetensors.index.json`) or, as a fallback, `pytorch_model*.bin` (memory-mapped); nothing is loaded
  until asked for, so comparing two 7B checkpoints needs memory for a few matrices, not two models.
- `LoraAdapter`: a PEFT LoRA adapter (a directory or an in-memory adapter state dict) seen as low-rank
  updates ΔW = scale·left·right keyed by the base model's parameter names, plus any full replacements
  (`modules_to_save`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.utils.other import get_pattern_key
from safetensors import safe_open

from learnforget.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_LORA_LINEAR = re.compile(r"^(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")
_LORA_EMBEDDING = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<which>[AB])(?:\.[^.]+)?$")
_MODULES_TO_SAVE = re.compile(r"^(?P<module>.+)\.modules_to_save\.[^.]+\.weight$")


def resolve_model_dir(ref: str | Path) -> Path:
    """Return the local directory for `ref`: an existing directory, or a hub id downloaded to the HF cache."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"'{ref}' is a file; pass the model directory that holds it (config.json + weights)")
    if str(ref).startswith((".", "/", "~")):
        raise UserError(f"model directory '{ref}' does not exist; check the path")
    from huggingface_hub import snapshot_download  # heavy or optional: only this path needs it

    try:
        return Path(snapshot_download(str(ref), allow_patterns=["*.safetensors", "*.json"]))
    except Exception as err:  # network, auth, bad id: all mean the same thing to the user
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"'{ref}' is neither a local directory nor a downloadable hub id ({type(err).__name__}: {reason}); "
            "pass a local model directory, or check the id, your network and HF_TOKEN"
        ) from None


def is_adapter_dir(path: Path) -> bool:
    """True if `path` holds a PEFT adapter (adapter_config.json) rather than a full model."""
    return (path / ADAPTER_CONFIG).is_file()


def _open_bin(path: Path) -> dict[str, torch.Tensor]:
    """Load a pytorch_model*.bin memory-mapped, so tensors are only read when touched."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError:
        # Legacy (pre-zipfile) serialization cannot be memory-mapped: read it whole.
        return torch.load(path, map_location="cpu", weights_only=True)


class CheckpointReader:
    """Read a model directory's tensors one at a time; use as a context manager.

    `names()` lists parameter names shard by shard, so iterating in that order reads each shard once.
    """

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        self._file_of: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        for file in self._weight_files():
            for name in self._handle(file).keys():
                self._file_of.setdefault(name, file)
        if not self._file_of:
            raise UserError(f"no tensors found in the weight files of '{self.model_dir}'")

    def _weight_files(self) -> list[Path]:
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = self.model_dir / index_name
            if index.is_file():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as err:
                    raise UserError(f"{index}: not a valid shard index ({err}); re-save the model") from None
                files = [self.model_dir / f for f in dict.fromkeys(weight_map.values())]
                missing = [f.name for f in files if not f.is_file()]
                if missing:
                    raise UserError(
                        f"{index} lists shard '{missing[0]}', which is missing from {self.model_dir}"
                    )
                return files
        for pattern in ("*.safetensors", "pytorch_model*.bin"):
            files = sorted(f for f in self.model_dir.glob(pattern) if not f.name.startswith("adapter_"))
            if files:
                return files
        raise UserError(
            f"no weights in '{self.model_dir}': expected model.safetensors, a sharded "
            "model.safetensors.index.json, or pytorch_model.bin"
        )

    def _handle(self, file: Path):
        if file not in self._handles:
            if file.suffix == ".safetensors":
                try:
                    self._handles[file] = safe_open(str(file), framework="pt")
                except Exception as err:
                    raise UserError(
                        f"cannot read '{file}' as safetensors ({err}); is the file complete?"
                    ) from None
            else:
                self._handles[file] = _open_bin(file)
        return self._handles[file]

    def names(self) -> list[str]:
        """All tensor names, grouped by shard."""
        return list(self._file_of)

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple[int, ...]:
        """The tensor's shape, without reading its data."""
        handle = self._handle(self._file_of[name])
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (a CPU copy in its stored dtype)."""
        handle = self._handle(self._file_of[name])
        if isinstance(handle, dict):
            return handle[name].clone()
        return handle.get_tensor(name)

    def close(self) -> None:
        """Drop the open shard handles (and their memory maps)."""
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class LowRankDelta:
    """ΔW = scale · left @ right with left m×r and right r×n (for LoRA, left = B and right = A)."""

    left: torch.Tensor
    right: torch.Tensor
    scale: float

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[1])

    def dense(self, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
        """The m×n matrix; only for tests and for one-matrix-at-a-time uses."""
        return self.scale * (self.left.to(device, dtype) @ self.right.to(device, dtype))


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter: base parameter name -> low-rank update or full replacement."""

    config: dict
    get: Callable[[str], torch.Tensor]
    source: str = "adapter"
    lora_keys: dict[str, dict[str, str]] = field(default_factory=dict)  # base name -> {"A"|"B"|"kind": key}
    replacement_keys: dict[str, str] = field(default_factory=dict)  # base name -> key of the full tensor

    @classmethod
    def from_dir(cls, adapter_dir: Path) -> LoraAdapter:
        """Read adapter_config.json and index adapter_model.safetensors (or adapter_model.bin)."""
        config_path = adapter_dir / ADAPTER_CONFIG
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{config_path}: invalid JSON ({err})") from None
        weights = adapter_dir / "adapter_model.safetensors"
        if weights.is_file():
            handle = safe_open(str(weights), framework="pt")
            keys, get = list(handle.keys()), handle.get_tensor
        elif (adapter_dir / "adapter_model.bin").is_file():
            tensors = _open_bin(adapter_dir / "adapter_model.bin")
            keys, get = list(tensors), tensors.__getitem__
        else:
            raise UserError(f"adapter '{adapter_dir}' has {ADAPTER_CONFIG} but no adapter_model.safetensors")
        return cls.from_keys(config, keys, get, source=str(config_path))

    @classmethod
    def from_state_dict(cls, adapter_sd: Mapping[str, torch.Tensor], config: Mapping) -> LoraAdapter:
        """Wrap an in-memory adapter state dict (as `peft.get_peft_model_state_dict` returns)."""
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        return cls.from_keys(config, list(adapter_sd), adapter_sd.__getitem__, source="adapter config")

    @classmethod
    def from_keys(cls, config: dict, keys: list[str], get: Callable, source: str) -> LoraAdapter:
        """Sort adapter tensor names into LoRA factors and full replacements, keyed by base parameter name."""
        peft_type = config.get("peft_type", "LORA")
        peft_type = str(getattr(peft_type, "value", peft_type)).upper()  # LoraConfig.to_dict() keeps the enum
        if peft_type != "LORA":
            raise UserError(f"{source}: peft_type is {peft_type}; only LoRA adapters can be analysed")
        if config.get("use_dora"):
            raise UserError(f"{source}: use_dora is true; DoRA updates are not low-rank B·A, merge it first")
        adapter = cls(config=config, get=get, source=source)
        for key in keys:
            name = key.removeprefix(_PEFT_PREFIX)
            if "lora_magnitude_vector" in name:
                raise UserError(f"{source}: adapter holds DoRA magnitudes ('{key}'); merge it first")
            if match := _LORA_LINEAR.match(name) or _LORA_EMBEDDING.match(name):
                kind = "embedding" if "lora_embedding_" in name else "linear"
                entry = adapter.lora_keys.setdefault(match["module"] + ".weight", {"kind": kind})
                entry[match["which"]] = key
            elif match := _MODULES_TO_SAVE.match(name):
                adapter.replacement_keys[match["module"] + ".weight"] = key
            elif name.endswith(".weight") and ".base_layer." not in name and ".original_module." not in name:
                adapter.replacement_keys[name] = key  # modules_to_save, as saved by save_pretrained
        for name, entry in adapter.lora_keys.items():
            if "A" not in entry or "B" not in entry:
                raise UserError(f"{source}: LoRA module '{name}' has only one of lora_A / lora_B")
        return adapter

    def names(self) -> list[str]:
        """Base parameter names this adapter changes."""
        return list(self.lora_keys) + [n for n in self.replacement_keys if n not in self.lora_keys]

    def scale(self, name: str, rank: int) -> float:
        """lora_alpha / r (or / sqrt(r) with use_rslora), honouring alpha_pattern, for one module."""
        module = name.removesuffix(".weight")
        alpha = self.config.get("lora_alpha", 8)
        pattern = self.config.get("alpha_pattern") or {}
        key = get_pattern_key(list(pattern), module)
        alpha = pattern.get(key, alpha)
        return alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank

    def delta(self, name: str) -> LowRankDelta | torch.Tensor | None:
        """The update for base parameter `name`: a LowRankDelta, a full replacement tensor, or None."""
        if name in self.lora_keys:
            entry = self.lora_keys[name]
            a, b = self.get(entry["A"]), self.get(entry["B"])
            rank = a.shape[0]
            if entry["kind"] == "embedding" or self.config.get("fan_in_fan_out"):
                # peft stores these transposed: ΔW = scale·(B·A)ᵀ = scale·Aᵀ·Bᵀ.
                return LowRankDelta(left=a.T, right=b.T, scale=self.scale(name, rank))
            return LowRankDelta(left=b, right=a, scale=self.scale(name, rank))
        if name in self.replacement_keys:
            return self.get(self.replacement_keys[name])
        return None

    def summary(self) -> dict:
        """The adapter settings worth reporting next to the spectra."""
        keys = ("r", "lora_alpha", "use_rslora", "target_modules", "base_model_name_or_path")
        out = {k: self.config.get(k) for k in keys}
        if isinstance(out["target_modules"], set):
            out["target_modules"] = sorted(out["target_modules"])
        return out
