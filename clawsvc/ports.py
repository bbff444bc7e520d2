"""Who holds a TCP port: for "port 18789 is held by pid 4321 (python3)" instead of an EADDRINUSE loop."""

from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    name: str | None
    uid: int | None = None  # owner of the listening socket, known even when its process is not visible

    def describe(self) -> str:
        if self.pid is not None:
            owner = f", {self._owner()}" if self.uid is not None and self.uid != os.geteuid() else ""
            return f"pid {self.pid} ({self.name or 'unknown'}{owner})"
        if self.uid is not None:
            return f"a process of {self._owner()} that this user cannot inspect (run as root to see its pid)"
        return "a process the OS does not name (try: ss -ltnp as root)"

    def _owner(self) -> str:
        try:
            return f"user {pwd.getpwuid(self.uid).pw_name} (uid {self.uid})"  # type: ignore[arg-type]
        except KeyError:
            return f"uid {self.uid}"


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _listening_sockets(port: int) -> dict[int, int]:
    """inode -> uid of the sockets listening on port (any address, IPv4 and IPv6)."""
    found: dict[int, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                found[int(fields[9])] = int(fields[7])
    return found


def _process_with_socket(inodes: set[str]) -> int | None:
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # another user's process, or it just exited
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def _comm(pid: int) -> str | None:
    try:
        return (PROC / str(pid) / "comm").read_text().strip() or None
    except OSError:
        return None


def port_holder(port: int) -> PortHolder | None:
    """The process listening on TCP port, or None when nothing listens.

    Linux: the LISTEN socket's inode from /proc/net/tcp{,6}, then the process holding it.
    pid is None when the OS does not tell (another user's process without root; no /proc, e.g. macOS).
    """
    if not (PROC / "net" / "tcp").exists():
        return PortHolder(pid=None, name=None) if port_in_use(port) else None
    sockets = _listening_sockets(port)
    if not sockets:
        return None
    pid = _process_with_socket({f"socket:[{inode}]" for inode in sockets})
    uid = next(iter(sockets.values()))
    return PortHolder(pid=pid, name=_comm(pid) if pid is not None else None, uid=uid)
