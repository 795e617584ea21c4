"""Memory cgroups of the sandboxes: one per sandbox, bounding its total memory and tasks; removed after it.

As root with a memory controller (cgroup v2, or v1 memory + pids), the fork server finds where the
groups go (`cgroup_parents`), each supervisor makes its sandbox's group (`make_cgroups`), the sandbox's
PID 1 joins it (`join_cgroups`) and the fork server removes it once the sandbox is gone. Standard
library only: a part of the fork server, which `sandbox_server.py` imports by path under `python -I -S`.
"""

from __future__ import annotations

import os

CGROUP_LAYER = "memory-cgroup"
"""Reported after ALL_LAYERS when the sandbox ran in a cgroup of its own that bounds its total memory."""
_CGROUP_PREFIX = "learnforget-sandbox-"
_CGROUP_LEAF = "learnforget-scorer"
"""cgroup v2: where the scorer's group's own processes move, so that the group may have limited children."""


def cgroup_parents() -> list[tuple[str, str]]:
    """Where sandboxes' cgroups go: [(our v2 group, "v2")], or v1 [(memory group, "memory"), (pids group,
    "pids")]; [] where no memory controller can be had (the sandbox then runs without the cgroup layer)."""
    mounts, own = {}, {}  # controller ("" for cgroup v2) -> (mount point, its root), and -> our group
    try:
        with open("/proc/self/mountinfo") as file:
            for line in file:
                fields = line.split()
                fstype, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3].split(",")
                for name in [""] if fstype == "cgroup2" else ["memory", "pids"] if fstype == "cgroup" else []:
                    if not name or name in options:
                        mounts.setdefault(name, (fields[4], fields[3].rstrip("/")))
        with open("/proc/self/cgroup") as file:
            for line in file:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for name in controllers.split(",") if controllers else [""]:
                    if name in mounts and (path + "/").startswith(mounts[name][1] + "/"):
                        own[name] = mounts[name][0] + path.rstrip("/").removeprefix(mounts[name][1])
        if "" in own:
            group = own[""]
            if os.path.basename(group) == _CGROUP_LEAF:  # an earlier scorer moved us here
                group = os.path.dirname(group)
            with open(f"{group}/cgroup.controllers") as file:
                available = file.read().split()
            if "memory" in available:
                _enable_v2_controllers(group, [name for name in ("memory", "pids") if name in available])
                return [(group, "v2")]
        if "memory" in own:
            return [(own["memory"], "memory")] + ([(own["pids"], "pids")] if "pids" in own else [])
    except (OSError, ValueError, IndexError):
        pass
    return []


def _enable_v2_controllers(group: str, controllers: list[str]) -> None:
    """Let `group`'s children have memory (and pids) limits; its own processes first move into a leaf
    child, because a v2 group that hands controllers to children may hold no processes itself."""
    with open(f"{group}/cgroup.subtree_control") as file:
        missing = [name for name in controllers if name not in file.read().split()]
    if not missing:
        return
    text = " ".join("+" + name for name in missing)
    try:
        with open(f"{group}/cgroup.subtree_control", "w") as file:
            file.write(text)
        return
    except OSError:  # EBUSY: the group holds processes (ours among them)
        pass
    os.makedirs(f"{group}/{_CGROUP_LEAF}", exist_ok=True)
    with open(f"{group}/cgroup.procs") as file:
        pids = file.read().split()
    for pid in pids:
        try:
            with open(f"{group}/{_CGROUP_LEAF}/cgroup.procs", "w") as file:
                file.write(pid)
        except OSError:  # gone, or a kernel thread
            pass
    with open(f"{group}/cgroup.subtree_control", "w") as file:
        file.write(text)


def cgroup_paths(config: dict, supervisor_pid: int) -> list[str]:
    """The cgroup directories of the sandbox that this supervisor set up."""
    name = f"{_CGROUP_PREFIX}{config['server_pid']}-{supervisor_pid}"
    return [f"{parent}/{name}" for parent, _ in config["cgroups"]]


def make_cgroups(config: dict) -> list[str]:
    """Make this sandbox's cgroup(s): total memory (page cache, memfds, socket and pipe buffers, kernel
    memory) at most memory_mb, no swap, at most max_processes + 8 tasks. [] where that cannot be had."""
    memory, tasks = str(config["memory_mb"] << 20), str(config["max_processes"] + 8)
    settings = {  # file -> (value, required)
        "v2": {"memory.max": (memory, True), "memory.swap.max": ("0", False)}
        | {"memory.oom.group": ("1", False), "pids.max": (tasks, False)},
        "memory": {"memory.limit_in_bytes": (memory, True), "memory.memsw.limit_in_bytes": (memory, False)}
        | {"memory.oom_control": ("0", False)},  # OOM-kill at the limit, even where the parent may not
        "pids": {"pids.max": (tasks, False)},
    }
    made = []
    try:
        for path, (_, kind) in zip(cgroup_paths(config, os.getpid()), config["cgroups"], strict=True):
            os.mkdir(path)
            made.append(path)
            for file, (value, required) in settings[kind].items():
                try:
                    with open(f"{path}/{file}", "w") as handle:
                        handle.write(value)
                except OSError:
                    if required:
                        raise
        return made
    except OSError:
        remove_cgroups(set(made))
        return []


def join_cgroups(cgroups: list[str]) -> bool:
    """Move the calling process into the sandbox's cgroup(s); True when it is in all of them."""
    try:
        for path in cgroups:
            with open(f"{path}/cgroup.procs", "w") as file:
                file.write("0")
        return True
    except OSError:
        return False


def remove_cgroups(paths: set[str]) -> None:
    """Remove the cgroups whose processes are all gone (the others stay in `paths`, for a later try)."""
    for path in list(paths):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError:  # EBUSY: a process of the sandbox is still exiting
            continue
        paths.discard(path)


def remove_stale_cgroups(parents: list[tuple[str, str]]) -> None:
    """Remove sandbox cgroups that a fork server killed before it could clean up left behind."""
    for parent, _ in parents:
        try:
            names = [name for name in os.listdir(parent) if name.startswith(_CGROUP_PREFIX)]
        except OSError:
            continue
        for name in names:
            try:
                os.kill(int(name.removeprefix(_CGROUP_PREFIX).split("-")[0]), 0)
            except (ProcessLookupError, ValueError):
                remove_cgroups({f"{parent}/{name}"})
            except OSError:
                pass
