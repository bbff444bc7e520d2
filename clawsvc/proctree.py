"""A process's descendants, pinned with pidfds so a reused PID is never signalled (Linux).

stop() pins the gateway's descendants before signalling, then waits until every one is gone. That
matters for the ones outside its process group: OpenClaw starts its spawn broker with setsid(), so a
signal to the group misses it; it exits by itself about 1.6 s after the gateway, or is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from pathlib import Path

log = logging.getLogger("clawsvc.process")
KILL_WAIT = 5.0


def _start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (with the pid, a process's identity), or None if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (not zombies) whose environment holds name=value, e.g. one gateway's OPENCLAW_STATE_DIR."""
    wanted = f"{name}={value}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(environ.parent.name)
            if pid == os.getpid() or wanted not in environ.read_bytes().split(b"\0"):
                continue
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(pid)
    return found


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL what an earlier gateway of this state dir left running (its clawsvc was SIGKILLed and the
    parent-death signal reached only the gateway's main process); returns their pids."""
    pids = processes_with_env("OPENCLAW_STATE_DIR", str(state_dir))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(child) for child in children.read_text().split()]
                found.extend(kids)
                pending.extend(kids)
    return found


def pin_descendants(pid: int) -> dict[int, int]:
    """{pidfd: pid} for every live descendant of pid, so we can wait for each and never signal a stranger."""
    if not hasattr(os, "pidfd_open"):
        return {}
    fds: dict[int, int] = {}
    for child in descendants(pid):
        before = _start_time(child)
        if before is None:
            continue
        try:
            fd = os.pidfd_open(child)
        except OSError:
            continue
        if _start_time(child) == before:
            fds[fd] = child
        else:
            os.close(fd)  # the PID was reused between reading /proc and opening it
    return fds


def _wait_exit(poller: select.poll, alive: set[int], timeout: float) -> None:
    """Wait until the processes behind these pidfds exit (a pidfd polls readable then) or timeout."""
    deadline = time.monotonic() + timeout
    while alive and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            alive.discard(fd)
            poller.unregister(fd)


def kill_stragglers(pidfds: dict[int, int], grace: float) -> None:
    """Wait up to `grace` for these processes to exit, SIGKILL the rest and see them go; closes the pidfds."""
    try:
        poller = select.poll()
        for fd in pidfds:
            poller.register(fd, select.POLLIN)
        alive = set(pidfds)
        _wait_exit(poller, alive, grace)
        for fd in alive:
            log.warning("gateway helper process %d outlived the gateway by %gs; sending SIGKILL",
                        pidfds[fd], grace)
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        _wait_exit(poller, alive, KILL_WAIT)
    finally:
        for fd in pidfds:
            os.close(fd)
