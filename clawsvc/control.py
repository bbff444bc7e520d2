"""Control socket: one JSON object per line each way over a unix socket; the peer is checked with SO_PEERCRED.

Requests:  {"cmd": "status"} | {"cmd": "rpc", "method": M, "params": P, "timeout": S|null} | {"cmd": "restart-gateway"}
Replies:   {"ok": true, "result": R} | {"ok": false, "error": {"code": C, "message": M, "details": D|null}}
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import re
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from clawsvc.logs import redact
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.control")

MAX_REQUEST = 1 << 20  # bytes; replies may be any size
MAX_DEPTH = 100  # nesting of arrays and objects in a request
READ_TIMEOUT = 2.0  # a client has this long to send its request line
WRITE_TIMEOUT = 30.0  # and this long to take the reply
MAX_CLIENTS = 32  # requests being answered at once, one thread each
RESERVED = 4  # of those, kept for root and the service's own uid
MAX_WAITING = 64  # connections whose request line has not arrived yet; the oldest goes when a new one comes
MAX_RPC_TIMEOUT = 3600.0  # seconds; the cap on an rpc request's "timeout"
WARN_EVERY = 10.0  # seconds between two "too many clients" or "refused" warnings
CONNECT_WINDOW = 3.0  # how long a client retries while the socket's queue is full
COMMANDS = ("status", "rpc", "restart-gateway")
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python does not name it

_STRING = re.compile(rb'"(?:[^"\\]++|\\.?)*+(?:"|\Z)', re.DOTALL)  # unterminated ones too: linear time
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class ControlHandler(Protocol):
    def status(self) -> dict[str, Any]: ...
    def rpc(self, method: str, params: Any, timeout: float | None) -> Any: ...
    def restart_gateway(self) -> dict[str, Any]: ...


class ControlError(Exception):
    """An {"ok": false} reply (client side), or a refusal to raise from a handler (server side)."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details


class ServiceNotRunning(Exception):
    """Nothing serves the control socket: no file, or a stale one from a stopped run."""


class ControlSocketError(Exception):
    """The server cannot take its socket path (in use by a live clawsvc, not a socket, bad group, ...)."""


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int] | None = None  # supplementary groups at connect time, where the kernel tells


def peer_of(conn: socket.socket) -> Peer | None:
    """The connecting process's credentials; None where the platform has no SO_PEERCRED (e.g. macOS)."""
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


def read_line(sock: socket.socket, deadline: float) -> bytes:
    """Bytes before the first newline (or before EOF); b"" when the peer sent nothing at all."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        end = chunk.find(b"\n")
        buf += chunk if end < 0 else chunk[:end]
        if not chunk or end >= 0:
            return bytes(buf)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8") + b"\n"


def _error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details}}


def _reply_now(conn: socket.socket, message: dict[str, Any]) -> None:
    """A short answer from the accept loop, which must never wait on a client: what does not fit is lost."""
    try:
        conn.setblocking(False)
        conn.send(_encode(message))
    except OSError:
        pass


def _cut(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


class _Throttle:
    """At most one log line per `period` seconds; the next one carries the count of those held back."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._last = -period
        self._held = 0

    def due(self) -> int | None:
        """None: stay quiet this time; else log now, mentioning this many events since the last line."""
        now = time.monotonic()
        if now - self._last < self.period:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


def _since(held: int) -> str:
    return f" ({held} more since the last warning)" if held else ""


@dataclass(eq=False)
class _Waiting:
    """An accepted, allowed connection whose request line has not arrived yet."""

    conn: socket.socket
    peer: Peer | None
    privileged: bool
    deadline: float
    buf: bytearray = field(default_factory=bytearray)


class ControlServer:
    def __init__(self, path: Path, handler: ControlHandler, group: str | None = None) -> None:
        self.path = Path(path)
        self.handler = handler
        self.group = group
        self._gid: int | None = None
        self._uid = os.geteuid()
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._waiting: dict[socket.socket, _Waiting] = {}  # oldest first
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._crowded = _Throttle(WARN_EVERY)
        self._refused = _Throttle(WARN_EVERY)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        if self.group is not None:
            try:
                self._gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ControlSocketError(f"control.group: no group named {self.group!r} on this system") from None
        self._prepare_dir()
        self._claim_path()
        self._listener = self._bind()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = start_thread("control", self._accept_loop)
        log.info("control socket listening on %s (%s)", self.path, self._who_may())

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._wake_w is not None and self._wake_r is not None and self._thread is not None:
            self._wake_w.send(b"x")
            self._thread.join(timeout=5)
            self._wake_r.close()
            self._wake_w.close()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            self._remove_if_ours()

    # ------------------------------------------------------------ setup

    def _chgrp(self, path: Path) -> None:
        if self._gid is None:
            return
        try:
            os.chown(path, -1, self._gid)
        except OSError as exc:
            raise ControlSocketError(f"cannot give group {self.group} access to {path}: {exc.strerror} "
                                     f"(clawsvc's user must be a member of {self.group})") from None

    def _prepare_dir(self) -> None:
        parent = self.path.parent
        try:
            parent.parent.mkdir(parents=True, exist_ok=True)
            parent.mkdir()
        except FileExistsError:
            mode = parent.stat().st_mode
            if self._gid is not None and not mode & (stat.S_IXGRP | stat.S_IXOTH):
                log.warning("control.group %s cannot reach %s: its directory %s is mode %o", self.group,
                            self.path, parent, stat.S_IMODE(mode))
            return  # not ours to re-permission (e.g. systemd's RuntimeDirectory=)
        except OSError as exc:
            raise ControlSocketError(f"cannot create the control socket directory {parent}: {exc.strerror}") from None
        parent.chmod(0o750 if self._gid is not None else 0o700)
        self._chgrp(parent)

    def _claim_path(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlSocketError(f"{self.path} exists and is not a socket; move it away or set control.socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect(str(self.path))
            except ConnectionRefusedError:
                log.info("removing stale control socket %s left by a previous run", self.path)
                self.path.unlink(missing_ok=True)
                return
            except OSError as exc:
                raise ControlSocketError(f"cannot tell whether {self.path} is in use: "
                                         f"{exc.strerror or 'no answer'}") from None
            peer = peer_of(probe)
        who = f" (pid {peer.pid})" if peer else ""
        raise ControlSocketError(f"another clawsvc is serving {self.path}{who}; stop it or set control.socket")

    def _bind(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.path))
        except OSError as exc:
            listener.close()
            raise ControlSocketError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        st = self.path.stat()
        self._identity = (st.st_dev, st.st_ino)
        try:
            os.chmod(self.path, 0o660 if self._gid is not None else 0o600)
            self._chgrp(self.path)
            listener.listen(128)
        except (OSError, ControlSocketError) as exc:
            listener.close()
            self._remove_if_ours()
            if isinstance(exc, ControlSocketError):
                raise
            raise ControlSocketError(f"cannot listen on {self.path}: {exc.strerror or exc}") from None
        return listener

    def _remove_if_ours(self) -> None:
        try:
            st = self.path.lstat()
            if (st.st_dev, st.st_ino) == self._identity:
                self.path.unlink()
        except OSError:
            pass

    def _who_may(self) -> str:
        extra = f" and group {self.group}" if self.group else ""
        return f"allowed: root, uid {self._uid}{extra}"

    # ------------------------------------------------------------ serving
    # One thread (the accept loop) checks the peer, then collects request lines from every waiting client
    # without blocking; only a complete request gets a slot and a thread of its own.

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            try:
                while True:
                    events = selector.select(self._until_next_deadline())
                    if any(key.fileobj is wake for key, _ in events):
                        return
                    for key, _ in events:
                        self._on_readable(key, listener, selector)
                    self._expire(selector)
            finally:
                for waiting in list(self._waiting.values()):
                    self._forget(waiting, selector)

    def _on_readable(self, key: selectors.SelectorKey, listener: socket.socket,
                     selector: selectors.BaseSelector) -> None:
        try:
            if key.fileobj is listener:
                self._accept_one(listener, selector)
            elif key.data is not None:
                self._receive(key.data, selector)
        except Exception:  # a bug here must not take the control socket down with it
            log.exception("control socket %s: unexpected error while serving a client", self.path)
            if key.data is not None:
                self._forget(key.data, selector)

    def _accept_one(self, listener: socket.socket, selector: selectors.BaseSelector) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # EMFILE and friends: back off instead of spinning
            log.warning("control socket %s: accept failed: %s; retrying in 1s", self.path, exc)
            self._closed.wait(1.0)
            return
        try:
            peer = peer_of(conn)
        except OSError:
            conn.close()
            return
        refusal = self._refusal(peer)
        if refusal is not None:
            self._refuse(conn, peer, refusal)
            return
        if len(self._waiting) >= MAX_WAITING:
            self._drop(self._oldest_waiting(), selector)
        conn.setblocking(False)
        waiting = _Waiting(conn, peer, self._privileged(peer), time.monotonic() + READ_TIMEOUT)
        self._waiting[conn] = waiting
        selector.register(conn, selectors.EVENT_READ, waiting)

    def _refuse(self, conn: socket.socket, peer: Peer | None, refusal: str) -> None:
        held = self._refused.due()
        if held is not None:
            who = f" (pid {peer.pid})" if peer else ""
            log.warning("control socket %s: refused a connection%s: %s%s", self.path, who, refusal, _since(held))
        _reply_now(conn, _error("EACCES", refusal))
        conn.close()

    def _oldest_waiting(self) -> _Waiting:
        """Whom to drop for a newcomer: the longest-waiting client, but root's and ours only if all are."""
        first = next(iter(self._waiting.values()))
        return next((w for w in self._waiting.values() if not w.privileged), first)

    def _drop(self, waiting: _Waiting, selector: selectors.BaseSelector) -> None:
        held = self._crowded.due()
        if held is not None:
            log.warning("control socket %s: too many clients (%d waiting to send a request, %d being answered); "
                        "dropping connections%s", self.path, len(self._waiting), self._busy, _since(held))
        _reply_now(waiting.conn, _error("BUSY", "clawsvc has too many control clients right now; try again"))
        self._forget(waiting, selector)

    def _forget(self, waiting: _Waiting, selector: selectors.BaseSelector) -> None:
        self._waiting.pop(waiting.conn, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(waiting.conn)
        waiting.conn.close()

    def _until_next_deadline(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, min(w.deadline for w in self._waiting.values()) - time.monotonic())

    def _expire(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for waiting in [w for w in self._waiting.values() if w.deadline <= now]:
            _reply_now(waiting.conn, _error("BAD_REQUEST", f"no request line within {READ_TIMEOUT:g}s"))
            self._forget(waiting, selector)

    def _receive(self, waiting: _Waiting, selector: selectors.BaseSelector) -> None:
        try:
            chunk = waiting.conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._forget(waiting, selector)
            return
        end = chunk.find(b"\n")
        waiting.buf += chunk if end < 0 else chunk[:end]
        if len(waiting.buf) > MAX_REQUEST:
            _reply_now(waiting.conn, _error("BAD_REQUEST", f"request line longer than {MAX_REQUEST} bytes"))
            self._forget(waiting, selector)
            return
        if chunk and end < 0:
            return
        self._waiting.pop(waiting.conn)
        selector.unregister(waiting.conn)
        if not waiting.buf.strip():
            waiting.conn.close()  # a probe (another clawsvc checking whether this socket is live)
            return
        self._start(waiting)

    def _start(self, waiting: _Waiting) -> None:
        if not self._take_slot(waiting.privileged):
            held = self._crowded.due()
            if held is not None:
                log.warning("control socket %s: too many clients (%d requests being answered); turning requests "
                            "away%s", self.path, self._busy, _since(held))
            _reply_now(waiting.conn, _error("BUSY", f"clawsvc is answering {self._busy} requests already; try again"))
            waiting.conn.close()
            return
        start_thread("control-client", self._serve, waiting.conn, bytes(waiting.buf), waiting.peer)

    def _privileged(self, peer: Peer | None) -> bool:
        return peer is None or peer.uid in (0, self._uid)

    def _take_slot(self, privileged: bool) -> bool:
        with self._busy_lock:
            if self._busy >= (MAX_CLIENTS if privileged else MAX_CLIENTS - RESERVED):
                return False
            self._busy += 1
            return True

    def _release_slot(self) -> None:
        with self._busy_lock:
            self._busy -= 1

    def _serve(self, conn: socket.socket, raw: bytes, peer: Peer | None) -> None:
        try:
            with conn:
                reply = self._dispatch(raw, peer)
                conn.settimeout(WRITE_TIMEOUT)
                conn.sendall(self._encode_reply(reply))
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            self._release_slot()

    @staticmethod
    def _encode_reply(reply: dict[str, Any]) -> bytes:
        try:
            return _encode(reply)
        except (ValueError, TypeError, RecursionError) as exc:
            log.error("control: cannot encode a reply: %s", exc)
            return _encode(_error("INTERNAL", f"the reply could not be encoded as JSON: {exc}"))

    def _refusal(self, peer: Peer | None) -> str | None:
        if self._privileged(peer):
            return None  # without SO_PEERCRED the socket's file mode is the only gate
        assert peer is not None
        if self._gid is not None and (peer.gid == self._gid or self._gid in self._groups_of(peer)):
            return None
        return f"uid {peer.uid} is not allowed to control clawsvc ({self._who_may()}; see control.group)"

    @staticmethod
    def _groups_of(peer: Peer) -> frozenset[int] | set[int]:
        return peer.groups if peer.groups is not None else supplementary_groups(peer.pid)

    def _dispatch(self, raw: bytes, peer: Peer | None) -> dict[str, Any]:
        if too_deep(raw):
            return _error("BAD_REQUEST", f"request nested deeper than {MAX_DEPTH} levels")
        try:
            request = json.loads(raw)
        except ValueError as exc:
            return _error("BAD_REQUEST", f"not valid JSON: {exc}")
        except RecursionError:
            return _error("BAD_REQUEST", f"request nested deeper than {MAX_DEPTH} levels")
        if not isinstance(request, dict):
            return _error("BAD_REQUEST", 'a request is a JSON object like {"cmd": "status"}')
        cmd = str(request.get("cmd"))[:40]
        log.debug("control: %s%s from %s", cmd, f" {str(request.get('method'))[:80]}" if cmd == "rpc" else "",
                  f"uid {peer.uid} pid {peer.pid}" if peer else "a local client")
        try:
            return {"ok": True, "result": self._run(request)}
        except Exception as exc:
            return self._failure(cmd, exc)

    def _run(self, request: dict[str, Any]) -> Any:
        cmd = request.get("cmd")
        if cmd == "status":
            return self.handler.status()
        if cmd == "restart-gateway":
            return self.handler.restart_gateway()
        if cmd != "rpc":
            raise ControlError("BAD_REQUEST", f"unknown command {str(cmd)[:40]!r}; known: {', '.join(COMMANDS)}")
        method = request.get("method")
        if not isinstance(method, str) or not method:
            raise ControlError("BAD_REQUEST", "rpc needs a method name")
        return self.handler.rpc(method, request.get("params"), rpc_timeout(request.get("timeout")))

    @staticmethod
    def _failure(cmd: str, exc: Exception) -> dict[str, Any]:
        code, message = getattr(exc, "code", None), getattr(exc, "message", None)
        if isinstance(code, str) and isinstance(message, str):  # GatewayError, ControlError
            return _error(code, message, getattr(exc, "details", None))
        if isinstance(exc, TimeoutError):
            return _error("TIMEOUT", redact(str(exc)) or "timed out")
        log.exception("control: %s failed with an unexpected error", cmd)
        return _error("INTERNAL", redact(f"{exc.__class__.__name__}: {exc}"))


def rpc_timeout(value: Any) -> float | None:
    """An rpc request's "timeout": null, or seconds, finite, > 0 and at most MAX_RPC_TIMEOUT."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_RPC_TIMEOUT:
        raise ControlError("BAD_REQUEST", f"rpc timeout must be a positive number of seconds up to "
                                          f"{MAX_RPC_TIMEOUT:g}, got {_cut(value)}")
    return float(value)


# ---------------------------------------------------------------- client

def request(path: Path, message: dict[str, Any], timeout: float) -> Any:
    """Send one request to the service and return its result; raise ControlError / ServiceNotRunning."""
    payload = _encode(message)
    if len(payload) > MAX_REQUEST:
        raise ControlError("TOO_LARGE", f"the request is {len(payload)} bytes; clawsvc takes at most {MAX_REQUEST}")
    deadline = time.monotonic() + timeout
    with _connect(path, min(timeout, CONNECT_WINDOW)) as sock:
        line = _exchange(sock, payload, path, deadline, timeout)
    return _result(line, path)


def _connect(path: Path, window: float) -> socket.socket:
    """A connected socket; a full queue (EAGAIN) is retried for `window` seconds, every other failure raises."""
    give_up = time.monotonic() + window
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(window)
            sock.connect(str(path))
            return sock
        except (BlockingIOError, TimeoutError):
            sock.close()
            if time.monotonic() >= give_up:
                raise ControlError("BUSY", f"clawsvc at {path} is not taking connections (its queue stayed full "
                                           f"for {window:g}s); try again") from None
            time.sleep(0.05)
        except OSError as exc:
            sock.close()
            raise _connect_error(path, exc) from None


def _connect_error(path: Path, exc: OSError) -> Exception:
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return ServiceNotRunning(f"not running (no control socket at {path})")
    if isinstance(exc, ConnectionRefusedError):
        return ServiceNotRunning(f"not running ({path} is a stale socket: nothing accepts on it)")
    if isinstance(exc, PermissionError):
        return ControlError("EACCES", f"permission denied opening {path} (run as the service user or root, "
                                      "or ask for control.group membership)")
    return ControlError("UNREACHABLE", f"cannot connect to {path}: {exc.strerror or exc}")


def _exchange(sock: socket.socket, payload: bytes, path: Path, deadline: float, timeout: float) -> bytes:
    with contextlib.suppress(OSError):  # the server may have answered and hung up unread (a refusal): read on
        sock.sendall(payload)
    try:
        line = read_line(sock, deadline)
    except TimeoutError:
        raise ControlError("TIMEOUT", f"no answer from clawsvc at {path} within {timeout:g}s") from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise ControlError("DISCONNECTED", f"connection to clawsvc at {path} failed: {reason}") from None
    if not line:
        raise ControlError("DISCONNECTED", f"clawsvc at {path} closed the connection without answering")
    return line


def _result(line: bytes, path: Path) -> Any:
    try:
        reply = json.loads(line)
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply["error"]
        raise ControlError(str(error.get("code") or "UNKNOWN"), str(error.get("message") or ""), error.get("details"))
    except (ValueError, KeyError, AttributeError, TypeError, RecursionError):
        raise ControlError("BAD_REPLY", f"clawsvc at {path} sent an unreadable reply") from None
