"""The gateway's memory: what its processes use (sampled after each health check), the memory available to it, and
the V8 heap limit openclaw's own managed service gives it (its `gateway-heap` module), which clawsvc gives it too.

Linux only (/proc and cgroups); elsewhere nothing is sampled and Node keeps its own default heap limit. Reads are of
small kernel files, bounded; callers run off the supervisor loop."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from clawsvc.gateway import proctree

READ_MAX = 64 * 1024
MIB = 1 << 20
# openclaw's policy (dist/gateway-heap-*.mjs, resolveGatewayHeapLimit): half of the memory available, at least
# HEAP_FLOOR, at most max(HEAP_CAP, a quarter), never over three quarters (room for native memory)
HEAP_FLOOR_MIB = 2048
HEAP_CAP_MIB = 8192
HEAP_FLAG = "--max-old-space-size"
NODE_OPTIONS = "NODE_OPTIONS"
# the heap controls openclaw looks for before it adds its own (parseHeapControls)
_HEAP_CONTROL = re.compile(r"^--max(?:[-_]old[-_]space[-_]size(?:[-_]percentage)?|[-_]heap[-_]size)(?:=|$)")


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as stream:
            return stream.read(READ_MAX).decode("ascii", "replace")
    except OSError:
        return None


def _cgroup_mount() -> Path | None:
    """Where the cgroup2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified beside v1)."""
    for line in (_read(Path("/proc/self/mountinfo")) or "").splitlines():
        fields = line.split(" - ", 1)
        if len(fields) == 2 and fields[1].split()[:1] == ["cgroup2"]:
            return Path(fields[0].split()[4])
    return None


def cgroup_of(pid: int | str) -> str | None:
    """The cgroup2 path of a process ("/system.slice/clawsvc.service"), or None."""
    for line in (_read(Path(f"/proc/{pid}/cgroup")) or "").splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or None
    return None


def _number(path: Path) -> int | None:
    text = (_read(path) or "").strip()
    return int(text) if text.isdigit() else None


def tree_rss(pid: int) -> int | None:
    """Resident memory of `pid` and its descendants (the spawn broker and its workers), in bytes."""
    page = os.sysconf("SC_PAGE_SIZE")
    total, seen = 0, False
    for member in [pid, *proctree.descendants(pid)]:
        fields = (_read(Path(f"/proc/{member}/statm")) or "").split()
        if len(fields) > 1 and fields[1].isdigit():
            total += int(fields[1]) * page
            seen = True
    return total if seen else None


def sample(pid: int) -> tuple[int, str] | None:
    """(bytes, source) the gateway `pid` uses: its cgroup's memory.current where the gateway has a cgroup of its
    own (not clawsvc's), else the resident memory of its process tree. None when it is gone."""
    own, theirs, mount = cgroup_of("self"), cgroup_of(pid), _cgroup_mount()
    if theirs is not None and theirs != own and mount is not None:
        current = _number(mount / theirs.lstrip("/") / "memory.current")
        if current is not None:
            return current, "cgroup"
    rss = tree_rss(pid)
    return None if rss is None else (rss, "rss")


def _limit_along(mount: Path, group: str) -> int | None:
    """The lowest memory.max from the cgroup up to the root ("max" is none)."""
    limits = []
    path = mount / group.lstrip("/")
    while True:
        value = _number(path / "memory.max")
        if value is not None:
            limits.append(value)
        if path == mount or mount not in path.parents:
            break
        path = path.parent
    return min(limits, default=None)


def available_memory() -> tuple[int | None, str]:
    """(bytes, "constrained" | "physical" | "unknown"): this process's cgroup limit where it is lower than the
    machine's memory (a gateway we spawn lands in the same cgroup), else the machine's (as Node's
    process.constrainedMemory() and os.totalmem() tell openclaw)."""
    physical = None
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        if line.startswith("MemTotal:") and line.split()[1].isdigit():
            physical = int(line.split()[1]) * 1024
    group, mount = cgroup_of("self"), _cgroup_mount()
    limit = _limit_along(mount, group) if group is not None and mount is not None else None
    if limit is not None and (physical is None or limit <= physical):
        return limit, "constrained"
    return physical, "physical" if physical is not None else "unknown"


def heap_limit_mib(available: int | None) -> int | None:
    """openclaw's resolveGatewayHeapLimit: the old-space size in MiB for this much memory, None when unknown."""
    if available is None or available < 2 * MIB:
        return None
    mib = available // MIB
    return min(max(HEAP_CAP_MIB, mib // 4), max(HEAP_FLOOR_MIB, mib // 2), mib * 3 // 4)


def names_heap_limit(words: Sequence[str]) -> bool:
    return any(_HEAP_CONTROL.match(word) for word in words)


def with_heap_limit(argv: list[str], env: dict[str, str], node: bool,
                    available: tuple[int | None, str] | None = None) -> tuple[list[str], str | None]:
    """(argv, what was done) with openclaw's heap policy applied, unless the command or NODE_OPTIONS in `env` names
    a heap limit already: on node's own argv where argv runs node itself (as openclaw's service does), else added to
    NODE_OPTIONS in `env` (a `#!/usr/bin/env node` launcher). `env` is changed in place."""
    if names_heap_limit(argv) or names_heap_limit(env.get(NODE_OPTIONS, "").split()):
        return argv, None
    memory, source = available if available is not None else available_memory()
    limit = heap_limit_mib(memory)
    if limit is None:
        return argv, None
    flag = f"{HEAP_FLAG}={limit}"
    how = f"{flag} (openclaw's policy for {memory // MIB} MiB of {source} memory)"  # type: ignore[operator]
    if node:
        return [argv[0], flag, *argv[1:]], how
    env[NODE_OPTIONS] = f"{env[NODE_OPTIONS]} {flag}" if env.get(NODE_OPTIONS) else flag
    return argv, how + " in NODE_OPTIONS"
