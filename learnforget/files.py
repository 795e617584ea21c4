"""Files a study writes and trusts: content hashes, atomic saves, disk errors as one line, the cache.

Every file that holds results is written to a temporary name and renamed into place (a kill leaves the old
file or the new, never half), and its sha256 is on record before the rename.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from learnforget.errors import UserError, storage_error


def cache_dir() -> Path:
    """Where built-in bases are cached."""
    return Path(os.environ.get("LEARNFORGET_CACHE", Path.home() / ".cache" / "learnforget"))


def file_sha256(path: Path) -> str:
    """A file's content hash (about 0.1 s per 100 MB): recorded checksums, GGUF cache keys."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@contextmanager
def writing(directory: Path, what: str, tmp: Path | None = None):
    """Turn a full or unwritable disk into one line naming `directory` and `what` (a StorageError), and
    remove `tmp` (a half-written file) whatever went wrong."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, Exception) and not isinstance(e, UserError):
            problem = storage_error(e, directory, what)
            if problem is not None:
                raise problem from None
        raise


def atomic_save(obj, path: Path, record=None) -> str:
    """torch.save to a temp file, then rename: a kill leaves the old file or the new, never half.

    Returns the file's sha256; `record(sha256, size)` is called before the rename, so a checksum is
    on record for every file that can appear under `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path.parent, path.name, tmp):  # a full or read-only disk: one line, no .tmp left
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        digest = file_sha256(tmp)
        if record is not None:
            record(digest, tmp.stat().st_size)
        os.replace(tmp, path)
    return digest
