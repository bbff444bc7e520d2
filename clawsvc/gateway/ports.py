"""Who holds a TCP port or the server end of a connection (Linux /proc; lsof elsewhere), for "port 18789 is
held by pid 4321 (python3)" instead of an EADDRINUSE loop, and for sending the gateway token only to a
process we trust."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc.gateway import proctree
from clawsvc.text import printable
from clawsvc.users import describe_uid

PROC = Path("/proc")
PROC_SELF_STAT = Path("/proc/self/stat")  # not PROC: tests point that elsewhere to play macOS
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
LSOF_TIMEOUT = 2.0
LSOF_PATH = os.pathsep.join((os.defpath, "/usr/sbin"))  # macOS keeps lsof in /usr/sbin

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Endpoint = tuple[IPAddress, int]


@dataclass(frozen=True)
class PortHolder:
    pid: int | None
    name: str | None
    uid: int | None = None  # the process's uid; the socket's when the process is not visible

    def describe(self) -> str:
        if self.pid is not None:
            owner = f", {self._owner()}" if self.uid is not None and self.uid != os.geteuid() else ""
            return f"pid {self.pid} ({self.name or 'unknown'}{owner})"
        if self.uid is not None:
            return f"a process of {self._owner()} that this user cannot inspect (run as root to see its pid)"
        return "a process the OS does not name (try: ss -ltnp as root)"

    def _owner(self) -> str:
        return describe_uid(self.uid) if self.uid is not None else "an unknown user"


@dataclass(frozen=True)
class TcpSocket:
    """One row of /proc/net/tcp{,6}: IPv4-mapped IPv6 addresses are given as IPv4."""

    local: Endpoint
    remote: Endpoint
    state: str
    uid: int
    inode: int  # 0 when no process holds it (TIME_WAIT, not yet accepted)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def have_proc_net() -> bool:
    return (PROC / "net" / "tcp").exists()


def _plain(address: IPAddress) -> IPAddress:
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _proc_endpoint(text: str) -> Endpoint:
    """"0100007F:1F90" -> (127.0.0.1, 8080): the kernel prints each 32-bit word of the address in host order."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return _plain(ipaddress.ip_address(raw)), int(port, 16)


def sockaddr_endpoint(address: Any) -> Endpoint:
    """getsockname()/getpeername() of an AF_INET or AF_INET6 socket as an Endpoint."""
    host, port = address[0], address[1]
    return _plain(ipaddress.ip_address(host.split("%", 1)[0])), int(port)


def tcp_sockets() -> Iterator[TcpSocket]:
    """Every TCP socket of this network namespace, IPv4 and IPv6 (nothing without /proc)."""
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            try:
                yield TcpSocket(_proc_endpoint(fields[1]), _proc_endpoint(fields[2]), fields[3],
                                int(fields[7]), int(fields[9]))
            except (IndexError, ValueError):
                continue


def server_end(local: Any, peer: Any) -> TcpSocket | None:
    """The socket at the other end of our connection (our getsockname(), getpeername()), or None when no
    process holds one (closed meanwhile) or the OS does not tell (no /proc/net/tcp)."""
    ours, theirs = sockaddr_endpoint(local), sockaddr_endpoint(peer)
    for sock in tcp_sockets():
        if sock.local == theirs and sock.remote == ours and sock.inode:
            return sock
    return None


def _holders(inodes: Collection[int], pids: Iterable[int] | None) -> Iterator[int]:
    links = {f"socket:[{inode}]" for inode in inodes}
    candidates = pids if pids is not None else (int(e.name) for e in PROC.iterdir() if e.name.isdigit())
    return (pid for pid in candidates if _holds(pid, links))


def _holds(pid: int, links: set[str]) -> bool:
    try:
        fds = list((PROC / str(pid) / "fd").iterdir())
    except OSError:  # another user's process, or it just exited
        return False
    for fd in fds:
        try:
            if os.readlink(fd) in links:
                return True
        except OSError:
            continue
    return False


def pids_with_socket(inodes: Collection[int], pids: Iterable[int] | None = None) -> list[int]:
    """Those of `pids` (default: every visible process) holding one of these socket inodes."""
    return list(_holders(inodes, pids))


def pid_with_socket(inodes: Collection[int], pids: Iterable[int] | None = None) -> int | None:
    """The first of `pids` (default: every visible process) holding one of these socket inodes."""
    return next(_holders(inodes, pids), None)


def process_uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid of a process from /proc/PID/status, or None when it is gone or unreadable."""
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Uid:"):
            fields = line.split()
            try:
                return int(fields[1]), int(fields[2])
            except (IndexError, ValueError):
                return None
    return None


def _process_uid(pid: int, fallback: int | None) -> int | None:
    """The uid to name a process by: whichever of its real and effective uid is not ours, else its euid."""
    uids = process_uids(pid)
    if uids is None:
        return fallback
    return next((uid for uid in uids if uid != os.geteuid()), uids[1])


def process_start(pid: int) -> str | None:
    """When the process started, which changes if its pid is reaped and reused; None once it is gone.
    Linux: the start time in /proc/PID/stat; elsewhere (macOS) what ps says."""
    if (ticks := proctree.start_time(pid)) is not None:
        return str(ticks)
    if PROC_SELF_STAT.exists():
        return None
    ps = shutil.which("ps", path=os.defpath)
    if ps is None:
        return None
    try:
        done = subprocess.run([ps, "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                              errors="replace", timeout=LSOF_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _comm(pid: int) -> str | None:
    try:
        return printable((PROC / str(pid) / "comm").read_text()) or None  # any user can name a process
    except OSError:
        return None


def process_holder(pid: int, socket_uid: int | None = None) -> PortHolder:
    """Name a visible process holding a socket: its own uid, not the socket's (a socket created by root and
    handed to a process that dropped privileges still shows uid 0 in /proc/net/tcp)."""
    return PortHolder(pid=pid, name=_comm(pid), uid=_process_uid(pid, socket_uid))


def socket_holder(sock: TcpSocket) -> PortHolder:
    """Name the process holding this socket (pid None when it is another user's and we are not root)."""
    pid = pid_with_socket({sock.inode})
    return process_holder(pid, sock.uid) if pid is not None else PortHolder(pid=None, name=None, uid=sock.uid)


def port_holder(port: int) -> PortHolder | None:
    """The process listening on TCP port, or None when nothing listens.

    Linux: the LISTEN socket's inode from /proc/net/tcp{,6}, then the process holding it.
    pid is None when the OS does not tell (another user's process without root; no /proc, e.g. macOS).
    """
    if not have_proc_net():
        return PortHolder(pid=None, name=None) if port_in_use(port) else None
    listening = [sock for sock in tcp_sockets() if sock.state == _LISTEN and sock.local[1] == port]
    if not listening:
        return None
    pid = pid_with_socket({sock.inode for sock in listening})
    return process_holder(pid, listening[0].uid) if pid is not None else PortHolder(None, None, listening[0].uid)


def _lsof_address(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if host.version == 6 else f"{host}:{port}"


def parse_lsof(output: str, name: str) -> list[PortHolder]:
    """Every process whose socket lsof -F pcun names `name` ("127.0.0.1:18789->127.0.0.1:50123")."""
    found: list[PortHolder] = []
    holder: PortHolder | None = None
    for line in output.splitlines():
        tag, value = line[:1], line[1:]
        try:
            if tag == "p":
                holder = PortHolder(pid=int(value), name=None)
            elif tag == "c" and holder is not None:
                holder = PortHolder(holder.pid, value, holder.uid)
            elif tag == "u" and holder is not None:
                holder = PortHolder(holder.pid, holder.name, int(value))
            elif tag == "n" and value == name and holder is not None and holder not in found:
                found.append(holder)
        except ValueError:
            holder = None
    return found


def lsof_server_ends(local: Any, peer: Any) -> list[PortHolder]:
    """Where there is no /proc/net/tcp (macOS): the processes holding the other end of our connection, as
    lsof sees them; empty when lsof is missing, slow, or cannot see them (another user's, without root)."""
    ours, theirs = sockaddr_endpoint(local), sockaddr_endpoint(peer)
    lsof = shutil.which("lsof", path=LSOF_PATH)
    if lsof is None:
        return []
    try:
        done = subprocess.run([lsof, "-nP", "-w", f"-iTCP@{_lsof_address(theirs)}", "-Fpcun"],
                              capture_output=True, text=True, errors="replace", timeout=LSOF_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_lsof(done.stdout, f"{_lsof_address(theirs)}->{_lsof_address(ours)}")
