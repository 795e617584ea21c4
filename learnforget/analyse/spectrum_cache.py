"""On-disk caches of the ΔW spectrum analysis: what depends only on a base matrix, or only on a shape.

- `base_factors`: σ(W_base) and W_base's left singular vectors (the intruder count compares W_tuned's
  top-k vectors with all of them), one safetensors file per matrix keyed by the SHA-256 of its bytes,
  dtype and shape. The first milestone of the first arm computes them; every later milestone, arm
  (each in its own worker process) and `learnforget spectrum` run on the same base reads them. A base
  whose weights differ (another model, a dequantized QLoRA base, another precision) has other keys.
- `save_atomic`: write a temporary file, then hard-link it into place. Workers racing on one matrix never
  see a partial file, and the first writer wins (both computed the same numbers).
- `thin_svd`: (σ, U) from LAPACK on the tall orientation, which is 2× faster for wide matrices.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FACTORS_VERSION = 1  # part of every key: bump when what a factor file holds changes


@dataclass
class BaseFactors:
    """W_base's thin SVD without V: all singular values (descending, float64) and the left vectors."""

    singular_values: torch.Tensor  # min(m, n)
    left_vectors: torch.Tensor  # m × min(m, n), in the matrix's work dtype


# id(tensor) -> (weak reference, in-place version counter, work dtype, digest): a study's base weights stay
# in memory for every milestone of an arm, so each is hashed once (a 7B base takes ~40 s to hash).
_DIGESTS: dict[int, tuple] = {}


def matrix_digest(matrix: torch.Tensor, work_dtype: torch.dtype) -> str:
    """SHA-256 of a matrix's bytes, stored dtype, shape and the dtype its factors are computed in."""
    known = _DIGESTS.get(id(matrix))
    if known and known[0]() is matrix and known[1:3] == (matrix._version, work_dtype):
        return known[3]
    data = matrix.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    digest = hashlib.sha256(f"v{FACTORS_VERSION} {matrix.dtype} {work_dtype} {tuple(matrix.shape)}".encode())
    digest.update(memoryview(data))
    if len(_DIGESTS) > 100_000:  # entries of tensors long gone
        _DIGESTS.clear()
    _DIGESTS[id(matrix)] = (weakref.ref(matrix), matrix._version, work_dtype, digest.hexdigest()[:40])
    return _DIGESTS[id(matrix)][3]


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(σ, U) of `matrix` = U diag(σ) Vᵀ, thin; a wide matrix is decomposed as its transpose."""
    if matrix.shape[0] < matrix.shape[1]:
        _, s, vh = torch.linalg.svd(matrix.T.contiguous(), full_matrices=False)  # Mᵀ = U' S V'ᵀ: U = V'
        return s, vh.T
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    return s, u


def save_atomic(write: Callable[[Path], None], path: Path) -> None:
    """Call write(temporary path) and move the result to `path` unless another process got there first.
    For caches: where nothing can be written (a full disk, a read-only directory), nothing is kept."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        try:
            os.link(temporary, path)  # atomic, and fails where the file exists: the first writer wins
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: replace (the same numbers either way)
            os.replace(temporary, path)
    except OSError:
        pass  # the cache stays as it was: the next run computes the numbers again
    finally:
        if temporary.exists():
            temporary.unlink()


def factorise(w_base: torch.Tensor, dtype: torch.dtype, device: torch.device) -> BaseFactors:
    """W_base's factors, computed (the one-time cost per base matrix)."""
    s, u = thin_svd(w_base.to(device, dtype))
    return BaseFactors(s.double(), u.contiguous())


def base_factors(
    w_base: torch.Tensor, dtype: torch.dtype, device: torch.device, cache_dir: str | Path | None
) -> BaseFactors:
    """W_base's factors in `dtype` on `device`: read from `cache_dir` when there, else computed (and saved)."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "base_factors" / f"{matrix_digest(w_base, dtype)}.safetensors"
        if path.is_file():
            try:
                saved = load_file(str(path), device=str(device))
                return BaseFactors(saved["singular_values"], saved["left_vectors"])
            except Exception:  # damaged since it was written: compute it again
                path.unlink(missing_ok=True)
    factors = factorise(w_base, dtype, device)
    if path is not None:
        tensors = {
            "singular_values": factors.singular_values.cpu(),
            "left_vectors": factors.left_vectors.cpu(),
        }
        save_atomic(lambda p: save_file(tensors, str(p)), path)
    return factors
