"""Streaming access to checkpoint weights for the ΔW spectrum analysis.

- `resolve_model_dir`: a local directory, or a hub id resolved to a local snapshot (weights + configs only).
- `CheckpointReader`: one matrix at a time from `*.safetensors` (single file or sharded with
  `model.safetensors.index.json`) or, as a fallback, `pytorch_model*.bin` (memory-mapped); nothing is loaded
  until asked for, so comparing two 7B checkpoints needs memory for a few matrices, not two models.
(An adapter directory's ΔW is read from peft's own modules once peft has loaded it: `arms/delta.py`.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from learnforget.errors import UserError

ADAPTER_CONFIG = "adapter_config.json"


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
