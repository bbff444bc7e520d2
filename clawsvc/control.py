"""Control socket: one JSON object per line each way over a unix socket; the peer is checked with SO_PEERCRED.

Requests:  {"cmd": "status"} | {"cmd": "rpc", "method": M, "params": P, "timeout": S|null} | {"cmd": "restart-gateway"}
Replies:   {"ok": true, "result": R} | {"ok": false, "error": {"code": C, "message": M, "details": D|null}}
"""

from __future__ import annotations

import grp
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from clawsvc.logs import redact

log = logging.getLogger("clawsvc.control")

MAX_REQUEST = 1 << 20  # bytes; replies may be any size
READ_TIMEOUT = 5.0  # a client has this long to send its request line
WRITE_TIMEOUT = 30.0  # and this long to take the reply
MAX_CLIENTS = 32
COMMANDS = ("status", "rpc", "restart-gateway")


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


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(conn: socket.socket) -> Peer | None:
    """The connecting process's credentials; None where the platform has no SO_PEERCRED (e.g. macOS)."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid, uid, gid)


def supplementary_groups(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return {int(gid) for gid in line.split()[1:]}
    return set()


def read_line(sock: socket.socket, limit: int | None, deadline: float) -> bytes:
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
        if limit is not None and len(buf) > limit:
            raise _TooLarge
        if not chunk or end >= 0:
            return bytes(buf)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, default=str).encode("utf-8") + b"\n"


def _error(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "details": details}}


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
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
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
        self._thread = threading.Thread(target=self._accept_loop, name="clawsvc-control", daemon=True)
        self._thread.start()
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
            listener.listen(64)
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

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(listener, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while not any(key.fileobj is wake for key, _ in selector.select()):
                self._accept_one(listener)

    def _accept_one(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError as exc:  # EMFILE and friends: back off instead of spinning
            log.warning("control socket %s: accept failed: %s; retrying in 1s", self.path, exc)
            self._closed.wait(1.0)
            return
        if not self._slots.acquire(blocking=False):
            log.warning("control socket %s: %d clients already being served; dropping a connection",
                        self.path, MAX_CLIENTS)
            conn.close()
            return
        threading.Thread(target=self._serve, args=(conn,), name="clawsvc-control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                reply = self._answer(conn)
                if reply is not None:
                    conn.settimeout(WRITE_TIMEOUT)
                    conn.sendall(_encode(reply))
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            self._slots.release()

    def _answer(self, conn: socket.socket) -> dict[str, Any] | None:
        peer = peer_of(conn)
        try:
            raw = read_line(conn, MAX_REQUEST, time.monotonic() + READ_TIMEOUT)
        except _TooLarge:
            return _error("BAD_REQUEST", f"request line longer than {MAX_REQUEST} bytes")
        except TimeoutError:
            return _error("BAD_REQUEST", f"no request line within {READ_TIMEOUT:g}s")
        if not raw.strip():
            return None  # a probe (another clawsvc checking whether this socket is live)
        refusal = self._refusal(peer)
        if refusal is not None:
            log.warning("control socket %s: refused a request: %s", self.path, refusal)
            return _error("EACCES", refusal)
        return self._dispatch(raw, peer)

    def _refusal(self, peer: Peer | None) -> str | None:
        if peer is None or peer.uid in (0, self._uid):
            return None  # without SO_PEERCRED the socket's file mode is the only gate
        if self._gid is not None and (peer.gid == self._gid or self._gid in supplementary_groups(peer.pid)):
            return None
        return f"uid {peer.uid} is not allowed to control clawsvc ({self._who_may()}; see control.group)"

    def _dispatch(self, raw: bytes, peer: Peer | None) -> dict[str, Any]:
        try:
            request = json.loads(raw)
        except ValueError as exc:
            return _error("BAD_REQUEST", f"not valid JSON: {exc}")
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
        method, timeout = request.get("method"), request.get("timeout")
        if not isinstance(method, str) or not method:
            raise ControlError("BAD_REQUEST", "rpc needs a method name")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or timeout <= 0):
            raise ControlError("BAD_REQUEST", f"rpc timeout must be a positive number of seconds, got {timeout!r}")
        return self.handler.rpc(method, request.get("params"), None if timeout is None else float(timeout))

    @staticmethod
    def _failure(cmd: str, exc: Exception) -> dict[str, Any]:
        code, message = getattr(exc, "code", None), getattr(exc, "message", None)
        if isinstance(code, str) and isinstance(message, str):  # GatewayError, ControlError
            return _error(code, message, getattr(exc, "details", None))
        if isinstance(exc, TimeoutError):
            return _error("TIMEOUT", redact(str(exc)) or "timed out")
        log.exception("control: %s failed with an unexpected error", cmd)
        return _error("INTERNAL", redact(f"{exc.__class__.__name__}: {exc}"))


def request(path: Path, message: dict[str, Any], timeout: float) -> Any:
    """Send one request to the service and return its result; raise ControlError / ServiceNotRunning."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, NotADirectoryError):
            raise ServiceNotRunning(f"not running (no control socket at {path})") from None
        except ConnectionRefusedError:
            raise ServiceNotRunning(f"not running ({path} is a stale socket: nothing accepts on it)") from None
        except PermissionError:
            raise ControlError("EACCES", f"permission denied opening {path} (run as the service user or root, "
                                         "or ask for control.group membership)") from None
        try:
            sock.sendall(_encode(message))
            line = read_line(sock, None, deadline)
        except TimeoutError:
            raise ControlError("TIMEOUT", f"no answer from clawsvc at {path} within {timeout:g}s") from None
        except OSError as exc:
            reason = exc.strerror or exc
            raise ControlError("DISCONNECTED", f"connection to clawsvc at {path} failed: {reason}") from None
    if not line:
        raise ControlError("DISCONNECTED", f"clawsvc at {path} closed the connection without answering")
    try:
        reply = json.loads(line)
        if reply.get("ok") is True:
            return reply.get("result")
        error = reply["error"]
        raise ControlError(str(error.get("code") or "UNKNOWN"), str(error.get("message") or ""), error.get("details"))
    except (ValueError, KeyError, AttributeError, TypeError):
        raise ControlError("BAD_REPLY", f"clawsvc at {path} sent an unreadable reply") from None
