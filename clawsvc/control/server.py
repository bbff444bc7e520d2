"""The server end of the control socket (wire format in wire.py, what a request means in requests.py): peers
are checked with SO_PEERCRED before they hold anything, then one thread collects request lines and each
complete request gets a slot (an events stream gets a follower thread instead, see stream.py)."""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clawsvc.control.path import SocketFile, group_id
from clawsvc.control.requests import ControlHandler, answer
from clawsvc.control.stream import Followers, follow_request
from clawsvc.control.wire import (
    MAX_REQUEST,
    Peer,
    encode,
    error,
    peer_of,
    supplementary_groups,
)
from clawsvc.threads import start_thread

log = logging.getLogger("clawsvc.control.server")

READ_TIMEOUT = 2.0  # a client has this long to send its request line
WRITE_TIMEOUT = 30.0  # and this long to take the reply
MAX_CLIENTS = 32  # requests being answered at once, one thread each
RESERVED = 4  # of those, kept for root and the service's own uid
MAX_WAITING = 64  # connections whose request line has not arrived yet; the oldest goes when a new one comes
WARN_EVERY = 10.0  # seconds between two "too many clients" or "refused" warnings


def _reply_now(conn: socket.socket, message: dict[str, Any]) -> None:
    """A short answer from the accept loop, which must never wait on a client: what does not fit is lost."""
    try:
        conn.setblocking(False)
        conn.send(encode(message))
    except OSError:
        pass


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
        self._file: SocketFile | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._waiting: dict[socket.socket, _Waiting] = {}  # oldest first
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._crowded = _Throttle(WARN_EVERY)
        self._refused = _Throttle(WARN_EVERY)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._followers = Followers(handler, self._uid)

    def start(self) -> None:
        self._gid = group_id(self.group)
        self._file = SocketFile(self.path, self.group, self._gid)
        self._listener = self._file.bind()
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
        self._followers.close()  # after the accept loop: no follower can start behind it
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._file is not None:
            self._file.remove()

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
        _reply_now(conn, error("EACCES", refusal))
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
        _reply_now(waiting.conn, error("BUSY", "clawsvc has too many control clients right now; try again"))
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
            _reply_now(waiting.conn, error("BAD_REQUEST", f"no request line within {READ_TIMEOUT:g}s"))
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
            _reply_now(waiting.conn, error("BAD_REQUEST", f"request line longer than {MAX_REQUEST} bytes"))
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
        follow = follow_request(bytes(waiting.buf))
        if follow is not None:  # a stream: it has slots of its own
            self._followers.serve(waiting.conn, follow, waiting.peer)
            return
        if not self._take_slot(waiting.privileged):
            held = self._crowded.due()
            if held is not None:
                log.warning("control socket %s: too many clients (%d requests being answered); turning requests "
                            "away%s", self.path, self._busy, _since(held))
            _reply_now(waiting.conn, error("BUSY", f"clawsvc is answering {self._busy} requests already; try again"))
            waiting.conn.close()
            return
        try:
            start_thread("control-client", self._serve, waiting.conn, bytes(waiting.buf), waiting.peer)
        except RuntimeError as exc:  # "can't start new thread": out of memory or a task limit
            self._release_slot()
            log.warning("control socket %s: cannot start a thread for a request: %s", self.path, exc)
            _reply_now(waiting.conn, error("BUSY", "clawsvc cannot take more requests right now; try again"))
            waiting.conn.close()

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
                reply = answer(self.handler, raw, peer)
                conn.settimeout(WRITE_TIMEOUT)
                conn.sendall(self._encode_reply(reply))
        except OSError as exc:
            log.debug("control client went away: %s", exc)
        finally:
            self._release_slot()

    @staticmethod
    def _encode_reply(reply: dict[str, Any]) -> bytes:
        try:
            return encode(reply)
        except (ValueError, TypeError, RecursionError) as exc:
            log.error("control: cannot encode a reply: %s", exc)
            return encode(error("INTERNAL", f"the reply could not be encoded as JSON: {exc}"))

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
