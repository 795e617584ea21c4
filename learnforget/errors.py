"""The one exception type for user mistakes (the CLI prints it as one line and exits non-zero), disk errors
as user errors, and one-line warnings."""

import errno
import os
import sys
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix (bad config key, missing file, malformed data line).

    The message must say what is wrong, where (file, line, field) and, when obvious, how to fix it.
    """


STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class StorageError(UserError):
    """A study's files could not be written: the disk is full, or the directory read-only or not ours.
    It stops the whole run (every arm writes to the same place), not just one arm."""


def storage_error(error: BaseException, directory, what: str) -> StorageError | None:
    """A one-line StorageError naming `directory` and `what` was being written, when `error` comes from a
    full or unwritable filesystem (OSError, sqlite3's OperationalError, torch.save's RuntimeError); else None."""
    problem = _storage_problem(error, directory)
    if problem is None:
        return None
    return StorageError(
        f"{directory}: cannot write {what}: {problem}; free space or make it writable, then rerun the same "
        "command (what was finished is kept)"
    )


def _storage_problem(error: BaseException, directory) -> str | None:
    code = getattr(error, "errno", None)
    text = str(error).lower()
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text or "no space left" in text:
        return "no space left on the device"
    if code == errno.EROFS:
        return "the filesystem is read-only"
    if "readonly" in text or "read-only" in text:  # sqlite3: the directory's filesystem, or the file itself
        return _directory_problem(directory) or "the file is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(error, OSError | RuntimeError) or "unable to open database" in text or "i/o error" in text:
        return _directory_problem(directory)  # sqlite3 and torch say less: look at the directory
    return None


def _directory_problem(directory) -> str | None:
    """Why nothing can be written in `directory` (or its nearest existing parent), or None."""
    path = Path(directory).absolute()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        stats = os.statvfs(existing)
    except (OSError, TypeError):
        return None
    if stats.f_flag & os.ST_RDONLY:
        return "the filesystem is read-only"
    if not os.access(existing, os.W_OK):
        return "permission denied"
    if stats.f_bavail * stats.f_frsize < 1 << 20:
        return "no space left on the device"
    return None


def warn(message: str) -> None:
    """One warning line on stderr (also from worker processes)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
