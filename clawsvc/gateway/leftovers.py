"""What a killed clawsvc left running, proven by the pidfile in the state dir; nothing else is ever killed.

Each spawned gateway is recorded in STATE_DIR/clawsvc-gateway.pid with its pid, start time, boot id and
random CLAWSVC_GATEWAY_ID. At the next spawn, a process is a leftover only when it is that very process
(same start time, same boot) or a process of our uid started after it that carries its marker.

SWEEPING holds the markers of gateways of this very process whose helpers their waiter is ending now: a
respawn right after a crash must not take those for the leftovers of a killed clawsvc.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from clawsvc import trust
from clawsvc.gateway import proctree

log = logging.getLogger("clawsvc.gateway.process")
PIDFILE = "clawsvc-gateway.pid"
PIDFILE_MAX = 4096
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SWEEPING: set[str] = set()
_swept = threading.Condition()


@contextlib.contextmanager
def sweeping(marker: str) -> Iterator[None]:
    """While inside, the gateway with this marker is ours to end: kill_leftovers leaves its processes alone."""
    with _swept:
        SWEEPING.add(marker)
    try:
        yield
    finally:
        with _swept:
            SWEEPING.discard(marker)
            _swept.notify_all()


def wait_sweeps(timeout: float) -> bool:
    """Wait until no gateway of this process is being swept; False if some still is after `timeout`."""
    with _swept:
        return _swept.wait_for(lambda: not SWEEPING, timeout)


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class PidRecord:
    """One spawned gateway: pid, start time and boot id say which process; marker is its CLAWSVC_GATEWAY_ID."""

    pid: int
    start: int
    boot: str
    marker: str

    def dump(self) -> bytes:
        return f"{self.pid} {self.start} {self.boot} {self.marker}\n".encode()

    @classmethod
    def parse(cls, data: bytes) -> PidRecord | None:
        try:
            pid, start, boot, marker = data.decode("ascii").split()
            return cls(int(pid), int(start), boot, marker)
        except ValueError:
            return None

    @classmethod
    def of(cls, pid: int, marker: str) -> PidRecord | None:
        start = proctree.start_time(pid)
        return None if start is None else cls(pid, start, boot_id(), marker)


def write_pidfile(state_dir: Path, record: PidRecord) -> None:
    """Atomically (tmp + rename), 0600, never through a symlink; OSError when it cannot."""
    tmp = f".{PIDFILE}.{os.getpid()}"
    dir_fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # checked by prepare_state_dir
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        trust.create_secret_at(dir_fd, tmp, record.dump())
        os.replace(tmp, PIDFILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def read_pidfile(state_dir: Path) -> PidRecord | None:
    """The record, or None when there is none or it is not a small regular file of ours (never followed)."""
    path = state_dir / PIDFILE

    def ours(st: os.stat_result) -> None:
        if st.st_uid != os.geteuid():
            raise trust.TrustError(f"gateway pidfile {path} belongs to uid {st.st_uid}, not to uid {os.geteuid()} "
                                   "that clawsvc runs as; remove it")

    try:
        found = trust.read_regular(path, "gateway pidfile", cap=PIDFILE_MAX, nofollow=True, vet=ours)
    except FileNotFoundError:
        return None
    except trust.TrustError as exc:
        log.warning("ignoring it, so nothing is killed as a leftover: %s", exc)
        return None
    except OSError as exc:
        log.warning("ignoring gateway pidfile %s (%s), so nothing is killed as a leftover; remove it", path,
                    exc.strerror)
        return None
    return PidRecord.parse(found.data)


def remove_pidfile(state_dir: Path, marker: str) -> None:
    """Remove the pidfile if it still names the gateway with this marker (a newer one may have replaced it)."""
    record = read_pidfile(state_dir)
    if record is not None and record.marker == marker:
        with contextlib.suppress(OSError):
            os.unlink(state_dir / PIDFILE)


def _is_leftover(pid: int, record: PidRecord, entry: bytes) -> int | None:
    """A pidfd for pid if it is provably from the recorded gateway: that very process (same start time),
    or one of our uid started after it and carrying its marker."""
    fields = proctree.proc_stat(pid)
    if fields is None or fields[0] == "Z" or int(fields[19]) < record.start:
        return None
    if not (pid == record.pid and int(fields[19]) == record.start) and not proctree.environ_has(pid, entry):
        return None
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
            return None
    except OSError:
        return None
    return proctree.pidfd(pid, int(fields[19]))


def _pin_leftovers(record: PidRecord) -> dict[int, int]:
    entry = f"{proctree.GATEWAY_ID_ENV}={record.marker}".encode()
    fds: dict[int, int] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid != os.getpid() and (fd := _is_leftover(pid, record, entry)) is not None:
            fds[fd] = pid
    if record.pid in fds.values():  # the gateway itself is still there: all it started is ours too
        known = set(fds.values())
        for fd, pid in proctree.pin_descendants(record.pid).items():
            if pid in known:
                os.close(fd)
            else:
                fds[fd] = pid
    return fds


def kill_leftovers(state_dir: Path) -> list[int]:
    """SIGKILL what the gateway recorded in state_dir's pidfile left running (its clawsvc was SIGKILLed and
    the parent-death signal reached only the gateway's main process); returns their pids."""
    record = read_pidfile(state_dir)
    if record is None or record.boot != boot_id() or record.marker in SWEEPING:
        return []
    pinned = _pin_leftovers(record)
    pids = sorted(pinned.values())
    proctree.kill_pinned(pinned)
    return pids
