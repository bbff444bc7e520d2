"""What both ends of the control socket share: one JSON object per line each way over a unix socket, the
limits, the error shape, and SO_PEERCRED (the server checks its clients, the client its server).

Requests:  {"cmd": "status"} | {"cmd": "rpc", "method": M, "params": P, "timeout": S|null}
           | {"cmd": "restart-gateway", "mode": "safe"|"fresh"|"force", "why": "requested"|"upgrade"}
           | {"cmd": "events", "follow": B, "names": [N, ...]|null} | {"cmd": "metrics"} (the result: the text)
Replies:   {"ok": true, "result": R} | {"ok": false, "error": {"code": C, "message": M, "details": D|null}}
           events with follow: {"ok": true, "result": "following"}, then one event object per line (stream.py)
"""

from __future__ import annotations

import re
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clawsvc import jsontext
from clawsvc.text import shown

MAX_REQUEST = 1 << 20  # bytes of a request line
MAX_REPLY = 64 << 20  # bytes of a reply line the client reads; beyond that it is not clawsvc talking
MAX_DEPTH = 100  # nesting of arrays and objects in a request
MAX_RPC_TIMEOUT = 3600.0  # seconds; the cap on an rpc request's "timeout"
COMMANDS = ("status", "rpc", "restart-gateway", "events", "metrics", "dashboard")
RESTART_MODES = ("safe", "fresh", "force")  # restart-gateway's "mode": see clawsvc.service.messages.RestartMode
RESTART_WHYS = ("requested", "upgrade")  # its "why": what the restart is counted as (RestartCause)
MAX_NAMES = 64  # event names in one events request
MAX_NAME = 100  # characters of one event name
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python does not name it

_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)  # unterminated ones too: linear time
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ControlError(Exception):
    """An {"ok": false} reply (client side), or a refusal to raise from a handler (server side)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class ServiceNotRunning(Exception):
    """Nothing serves the control socket: no file, or a stale one from a stopped run."""


class LineTooLong(Exception):
    """The peer sent more than the limit without a newline."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None = None  # supplementary groups at connect time, where the kernel tells


def peer_of(conn: socket.socket) -> Peer | None:
    """The other end's credentials (for a client: the server's at listen() time); None where the platform
    has no SO_PEERCRED (e.g. macOS)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid, uid, gid, _peer_groups(conn))


def _peer_groups(conn: socket.socket) -> frozenset[int] | None:
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError:  # an old kernel, or more groups than fit in 1024 bytes: read them from /proc instead
        return None
    return frozenset(struct.unpack(f"{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))


def supplementary_groups(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return {int(gid) for gid in line.split()[1:]}
    return set()


def too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays/objects deeper than `limit` (strings skipped); cheap, never recursive."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if len(brackets) <= limit:
        return False
    depth = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return True
    return False


def read_line(sock: socket.socket, deadline: float, limit: int = MAX_REPLY) -> bytes:
    """Bytes before the first newline (or before EOF); b"" when the peer sent nothing at all.
    TimeoutError after `deadline`, LineTooLong beyond `limit` bytes."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        end = chunk.find(b"\n")
        buf += chunk if end < 0 else chunk[:end]
        if len(buf) > limit:
            raise LineTooLong
        if not chunk or end >= 0:
            return bytes(buf)


def encode(message: dict[str, Any]) -> bytes:
    """One line; a RawJSON value (e.g. the events history, kept encoded) goes in as it is."""
    return jsontext.obj(list(message.items())) + b"\n"


def error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details}}


TIMEOUT_RULE = f"a positive number of seconds up to {MAX_RPC_TIMEOUT:g}"


def rpc_timeout(value: Any) -> float | None:
    """An rpc request's "timeout" (the server's check, and the CLI's on --timeout): null, or seconds, finite, > 0
    and at most MAX_RPC_TIMEOUT (NaN and infinity fail the range)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_RPC_TIMEOUT:
        raise ControlError("BAD_REQUEST", f"rpc timeout must be {TIMEOUT_RULE}, got {shown(value)}")
    return float(value)
