"""What the service user's CLI leaves behind on root's terminal. `clawsvc openclaw` as root runs the CLI as the
service user on root's terminal; a process it forks can outlive it with the terminal still open and read what root
types next (a password at a sudo prompt) or write into it. When the CLI ends, every process of that user still
holding the terminal is killed. Only names are compared (readlink of /proc/PID/fd/N): nothing of theirs is stat'ed
or opened, so a FUSE file of theirs cannot stall root here."""

from __future__ import annotations

import contextlib
import os
import signal

ROUNDS = 5  # a holder may fork while we look: look again until none is left


def terminal_names() -> set[str]:
    """/dev/pts/N and the like: what our stdin, stdout, stderr and controlling terminal are."""
    names = set()
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                names.add(os.ttyname(fd))
    with contextlib.suppress(OSError):
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            names.add(os.ttyname(fd))
        finally:
            os.close(fd)
    return names


def _holds(pid: str, names: set[str]) -> bool:
    try:
        with os.scandir(f"/proc/{pid}/fd") as fds:
            return any(os.readlink(fd.path) in names for fd in fds)
    except OSError:  # gone, or no such process any more
        return False


def holders(uid: int, names: set[str]) -> list[int]:
    """The pids of `uid`'s processes with one of the terminals `names` open."""
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            try:
                if not entry.name.isdigit() or entry.stat(follow_symlinks=False).st_uid != uid:
                    continue
            except OSError:
                continue
            if _holds(entry.name, names):
                found.append(int(entry.name))
    return found


def sweep(uid: int, names: set[str]) -> list[int]:
    """Kill (SIGKILL) every process of `uid` holding one of the terminals `names`; the pids killed."""
    killed: list[int] = []
    for _ in range(ROUNDS):
        found = [pid for pid in holders(uid, names) if pid not in killed]
        if not found:
            break
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed += found
    return killed
