"""The kernel layers of a sandbox: namespaces, a minimal read-only root, no privileges, rlimits, seccomp.

The supervisor enters the namespaces (`enter_namespaces`), the sandbox's PID 1 builds its root
(`build_root`), and PID 1 and the candidate each confine themselves (`confine_process`) before any
untrusted byte exists in the sandbox; `learnforget.evaluate.sandbox` describes the threat model.
Standard library only: a part of the fork server, which `sandbox_server.py` imports by path under
`python -I -S`.
"""

from __future__ import annotations

import ctypes
import math
import os
import resource
import signal

ALL_LAYERS = (
    "pidns mountns netns ipcns utsns minimal-root readonly-root no-caps unprivileged-uid no-new-privs"
    " seccomp rlimits"
).split()
"""Every kernel layer, in the order they are reported when they hold (as root all of them do)."""

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = {"pidns": _CLONE_NEWPID, "mountns": _CLONE_NEWNS, "netns": _CLONE_NEWNET}
_NAMESPACES |= {"ipcns": _CLONE_NEWIPC, "utsns": _CLONE_NEWUTS}
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND = 1, 2, 4, 32, 4096
_MS_REC, _MS_PRIVATE, _MNT_DETACH = 16384, 1 << 18, 2


def enter_namespaces(libc: ctypes.CDLL, config: dict) -> list[str]:
    """New PID, mount, network, IPC and UTS namespaces; as root directly, else in a user namespace."""
    wanted = sum(_NAMESPACES.values())
    if libc.unshare(wanted) == 0:
        return list(_NAMESPACES)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(wanted | _CLONE_NEWUSER) == 0:
        try:  # root inside maps to us outside; the sandbox then drops that root's capabilities
            for path, text in (("uid_map", f"0 {uid} 1"), ("setgroups", "deny"), ("gid_map", f"0 {gid} 1")):
                with open(f"/proc/self/{path}", "w") as file:
                    file.write(text)
        except OSError:
            pass
        return list(_NAMESPACES) + ["userns"]
    held = []
    for name, flag in _NAMESPACES.items():
        if libc.unshare(flag) == 0:
            held.append(name)
    return held


def build_root(libc: ctypes.CDLL, config: dict) -> list[str]:
    """Pivot into a tmpfs root holding read-only binds of the interpreter's files and a private /tmp."""

    def mount(source, target, fstype, flags, data=None) -> None:
        encode = lambda text: None if text is None else os.fsencode(text)  # noqa: E731
        if libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
            raise OSError(ctypes.get_errno(), f"mount {target}: {os.strerror(ctypes.get_errno())}")

    mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing below propagates back to the host
    root = "/tmp"  # a fresh tmpfs on top of it, seen only in this mount namespace
    mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    for path in config["read_only"]:
        inside = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            os.symlink(os.readlink(path), inside)
            continue
        if os.path.isdir(path):
            os.makedirs(inside, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(inside), exist_ok=True)
            open(inside, "w").close()
        mount(path, inside, None, _MS_BIND)
        mount(None, inside, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.makedirs(root + "/dev")
    for device in ("null", "zero", "random", "urandom"):
        open(f"{root}/dev/{device}", "w").close()
        mount(f"/dev/{device}", f"{root}/dev/{device}", None, _MS_BIND)
        mount(None, f"{root}/dev/{device}", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID)
    os.makedirs(root + "/tmp")
    size = f"size={config['file_size_mb']}m,mode=1777"
    mount("tmpfs", root + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, size)
    os.chdir(root)
    if libc.syscall(_SYSCALLS[os.uname().machine]["pivot_root"], b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    if libc.umount2(b".", _MNT_DETACH) != 0:  # the old root, stacked under the new one
        raise OSError(ctypes.get_errno(), "umount old root")
    os.chdir("/")
    held = ["minimal-root"]
    try:
        mount(None, "/", None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        held.append("readonly-root")
    except OSError:
        pass
    return held


def confine_process(
    libc: ctypes.CDLL, config: dict, uid: int, workdir: str | None, limit_processes: bool
) -> list[str]:
    """Drop every privilege, set rlimits, install seccomp; returns the layers verified to hold."""
    held = []
    if workdir is not None:
        os.chdir(workdir)
    pr_capbset_read, pr_capbset_drop, pr_cap_ambient, clear_all = 23, 24, 47, 4
    libc.prctl(pr_cap_ambient, clear_all, 0, 0, 0)
    cap = 0
    while libc.prctl(pr_capbset_read, cap, 0, 0, 0) >= 0:
        libc.prctl(pr_capbset_drop, cap, 0, 0, 0)
        cap += 1
    try:
        os.setgroups([])
    except OSError:
        pass
    try:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        held.append("unprivileged-uid")
    except OSError:  # e.g. a user namespace that maps one uid: keep it, but without capabilities
        pass
    header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    libc.capset(header, data)
    libc.capget(header, data)
    if not any(data) and all(libc.prctl(pr_capbset_read, c, 0, 0, 0) == 0 for c in range(cap)):
        held.append("no-caps")
    cpu_s = math.ceil(config["timeout_s"] + config["startup_grace_s"])
    limits = {
        resource.RLIMIT_CPU: (cpu_s, cpu_s + 1),  # SIGXCPU at the soft limit, SIGKILL one second later
        resource.RLIMIT_AS: (config["memory_mb"] << 20,) * 2,
        resource.RLIMIT_FSIZE: (config["file_size_mb"] << 20,) * 2,
        resource.RLIMIT_CORE: (0, 0),
        # Socket and pipe buffers sit outside RLIMIT_AS: each open or in-flight descriptor may hold one.
        resource.RLIMIT_NOFILE: (config["open_files"],) * 2,
        resource.RLIMIT_MEMLOCK: (0, 0),
        resource.RLIMIT_MSGQUEUE: (0, 0),
    }
    if limit_processes:
        limits[resource.RLIMIT_NPROC] = (config["max_processes"],) * 2
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an oversized write raises OSError instead of killing
    for kind, (soft, hard) in limits.items():
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))
    held.append("rlimits")
    pr_set_no_new_privs, pr_get_no_new_privs = 38, 39
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) == 0 and libc.prctl(pr_get_no_new_privs, 0, 0, 0, 0) == 1:
        held.append("no-new-privs")
    if _install_seccomp(libc):
        held.append("seccomp")
    return held


# Syscall numbers per architecture: the deny-list, the calls checked by argument, and clone / clone3.
_SYSCALLS = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        "pivot_root": 155,
        "clone": 56,
        "clone3": 435,
        "socket": 41,
        "socketpair": 53,
        "fcntl": 72,
        "denied": (
            57, 58, 59, 322,  # fork vfork execve execveat
            165, 166, 155, 161, 308, 272,  # mount umount2 pivot_root chroot setns unshare
            101, 310, 311, 321, 298, 323,  # ptrace process_vm_readv/writev bpf perf_event_open userfaultfd
            248, 249, 250, 246, 320, 175, 313, 176,  # add_key request_key keyctl kexec* *_module
            303, 304, 428, 429, 430, 431, 432, 433, 442,  # *_handle_at, new mount API, mount_setattr
            163, 167, 168, 169, 172, 173,  # acct swapon swapoff reboot iopl ioperm
            425, 426, 427, 206, 207, 208, 209, 210, 333,  # io_uring_*, io_* (AIO)
            319, 447, 29, 30, 31, 67, 64, 65, 66, 220, 68, 69, 70, 71,  # memfd_*, SysV shm, sem, msg
            240, 241, 242, 243, 244, 245, 54,  # mq_* (POSIX message queues), setsockopt
            300, 301, 312, 440, 448, 438, 256, 279,  # fanotify_* kcmp process_madvise/mrelease pidfd_getfd *_pages
            154, 135, 103, 179, 443, 153, 134, 136, 139,  # modify_ldt personality syslog quotactl* vhangup uselib ...
        ),
    },
    "aarch64": {  # no fork/vfork syscalls on this architecture
        "audit_arch": 0xC00000B7,
        "pivot_root": 41,
        "clone": 220,
        "clone3": 435,
        "socket": 198,
        "socketpair": 199,
        "fcntl": 25,
        "denied": (
            221, 281, 40, 39, 41, 51, 268, 97, 117, 270, 271, 280, 241, 282,
            217, 218, 219, 104, 294, 105, 273, 106, 264, 265, 428, 429, 430, 431, 432, 433, 442,
            89, 224, 225, 142,
            425, 426, 427, 0, 1, 2, 3, 4, 292,
            279, 447, 194, 196, 195, 197, 190, 193, 191, 192, 186, 189, 188, 187,
            180, 181, 182, 183, 184, 185, 208,
            262, 263, 272, 440, 448, 438, 238, 239,
            92, 116, 60, 443, 58,
        ),
    },
}  # fmt: skip
_AF_UNIX, _F_SETPIPE_SZ = 1, 1031
"""The only socket family allowed (the network namespace is empty anyway); the pipe resize that is refused."""


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp(libc: ctypes.CDLL) -> bool:
    """Deny the syscalls in _SYSCALLS (EPERM), sockets other than AF_UNIX and pipe resizes; clone only
    for threads without new namespaces."""
    abi = _SYSCALLS.get(os.uname().machine)
    if abi is None:
        return False
    load, jump_eq, jump_ge, jump_set, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF opcodes
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38  # SECCOMP_RET_ALLOW / ERRNO(...)
    clone_thread = 0x00010000
    new_namespaces = sum(_NAMESPACES.values()) | _CLONE_NEWUSER | 0x02000000  # ... and CLONE_NEWCGROUP
    program = [(load, 0, 0, 4), (jump_eq, 1, 0, abi["audit_arch"]), (ret, 0, 0, eperm), (load, 0, 0, 0)]
    program += [(jump_ge, 0, 1, 0x40000000), (ret, 0, 0, eperm)]  # x86 x32 syscalls share the audit arch
    for number in abi["denied"]:
        program += [(jump_eq, 0, 1, number), (ret, 0, 0, eperm)]
    for name, argument, value, verdict_if_equal in (
        ("socket", 0, _AF_UNIX, allow),  # the family: AF_UNIX only
        ("socketpair", 0, _AF_UNIX, allow),
        ("fcntl", 1, _F_SETPIPE_SZ, eperm),  # larger pipe buffers: memory outside RLIMIT_AS
    ):
        other = eperm if verdict_if_equal == allow else allow
        program += [(jump_eq, 0, 4, abi[name]), (load, 0, 0, 16 + 8 * argument)]  # the argument's low half
        program += [(jump_eq, 0, 1, value), (ret, 0, 0, verdict_if_equal), (ret, 0, 0, other)]
    program += [(jump_eq, 0, 1, abi["clone3"]), (ret, 0, 0, enosys)]  # libc then falls back to clone
    program += [(jump_eq, 0, 5, abi["clone"]), (load, 0, 0, 16), (jump_set, 0, 1, new_namespaces)]
    program += [(ret, 0, 0, eperm), (jump_set, 1, 0, clone_thread), (ret, 0, 0, eperm), (ret, 0, 0, allow)]
    filters = (_SockFilter * len(program))(*[_SockFilter(*instruction) for instruction in program])
    fprog = _SockFprog(len(program), filters)
    pr_set_seccomp, pr_get_seccomp, seccomp_mode_filter = 22, 21, 2
    libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0)
    return libc.prctl(pr_get_seccomp, 0, 0, 0, 0) == seccomp_mode_filter
