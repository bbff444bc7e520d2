"""The gateway's processes, pinned with pidfds so a reused PID is never signalled (Linux).

stop() pins the gateway's descendants before signalling, then waits until every one is gone. That
matters for the ones outside its process group: OpenClaw starts its spawn broker with setsid(), so a
signal to the group misses it; it exits by itself about 1.6 s after the gateway, or is killed.

clawsvc is the child subreaper: what the gateway's tree orphans (a double-forked daemon) becomes our
child instead of init's. Orphans tracks those children of one gateway: it pins them while they live,
reaps them when they die, and after the gateway exits, ends and reaps the rest. Each gateway carries a
random CLAWSVC_GATEWAY_ID in its environment; leftovers.py uses it to find what a killed clawsvc left.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from clawsvc.gateway.spawnenv import GATEWAY_ID_ENV

log = logging.getLogger("clawsvc.gateway.process")
KILL_WAIT = 5.0
SWEEP_ROUNDS = 3  # a killed orphan's own children are orphaned in turn: look again, a bounded number of times
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process adopt its descendants' orphans (instead of init); once, early in `clawsvc run`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("cannot become the child subreaper (%s); a daemon the gateway forks may outlive clawsvc", exc)
        return False
    return True


def proc_stat(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name: [0] state, [1] ppid, [2] pgrp, [3] session, [19] start time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (with the pid, a process's identity), or None if gone."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None


def environ_has(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _children_of(task_dir: Path) -> list[int]:
    found: list[int] = []
    for children in task_dir.glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            found.extend(int(child) for child in children.read_text().split())
    return found


def own_children() -> list[int]:
    """This process's children, whichever of its threads forked them (or adopted them as subreaper)."""
    return _children_of(Path("/proc/self/task"))


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        kids = _children_of(Path(f"/proc/{pending.pop()}/task"))
        found.extend(kids)
        pending.extend(kids)
    return found


def pidfd(pid: int, start: int | None = None) -> int | None:
    """A pidfd for pid if it is still the process that started at `start` (any start when None)."""
    before = start_time(pid) if start is None else start
    if before is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if start_time(pid) != before:
        os.close(fd)  # the PID was reused between reading /proc and opening it
        return None
    return fd


def pin_descendants(pid: int) -> dict[int, int]:
    """{pidfd: pid} for every live descendant of pid, so we can wait for each and never signal a stranger."""
    fds: dict[int, int] = {}
    for child in descendants(pid):
        if (fd := pidfd(child)) is not None:
            fds[fd] = child
    return fds


def _reap(fd: int) -> None:
    """Reap the process behind this pidfd if it is our exited child (a subreaper must); else nothing."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)


def _signal_all(fds: Iterable[int], sig: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(fd, sig)


def _wait_exit(poller: select.poll, alive: set[int], timeout: float) -> None:
    """Wait until the processes behind these pidfds exit (a pidfd polls readable then) or timeout."""
    deadline = time.monotonic() + timeout
    while alive and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            alive.discard(fd)
            poller.unregister(fd)


def _poller(fds: Iterable[int]) -> select.poll:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return poller


def kill_stragglers(pidfds: dict[int, int], grace: float) -> int:
    """Wait up to `grace` for these processes to exit, SIGKILL the rest and see them go; reap those that are
    our children; closes the pidfds. Returns how many are still there."""
    try:
        poller = _poller(pidfds)
        alive = set(pidfds)
        _wait_exit(poller, alive, grace)
        for fd in alive:
            log.warning("gateway helper process %d outlived the gateway by %gs; sending SIGKILL",
                        pidfds[fd], grace)
        return _kill(pidfds, poller, alive)
    finally:
        for fd in pidfds:
            os.close(fd)


def kill_pinned(pidfds: dict[int, int]) -> int:
    """SIGKILL these processes now, see them go, reap those that are our children; closes the pidfds.
    Returns how many are still there."""
    try:
        return _kill(pidfds, _poller(pidfds), set(pidfds))
    finally:
        for fd in pidfds:
            os.close(fd)


def _kill(pidfds: dict[int, int], poller: select.poll, alive: set[int]) -> int:
    _signal_all(alive, signal.SIGKILL)
    _wait_exit(poller, alive, KILL_WAIT)
    for fd in set(pidfds) - alive:
        _reap(fd)
    return len(alive)


class Orphans:
    """The children clawsvc adopted from one gateway's tree: pinned while they live, reaped when they die.

    A child is from this gateway's tree when it carries the gateway's CLAWSVC_GATEWAY_ID or is in its
    session or process group; the keyring child and other processes clawsvc starts itself are neither.
    """

    def __init__(self, gateway_pid: int, marker: str) -> None:
        self.gateway_pid = gateway_pid
        self.entry = f"{GATEWAY_ID_ENV}={marker}".encode()
        self.pinned: dict[int, int] = {}  # pidfd -> pid

    def _in_session(self, fields: list[str]) -> bool:
        return self.gateway_pid in (int(fields[2]), int(fields[3]))

    def adopt(self) -> None:
        """Pin the gateway's newly orphaned children; reap its orphans that already died in its session."""
        known = set(self.pinned.values())
        for pid in own_children():
            if pid == self.gateway_pid or pid in known or (fields := proc_stat(pid)) is None:
                continue
            if fields[0] == "Z":  # its environment is gone: only the session tells where it came from
                if self._in_session(fields):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)  # an unreaped child of ours: the pid cannot be reused
            elif (self._in_session(fields) or environ_has(pid, self.entry)) and \
                    (fd := pidfd(pid, int(fields[19]))) is not None:
                self.pinned[fd] = pid

    def watch(self, gateway_fd: int, interval: float) -> None:
        """Until the gateway (its pidfd) exits: adopt every `interval` seconds and reap what dies."""
        while True:
            ready = {fd for fd, _ in _poller([gateway_fd, *self.pinned]).poll(interval * 1000)}
            if gateway_fd in ready:
                return
            for fd in ready:
                _reap(fd)
                os.close(fd)
                del self.pinned[fd]
            self.adopt()

    def sweep(self, grace: float) -> int:
        """After the gateway exited: SIGTERM what it left behind, SIGKILL it after `grace`, reap it all.
        Returns how many processes are still there (stuck even after SIGKILL)."""
        stuck = 0
        for _ in range(SWEEP_ROUNDS):
            self.adopt()
            family, self.pinned = self.pinned, {}
            for pid in list(family.values()):
                family.update(pin_descendants(pid))
            if not family:
                break
            log.info("stopping %d process(es) the gateway pid %d left behind (pids %s)", len(family),
                     self.gateway_pid, ", ".join(map(str, sorted(family.values()))))
            _signal_all(family, signal.SIGTERM)
            stuck = kill_stragglers(family, grace)
        return stuck

    def close(self) -> None:
        for fd in self.pinned:
            os.close(fd)
        self.pinned = {}
